"""CPU inference latency of pruned MLPs: dense, masked, shrunk and torch.sparse CSR. Not in the test suite.

    .venv/bin/python bench/bench_export.py [--threads 1]

For MLP 784-128-256-10 (the paper's) and 784-1024-1024-10 at densities 50%, 20%, 10%, 5%:

* dense: the unpruned model;
* masked: unstructured global magnitude masks applied (zeros stored densely: the same dense kernels run);
* csr: the same masked weights of every Linear layer as ``torch.sparse_csr_tensor`` (``W_csr @ x.T``);
* shrunk: neuron-scope structured masks (whole hidden neurons removed, the same fraction in each hidden layer,
  chosen so the weight density matches), then :func:`pqprune.export.shrink` — a smaller dense model.

Prints the median latency per forward pass (batch 1 and 256) and its ratio to dense (< 1 = faster), plus the
sparse file size of the masked model relative to the dense float32 file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch
from torch import Tensor, nn

from pqprune.experiment.models import build_model
from pqprune.export.shrink import shrink
from pqprune.export.sparse import pruned_copy, save_sparse
from pqprune.prune.select import magnitude_scores, select_prune

DENSITIES = (0.5, 0.2, 0.1, 0.05)
MODELS = {"784-128-256-10": dict(hidden=128, scale=2.0), "784-1024-1024-10": dict(hidden=1024, scale=1.0)}


class CSRLinear(nn.Module):
    """A Linear layer whose weight is a CSR sparse tensor."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.weight = lin.weight.detach().to_sparse_csr()
        self.bias = None if lin.bias is None else lin.bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        y = (self.weight @ x.t()).t()
        return y if self.bias is None else y + self.bias


def to_csr(model: nn.Sequential) -> nn.Sequential:
    return nn.Sequential(*[CSRLinear(m) if isinstance(m, nn.Linear) else m for m in model])


def magnitude_masks(model: nn.Module, density: float) -> dict[str, Tensor]:
    """Unstructured global magnitude masks keeping ``density`` of the weights (the engine's exact-k selection)."""
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() > 1}
    total = sum(w.numel() for w in weights.values())
    chosen = select_prune(magnitude_scores(weights), {"global": total - round(density * total)}, "global")
    return {n: ~chosen[n] for n in weights}


def neuron_masks(model: nn.Sequential, density: float) -> dict[str, Tensor]:
    """Kill whole hidden neurons (smallest row norms), the same fraction per hidden layer, to reach ``density``."""
    lins = [(n, m) for n, m in model.named_children() if isinstance(m, nn.Linear)]
    total = sum(m.weight.numel() for _, m in lins)

    def kept_weights(frac: float) -> float:
        widths = (
            [lins[0][1].in_features]
            + [max(1, round(frac * m.out_features)) for _, m in lins[:-1]]
            + [lins[-1][1].out_features]
        )
        return sum(a * b for a, b in zip(widths, widths[1:]))

    lo, hi = 0.0, 1.0
    for _ in range(50):  # bisection on the kept fraction of neurons
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept_weights(mid) < density * total else (lo, mid)
    masks = {f"{n}.weight": torch.ones_like(m.weight, dtype=torch.bool) for n, m in lins}
    for n, m in lins[:-1]:
        k = max(1, round(hi * m.out_features))
        dead = m.weight.detach().norm(dim=1).argsort()[: m.out_features - k]
        masks[f"{n}.weight"][dead] = False
    return masks


def masked(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    return pruned_copy(model, masks).eval()


@torch.inference_mode()
def latency(model: nn.Module, x: Tensor, budget: float = 0.25) -> float:
    """Median seconds per forward pass over repeats filling about ``budget`` seconds."""
    for _ in range(3):
        model(x)
    t0 = time.perf_counter()
    model(x)
    once = max(time.perf_counter() - t0, 1e-6)
    reps = max(5, min(2000, int(budget / once)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared; 1 by default)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s); median latency per forward pass, ratio vs dense")
    header = f"{'model':>17} {'density':>7} {'variant':>7} {'batch 1 (µs)':>13} {'ratio':>6} {'batch 256 (µs)':>15} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    tmp = tempfile.mkdtemp()
    for label, opts in MODELS.items():
        model = build_model("mlp", (1, 28, 28), 10, seed=0, **opts).eval()
        xs = {b: torch.randn(b, 1, 28, 28) for b in (1, 256)}
        dense = {b: latency(model, x) for b, x in xs.items()}
        dense_file = os.path.join(tmp, "dense.safetensors")
        from safetensors.torch import save_file

        save_file(model.state_dict(), dense_file)
        print(f"{label:>17} {'1.00':>7} {'dense':>7} {dense[1] * 1e6:13.1f} {1:6.2f} {dense[256] * 1e6:15.1f} {1:6.2f}")
        for d in DENSITIES:
            mk = magnitude_masks(model, d)
            mm = masked(model, mk)
            sparse_file = save_sparse(model.state_dict(), mk, os.path.join(tmp, "s.safetensors"))
            size = os.path.getsize(sparse_file) / os.path.getsize(dense_file)
            variants = {"masked": mm, "csr": to_csr(mm), "shrunk": shrink(model, neuron_masks(model, d)).eval()}
            for name, net in variants.items():
                t = {b: latency(net, x) for b, x in xs.items()}
                note = f"  file {100 * size:.1f}% of dense" if name == "masked" else ""
                if name == "shrunk":
                    widths = "-".join(str(m.out_features) for m in net if isinstance(m, nn.Linear))
                    note = f"  widths 784-{widths}"
                print(
                    f"{label:>17} {d:7.2f} {name:>7} {t[1] * 1e6:13.1f} {t[1] / dense[1]:6.2f} "
                    f"{t[256] * 1e6:15.1f} {t[256] / dense[256]:6.2f}{note}"
                )


if __name__ == "__main__":
    main()
