"""lodger: an LLM inference engine that lives inside your Python web app."""

__version__ = "0.1.0"
