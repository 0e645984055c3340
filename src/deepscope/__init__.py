"""deepscope: train, check and apply deep-learning models on your own microscopy images."""

__version__ = "0.1.0"
