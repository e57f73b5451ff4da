"""Export: a pruned model as a compact file (sparse encodings), as a physically smaller model (dead neurons and
channels removed), and the ShrinkBench-style numbers that say by how much.
"""

from pqprune.export.metrics import model_metrics
from pqprune.export.shrink import load_shrunk, save_shrunk, shrink
from pqprune.export.sparse import apply_masks, check_pruned, compact_nbytes, load_sparse, pruned_copy, save_sparse

__all__ = [
    "apply_masks",
    "check_pruned",
    "compact_nbytes",
    "load_shrunk",
    "load_sparse",
    "model_metrics",
    "pruned_copy",
    "save_shrunk",
    "save_sparse",
    "shrink",
]
