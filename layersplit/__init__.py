"""Adaptive layer splitting for wireless LLM inference: the shared logic behind the top-level scripts.

One module per concept:
    paper       the paper's setting and the embedded stand-ins, defined once (light)
    cli         what the scripts share on the command line (light: no torch)
    models      load the embedded SmolLM2 (GGUF -> cached safetensors) or any Hugging Face causal LM
    data        the evaluation text: embedded Wikipedia, wikitext-2, or a local file
    grid        link modes and the channel conditions of a sweep (light)
    wire        what crosses the link: wire formats and packets (light)
    uplink      the one impairment engine: dropout, erasure, awgn, bit flips, withholding; stream seeds
    link        the split-layer hook: where the model is cut, the engine applied to what crosses
    segments    the model run in segments without mutating it; the composition check
    perplexity  sliding-window perplexity and next-token accuracy
    channel     radio physics: SNR -> bit/packet errors -> lost activations; rate; the SNR process
    nr          the 5G NR coded link (Sionna): TBs, LDPC, MCS, TDL, HARQ; its BLER table and lookups
    compute     FLOPs, device throughputs, latency of a split forward pass
    sweep       the split x channel grid, its fast path and its resumable results file
    cells       a sweep cell pooled over its draws, its 95% interval over windows; paired split comparisons
    surrogate   the reward surrogate models (RSM)
    envs        the Gymnasium environments; policies: baselines, the exact optimum, evaluation
    training    Stable-Baselines3 training with logs, checkpoints and resumption
    serving     split inference over a socket (serve.py): protocol, edge, ue
    distributed Ray: the sweep on worker actors, training runs as tasks, the PPO search
    claims      the README's quoted tables, generated from the result files

Splits are 0-based everywhere: split n cuts after decoder layer n, so n + 1 layers run on the UE.
"""


class UserError(ValueError):
    """Bad input from the user: the scripts print the message as one line and exit with status 2."""
