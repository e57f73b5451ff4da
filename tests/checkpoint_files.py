"""Fabricated checkpoints for the checkpoint tests: a small transformer-like state dict, a two-shard Hugging
Face-style folder with its index, and a run folder written by the run folder's own writers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from pqprune import Pruner
from pqprune.experiment.rundir import RunDir, _write_round_json, _write_round_tensors

LAYERS = 2
HIDDEN = 16


def transformer_state(dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict[str, Tensor]:
    """Names and shapes as a Llama-style model has them (embeddings, attention, MLP, norms, output head)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> Tensor:
        return (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).to(dtype)

    state = {"model.embed_tokens.weight": w(50, HIDDEN)}
    for i in range(LAYERS):
        pre = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{pre}self_attn.{proj}.weight"] = w(HIDDEN, HIDDEN)
        state[f"{pre}mlp.gate_proj.weight"] = w(2 * HIDDEN, HIDDEN)
        state[f"{pre}mlp.up_proj.weight"] = w(2 * HIDDEN, HIDDEN)
        state[f"{pre}mlp.down_proj.weight"] = w(HIDDEN, 2 * HIDDEN)
        state[f"{pre}input_layernorm.weight"] = torch.ones(HIDDEN, dtype=dtype)
    state["model.norm.weight"] = torch.ones(HIDDEN, dtype=dtype)
    state["lm_head.weight"] = w(50, HIDDEN)
    return state


def write_sharded(folder: Path, state: dict[str, Tensor], shards: int = 2) -> Path:
    """``model-0000k-of-0000n.safetensors`` files and ``model.safetensors.index.json``, as save_pretrained writes
    them; returns the index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    per = -(-len(names) // shards)
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[k * per : (k + 1) * per]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    index = folder / "model.safetensors.index.json"
    total = sum(t.numel() * t.element_size() for t in state.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return index


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4))


def fabricate_run(root: Path, rounds: int = 2, keep: str = "all") -> tuple[Path, list[dict[str, Tensor]], list]:
    """A run folder of ``rounds`` finished rounds of SAP at layer scope on :func:`mlp` (weights perturbed between
    rounds in place of training); returns the folder, each round's weights and each round's masks (after its
    pruning step, as the checkpoint stores them)."""
    model = mlp()
    pruner = Pruner(model, "sap", scope="layer")
    rd = RunDir(root, "sap-fabricated")
    rd.save_settings({"run_id": rd.run_id, "settings": {"model": "mlp", "method": "sap"}})
    weights, masks = [], []
    for t in range(rounds):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        pruner.enforce()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        pruner.step()
        skeleton = _write_round_tensors(rd, t, state, pruner.state_dict())
        _write_round_json(rd, t, {"run_id": rd.run_id, "round": t, "metrics": {}, "pruner": skeleton}, keep)
        weights.append(state)
        masks.append({n: m.clone() for n, m in pruner.masks.items()})
    return rd.path, weights, masks
