"""Adaptive layer splitting for wireless LLM inference: the shared logic behind the top-level scripts.

One module per concept:
    models      load the embedded SmolLM2 (GGUF -> cached safetensors) or any Hugging Face causal LM
    data        the evaluation text: embedded Wikipedia, wikitext-2, or a local file
    link        the split-layer hook: where the model is cut and what the link does to the hidden state
    perplexity  sliding-window perplexity and next-token accuracy
    channel     SNR -> bit/packet errors -> lost activations; rates and latency; SNR process
    sweep       the split x channel grid, its fast path and its resumable results file
    cells       a sweep cell pooled over its draws, with its 95% interval over windows x draws
    surrogate   the reward surrogate models (RSM)
    envs        the Gymnasium environments; policies: baselines, the exact optimum, evaluation
    training    Stable-Baselines3 training with logs, checkpoints and resumption
    serving     split inference over a socket (serve.py)
    cli         argument types shared by the scripts (bad values refused in one line)
"""


class UserError(ValueError):
    """Bad input from the user: the scripts print the message as one line and exit with status 2."""
