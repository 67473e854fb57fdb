"""gptcourse: build a GPT-style transformer from scratch, one floor at a time."""
__version__ = "0.1.0"
