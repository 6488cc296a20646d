"""lodger: an LLM inference engine that lives inside your Python web app."""

import os

__version__ = "0.1.0"

# Where the bundled default model lives once it is installed (a HF checkpoint directory).
DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")


def default_model_path() -> str:
    """The bundled default model's directory; raises FileNotFoundError when it is missing.

    LLM(), lodger.sdk.connect(), lodger.asgi.create_app() and `lodger serve` fall back to it
    when no model is given.
    """
    if not os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "config.json")):
        raise FileNotFoundError(
            "no model was given and the bundled default model is not installed "
            f"(expected {DEFAULT_MODEL_DIR}/config.json): pass a model path, e.g. "
            "`lodger serve --model path/to/hf-checkpoint-dir` or model='path/to/dir'"
        )
    return DEFAULT_MODEL_DIR
