"""Datasets: ListOps (generator and reader of the released format) and SNLI-style JSONL parses."""

from . import listops, snli

__all__ = ["listops", "snli"]
