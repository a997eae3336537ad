"""calmon: keeps the confidence scores of LLMs and classifiers honest."""

__version__ = "0.1.0"
