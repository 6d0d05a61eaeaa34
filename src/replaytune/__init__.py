"""replaytune: train and fine-tune language models with replay of generic pre-training data."""
__version__ = "0.1.0"
