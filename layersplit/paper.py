"""The paper's setting and this project's embedded stand-ins, each defined here once.

Light on purpose (no imports): every module and script reads its defaults from here, and each script's
constants at its top refer to these names (a user edits those constants, not this file).
"""

FIXED_SPLIT = 4  # 0-based: 5 layers on the UE, the paper's traditional split; the paper form's reward is relative to it
SPLITS = range(1, 11)  # the original surrogate environment's split values 1..10
DROPOUTS = (0.02, 0.06, 0.10, 0.14, 0.18, 0.22, 0.26, 0.30)  # the original's grid of p (the uplink's loss)
SEEDS = "0,1,2"  # training seeds of the committed RL results: their intervals are over these
EMBEDDED_MODEL = "smollm2-135m"  # the --model name of the embedded default (the paper's was Llama-2-7B)
EMBEDDED_DATASET = "wiki"  # the --dataset name of the embedded text (the paper's was WikiText-2)
