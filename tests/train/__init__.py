"""Tests of the training engine (replaytune.train, replaytune.model, `replaytune train`)."""
