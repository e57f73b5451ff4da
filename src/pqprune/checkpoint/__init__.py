"""Checkpoints without training: what is in a checkpoint and how compressible it is."""

from pqprune.checkpoint.analyze import analyze

__all__ = ["analyze"]
