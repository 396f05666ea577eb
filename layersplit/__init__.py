"""Adaptive layer splitting for wireless LLM inference: the shared logic behind the top-level scripts.

One module per concept:
    models      load the embedded SmolLM2 (GGUF -> cached safetensors) or any Hugging Face causal LM
    data        the evaluation text: embedded Wikipedia, wikitext-2, or a local file
    link        the split-layer hook: where the model is cut and what the link does to the hidden state
    perplexity  sliding-window perplexity and next-token accuracy
    channel     SNR -> bit/packet errors -> lost activations; rates and latency; SNR process
"""


class UserError(ValueError):
    """Bad input from the user: the scripts print the message as one line and exit with status 2."""
