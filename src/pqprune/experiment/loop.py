"""One round of the prune–retrain loop (docs/math.md §5)::

    rewind (Pruner.rewind: surviving weights and all other state ← initial, pruned weights 0)
    train E epochs under the masks, keeping the epoch with the best validation accuracy (or test: select_on test)
    evaluate it (val, test) and measure it (global and per-layer PQI and Gini of the survivors)
    if t < T and the run does not stop here (--stop-at-phase, docs/math.md §9):
        prune (Pruner.step → per-unit records), evaluate the pruned model before any retraining
    checkpoint round t atomically (safetensors + JSON), THEN record it in the database

Every round is seeded from ``(seed, t)`` alone, so a run resumed from the checkpoint of round k computes exactly
what an uninterrupted run computes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pqprune.experiment import distributed
from pqprune.experiment.data import DataSplits
from pqprune.experiment.phases import PhaseStop, stop_point
from pqprune.experiment.prepare import Prepared
from pqprune.experiment.rundir import RunDir, _load_pruner_state, _write_round_json, _write_round_tensors
from pqprune.experiment.settings import build_method
from pqprune.experiment.train import Metrics, evaluate, train_epochs
from pqprune.measure.gini_index import gini_layers_and_global
from pqprune.measure.indices import pq_from_sums, pq_index
from pqprune.measure.sums import map_units, power_sums, reduce_scope
from pqprune.measure.weights import GLOBAL
from pqprune.prune.methods.base import UnitRecord
from pqprune.prune.pruner import Pruner
from pqprune.store import Store

# The pair every round's PQI is reported with (docs/math.md §2's default), whatever the method decides with, so that
# runs of different methods are comparable in the database.
REPORT_PQ = (0.5, 1.0)


Progress = Callable[[dict[str, Any]], None]


def _no_progress(_event: dict[str, Any]) -> None:
    pass


# --------------------------------------------------------------------------------------------- the loop
@dataclass
class RunResult:
    """What :func:`run_experiment` returns: the run's id, status, folder and its rounds as in the database."""

    run_id: str
    status: str
    path: Path
    rounds: list[dict[str, Any]]
    reused: bool = False
    resumed_from: int | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    stop: PhaseStop | None = None  # where a run with --stop-at-phase stopped, and the round it chose


def _seed_for(seed: int, t: int) -> int:
    """A per-round seed from (seed, round) alone, so a resumed round draws what an uninterrupted one draws."""
    return int(np.random.SeedSequence([seed, t]).generate_state(1, dtype=np.uint32)[0])


def _measure(
    model: nn.Module, masks: Mapping[str, Tensor], p: float, q: float, density: Mapping[str, Any]
) -> dict[str, Any]:
    """Global and per-layer PQI (p, q) and Gini of the surviving weights, with per-layer density."""
    stats = power_sums(model, (p, q), masks)

    def pqi(scope: str) -> dict[str, float]:
        units = reduce_scope(stats, scope)  # type: ignore[arg-type]
        values = map_units(units, lambda u: pq_from_sums(u.count, u.sums[p], u.sums[q], p, q))
        return {n: float(v[0]) for n, v in values.items()}

    layer_pqi = pqi("layer")
    layer_gini, global_gini = gini_layers_and_global(model, masks)
    layers = {
        n: {"pqi": layer_pqi[n], "gini": layer_gini[n], "density": density[n].density, "kept": density[n].kept}
        for n in layer_pqi
    }
    return {"pqi": pqi("global")[GLOBAL], "gini": global_gini, "layers": layers}


def _unit_dict(r: UnitRecord) -> dict[str, Any]:
    # The database's columns keep the paper's names (docs/database.md).
    return {
        "unit": r.unit,
        "d": r.survivors,
        "pqi": r.index,
        "r": r.retained_target,
        "c": r.pruned,
        "clipped": r.beta_clipped,
    }


class PhaseWatch:
    """What ``--stop-at-phase`` reads after every round: the run's PQI and validation accuracy so far (test accuracy
    when it has no validation split), judged by the phase rule (docs/math.md §9) over that split's examples."""

    def __init__(self, target: str, data: DataSplits) -> None:
        self.target = target
        self.split = "val" if len(data.val) else "test"
        self.n_examples = len(data.val) or len(data.test)
        self.pqi: list[float | None] = []
        self.accuracy: list[float | None] = []

    def add(self, t: int, metrics: Mapping[str, Any]) -> PhaseStop | None:
        """Take round ``t``'s metrics (rounds come in order from 0); the stop the rule calls by now, if any."""
        if t != len(self.pqi):
            raise ValueError(f"the phase watch expects round {len(self.pqi)}, got round {t}")
        self.pqi.append(metrics.get("pqi"))
        self.accuracy.append(metrics.get(f"{self.split}_accuracy"))
        return stop_point(self.target, self.pqi, self.accuracy, self.n_examples)


class _Loop:
    """One run's state between rounds; :meth:`round` does one round of docs/math.md §5.

    In a distributed run every rank runs the same loop on the same model (trained under DDP) and computes the
    same masks from the same weights; only rank 0 (``store`` given) writes checkpoints and the database.
    """

    def __init__(
        self,
        prep: Prepared,
        rd: RunDir,
        store: Store | None,
        progress: Progress,
        ctx: distributed.Context | None = None,
    ) -> None:
        self.prep, self.rd, self.store, self.progress = prep, rd, store, progress
        self.s = prep.settings
        self.model = prep.model
        self.pruner = Pruner(self.model, prep.method or build_method(self.s), self.s.scope)
        self.pending: dict[str, Any] = {}  # the pruned-before-retraining metrics for the next round's row
        self.ctx = ctx or distributed.Context(device=prep.device)
        self.dist = self.ctx.active  # collectives in training, evaluation and the mask check
        self.main = self.ctx.is_main  # writes files and the database
        self.watch = PhaseWatch(self.s.stop_at_phase, prep.data) if self.s.stop_at_phase else None
        self.stop: PhaseStop | None = None  # set by the round at which the run stops at its phase

    def _verify_masks(self, where: str) -> str | None:
        """Distributed: check that all ranks hold the same masks (stops the run otherwise); the digest in hex."""
        if not self.dist:
            return None
        return distributed.digest_hex(distributed.verify_masks(self.pruner.masks, where)[0])

    def _evaluate(self, split: Any) -> Metrics:
        return evaluate(self.model, split, self.prep.train_config.eval_batch_size, distributed=self.dist)

    def restore(self, t: int, initial: Mapping[str, Tensor]) -> None:
        doc = self.rd.read_round(t)
        self.pruner.load_state_dict(_load_pruner_state(self.rd, t, doc, initial), source=str(self.rd.json(t)))
        self.pending = dict(doc.get("next") or {})
        if self.watch is not None:  # the phase rule reads the whole trajectory, so replay the rounds done
            for k in range(t + 1):
                self.watch.add(k, doc["metrics"] if k == t else self.rd.read_round(k)["metrics"])

    def _train(self, t: int, seed: int) -> tuple[dict[str, Any], float, float]:
        """Rewind, train E epochs under the masks, load the best epoch's weights (by the selection split).

        Returns the best epoch's record (``epoch``, ``metrics`` on the selection split), the training seconds
        and the seconds spent evaluating after each epoch (reported as evaluation, not training).
        """
        s, model, pruner, data = self.s, self.model, self.pruner, self.prep.data
        t0 = time.perf_counter()
        pruner.rewind()
        torch.manual_seed(seed)  # global RNG (dropout) is per round too
        select = data.val if s.select_on == "val" else data.test
        best: dict[str, Any] = {"acc": -math.inf, "state": None, "epoch": 0, "metrics": None}
        eval_seconds = 0.0

        def on_epoch(info: Any) -> None:
            nonlocal eval_seconds
            e0 = time.perf_counter()
            m = self._evaluate(select)
            if best["state"] is None or m.accuracy > best["acc"]:  # ties keep the earlier epoch
                best.update(
                    acc=m.accuracy,
                    epoch=info.epoch + 1,
                    metrics=m,
                    state={k: v.detach().clone() for k, v in model.state_dict().items()},
                )
            eval_seconds += time.perf_counter() - e0
            self.progress(
                {
                    "event": "epoch",
                    "run_id": self.rd.run_id,
                    "round": t,
                    "epoch": info.epoch + 1,
                    "epochs": s.epochs,
                    "loss": info.loss,
                    f"{s.select_on}_accuracy": m.accuracy,
                }
            )

        on_step = None
        rewind_step = int(getattr(pruner.method, "rewind_step", 0))
        if t == 0 and rewind_step > 0:

            def on_step(info: Any) -> None:  # late rewinding [Frankle et al. 2020]: weights after k steps
                if info.step + 1 == rewind_step:
                    pruner.save_rewind_point()

        # Gradients are masked before clipping, so the norm is that of the survivors. Nothing is re-zeroed after
        # the step: the rewound pruned weights are 0 and train_epochs' SGD is element-wise, so a weight whose
        # gradient, value and momentum are 0 stays exactly 0 (weight decay and momentum add only zeros; tested
        # bit for bit against re-zeroing after every step) — a pass over the weights saved every step.
        train_epochs(
            model,
            data.train,
            s.epochs,
            self.prep.train_config,
            seed=seed,
            before_step=pruner.maskset.mask_grads,
            on_epoch=on_epoch,
            on_step=on_step,
            distributed=self.dist,
        )
        model.load_state_dict(best["state"])
        return best, time.perf_counter() - t0 - eval_seconds, eval_seconds

    def round(self, t: int) -> dict[str, Any]:
        s, model, pruner, data = self.s, self.model, self.pruner, self.prep.data
        last = t == s.rounds
        seed = _seed_for(s.seed, t)
        sec = dict(train=0.0, evaluate=0.0, measure=0.0, prune=0.0, checkpoint=0.0)
        self.progress(
            {"event": "round", "run_id": self.rd.run_id, "round": t, "rounds": s.rounds + 1, "epochs": s.epochs}
        )
        # Distributed: the masks trained under must be the same on every rank (also right after a resume).
        digest = self._verify_masks(f"round {t}")

        # --- retrain from the initial weights under the masks, keeping the best epoch
        best, sec["train"], eval_seconds = self._train(t, seed)

        # --- evaluate the kept model (the selection split's metrics are those of the kept epoch)
        t0 = time.perf_counter()
        other = data.test if s.select_on == "val" else data.val
        other_m = self._evaluate(other) if len(other) else Metrics(math.nan, math.nan)
        val_m, test_m = (best["metrics"], other_m) if s.select_on == "val" else (other_m, best["metrics"])
        sec["evaluate"] = eval_seconds + time.perf_counter() - t0

        # --- measure
        t0 = time.perf_counter()
        report = pruner.density_report()
        meas = _measure(model, pruner.masks, *REPORT_PQ, report)
        sec["measure"] = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "density": report["total"].density,
            "test_accuracy": test_m.accuracy,
            "test_loss": test_m.loss,
            "val_accuracy": val_m.accuracy,
            "val_loss": val_m.loss,
            "pruned_test_accuracy": self.pending.get("pruned_test_accuracy"),
            "pruned_val_accuracy": self.pending.get("pruned_val_accuracy"),
            "pruned_pqi": self.pending.get("pruned_pqi"),
            "pqi": meas["pqi"],
            "gini": meas["gini"],
            "layers": meas["layers"],
            "best_epoch": best["epoch"],
        }
        if self.watch is not None:
            self.stop = self.watch.add(t, metrics)
            last = last or self.stop is not None  # the run ends here: no pruning step after this round

        # --- prune, then evaluate the pruned model before any retraining (it belongs to the next round's row)
        units: list[dict[str, Any]] = []
        nxt: dict[str, Any] = {}
        next_digest = None
        t0 = time.perf_counter()
        # The weights measured above, for the checkpoint (only rank 0 writes one).
        model_state = {k: v.detach().clone() for k, v in model.state_dict().items()} if self.main else {}
        sec["checkpoint"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if not last:
            # Every rank prunes its own (identical) weights with the same deterministic method, then checks.
            units = [_unit_dict(r) for r in pruner.step()]
            for n, b in self.prep.input_bounds.items():  # what the ℓ_q bound rule measured for this step
                metrics["layers"][n]["input_bound"] = b
            next_digest = self._verify_masks(f"round {t} (after its pruning step)")
        sec["prune"] = time.perf_counter() - t0
        if not last:
            t0 = time.perf_counter()
            pv = self._evaluate(data.val) if len(data.val) else Metrics(math.nan, math.nan)
            pt = self._evaluate(data.test)
            nxt = {"pruned_val_accuracy": pv.accuracy, "pruned_test_accuracy": pt.accuracy}
            sec["evaluate"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            # PQI of the just-pruned weights, to set against the retrained model's (Diao23, Fig. 5).
            nxt["pruned_pqi"] = pq_index(model, *REPORT_PQ, masks=pruner.masks)
            sec["measure"] += time.perf_counter() - t0

        self.pending = nxt
        if not self.main:
            return metrics

        # --- checkpoint (atomic), then the database
        t0 = time.perf_counter()
        skeleton = _write_round_tensors(self.rd, t, model_state, pruner.state_dict())
        sec["checkpoint"] += time.perf_counter() - t0  # the small JSON below is not counted: it carries this number
        metrics.update({f"seconds_{k}": v for k, v in sec.items()})
        doc = {
            "run_id": self.rd.run_id,
            "round": t,
            "metrics": metrics,
            "units": units,
            "next": nxt,
            "pruner": skeleton,
        }
        if self.stop is not None:
            doc["stop"] = self.stop.as_dict()  # marks the run finished at this round (runner._stopped)
        if self.dist:  # how this round was computed: not part of the run's identity (docs/distributed.md)
            # Digests every rank agreed on: of m_t (trained under) and of m_{t+1} (the checkpoint's masks).
            doc["launch"] = {**self.ctx.describe(), "mask_digest": digest, "next_mask_digest": next_digest}
        _write_round_json(self.rd, t, doc, s.keep_checkpoints)
        assert self.store is not None
        self.store.record_round(self.rd.run_id, t, metrics, units)
        self.progress(
            {
                "event": "round_end",
                "run_id": self.rd.run_id,
                "round": t,
                "rounds": s.rounds + 1,
                "metrics": {k: v for k, v in metrics.items() if k != "layers"},
                "stop": None if self.stop is None else self.stop.as_dict(),
            }
        )
        return metrics
