"""A synthetic sharded bfloat16 checkpoint laid out as Hugging Face's ``save_pretrained(max_shard_size="1GB")``
writes one: ``model-0000k-of-0000n.safetensors`` shards of at most 1 GB (10^9 bytes, filled greedily in model
order) and ``model.safetensors.index.json``; Llama-style names and shapes.

The default configuration has 2.07 billion parameters (4.1 GB): 24 layers of hidden size 2560 and MLP size 6912,
a 32,000-token vocabulary, untied output head. Weights are Gaussian with standard deviation 0.02 (a common
initialisation), each tensor from its own seed. Each tensor is generated and written on its own, so making the
checkpoint needs about one tensor of memory. Write it under /tmp or runs/, never into the repository:

    python bench/make_sharded_checkpoint.py /tmp/pqprune-2b
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from pqprune.checkpoint.writer import write_tensors

SHARD_BYTES = 10**9


def layout(layers: int, hidden: int, mlp: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes in model order (as ``model.state_dict()`` lists them)."""
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        pre = f"model.layers.{i}."
        out += [(f"{pre}self_attn.{p}.weight", (hidden, hidden)) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        out += [(f"{pre}mlp.gate_proj.weight", (mlp, hidden)), (f"{pre}mlp.up_proj.weight", (mlp, hidden))]
        out += [(f"{pre}mlp.down_proj.weight", (hidden, mlp))]
        out += [(f"{pre}input_layernorm.weight", (hidden,)), (f"{pre}post_attention_layernorm.weight", (hidden,))]
    return [*out, ("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def shards(entries: list[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy split in model order: a shard is closed when the next tensor would take it past 1 GB."""
    out: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in entries:
        nbytes = 2 * torch.Size(shape).numel()
        if out[-1] and size + nbytes > SHARD_BYTES:
            out.append([])
            size = 0
        out[-1].append((name, shape))
        size += nbytes
    return out


def _tensors(entries: list[tuple[str, tuple[int, ...]]], seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    for name, shape in entries:
        if len(shape) == 1:  # norm weights
            yield name, torch.ones(shape, dtype=torch.bfloat16)
            continue
        g = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(name.encode()))
        yield name, (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)


def make(
    folder: Path, layers: int = 24, hidden: int = 2560, mlp: int = 6912, vocab: int = 32000, seed: int = 0
) -> Path:
    """Write the checkpoint into ``folder``; returns its index."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = shards(layout(layers, hidden, mlp, vocab))
    weight_map: dict[str, str] = {}
    total = 0
    for k, part in enumerate(parts):
        file = f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
        write_tensors(folder / file, [(n, len(s)) for n, s in part], _tensors(part, seed), {"format": "pt"})
        weight_map.update(dict.fromkeys((n for n, _ in part), file))
        total += sum(2 * torch.Size(s).numel() for _, s in part)
    index = folder / "model.safetensors.index.json"
    doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    index.write_text(json.dumps(doc, indent=2) + "\n")
    return index


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=2560)
    ap.add_argument("--mlp", type=int, default=6912)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    inside = Path.cwd() in [a.folder.resolve(), *a.folder.resolve().parents] and (Path.cwd() / ".git").exists()
    if inside and "runs" not in a.folder.resolve().relative_to(Path.cwd()).parts:
        sys.exit(f"{a.folder}: inside the repository; write it under /tmp or runs/ (never committed)")
    t0 = time.perf_counter()
    index = make(a.folder, a.layers, a.hidden, a.mlp, a.vocab, a.seed)
    params = sum(torch.Size(s).numel() for _, s in layout(a.layers, a.hidden, a.mlp, a.vocab))
    shards_n = len(set(json.loads(index.read_text())["weight_map"].values()))
    print(f"{index}: {params / 1e9:.2f}B bfloat16 parameters in {shards_n} shards, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
