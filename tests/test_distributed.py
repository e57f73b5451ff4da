"""Multi-process runs: torchrun + DDP on 2 CPU processes (gloo) against a single-process run.

What holds, measured on the tiny configuration below (digits + MLP, 3 rounds × 1 epoch, global batch 250):
the masks of every round are bit-identical to the single-process run's, and so are density, best epoch and
accuracies; weights differ by < 1e-7 and losses / PQI / Gini by ~1e-7 relative (float sums in another order).
The assertions use the stated tolerances: masks and density exact, accuracies within one example, weights 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pqprune.experiment import distributed
from pqprune.experiment.rundir import RunDir
from pqprune.experiment.runner import run_experiment
from pqprune.experiment.settings import RunSettings
from pqprune.experiment.train import TrainConfig, _Score, evaluate, train_epochs
from pqprune.files import load_state_dict
from pqprune.store import Store

pytestmark = pytest.mark.end_to_end  # whole commands/runs: in `make test`, not `make test-fast`

TINY = RunSettings(data="digits", model="mlp", rounds=3, epochs=1, keep_checkpoints="all")
CLI = ["--data", "digits", "--model", "mlp", "--rounds", "3", "--epochs", "1", "--keep-checkpoints", "all"]
MASKS = "pruner/masks/"
WEIGHT_TOL = 1e-5


def _torchrun(tmp: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m pqprune run ...`` in ``tmp``, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pqprune",
        "run",
        *CLI,
        "--db",
        str(tmp / "db.sqlite"),
        "--runs-dir",
        str(tmp / "runs"),
        "--json",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _round_tensors(runs: Path, t: int) -> dict[str, torch.Tensor]:
    return load_state_dict(RunDir(runs, TINY.run_id()).tensors(t))


def _assert_round_matches(single: Path, multi: Path, t: int) -> None:
    a, b = _round_tensors(single, t), _round_tensors(multi, t)
    masks = [k for k in a if k.startswith(MASKS)]
    assert masks and all(torch.equal(a[k], b[k]) for k in masks), f"round {t}: masks differ from the single-process run"
    for k in (k for k in a if k.startswith("model/")):
        assert torch.allclose(a[k], b[k], atol=WEIGHT_TOL, rtol=0), f"round {t}: {k} differs"
    # The digest every rank agreed on (recorded only after the check passed) is that of these masks: the
    # checkpoint holds the masks after the round's pruning step (m_{t+1}), the last round's are m_T.
    launch = RunDir(multi, TINY.run_id()).read_round(t)["launch"]
    assert launch["world_size"] == 2 and launch["backend"] == "gloo"
    agreed = launch["next_mask_digest"] if t < TINY.rounds else launch["mask_digest"]
    assert agreed == distributed.digest_hex(distributed.mask_digest({k[len(MASKS) :]: b[k] for k in masks}))
    if t > 0:  # and the masks trained under in round t are those the previous round ended with
        assert launch["mask_digest"] == RunDir(multi, TINY.run_id()).read_round(t - 1).get("launch", {}).get(
            "next_mask_digest", launch["mask_digest"]
        )


def _assert_rows_match(single_db: Path, multi_db: Path, rounds: range) -> None:
    with Store(single_db) as s1, Store(multi_db) as s2:
        a, b = s1.rounds(TINY.run_id()), s2.rounds(TINY.run_id())
        assert [r["round"] for r in b] == list(range(TINY.rounds + 1))  # one row per round: rank 1 wrote none
        one_example = 1 / 144  # the smaller evaluation split of digits (val: 144, test: 359)
        for t in rounds:
            x, y = a[t], b[t]
            assert x["density"] == y["density"] and x["best_epoch"] == y["best_epoch"]
            for k in ("test_accuracy", "val_accuracy"):
                assert abs(x[k] - y[k]) <= one_example, (t, k, x[k], y[k])
            for k in ("test_loss", "val_loss", "pqi", "gini"):
                assert y[k] == pytest.approx(x[k], rel=1e-4), (t, k)
            for u, v in zip(s1.units(TINY.run_id(), t), s2.units(TINY.run_id(), t), strict=True):
                assert u["pqi"] == pytest.approx(v["pqi"], rel=1e-4)  # the counts decided are equal:
                assert {**u, "pqi": 0} == {**v, "pqi": 0}  # unit, d, r, c, clipped


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process run of TINY (in this process), the reference."""
    root = tmp_path_factory.mktemp("single")
    run_experiment(TINY, root / "db.sqlite", root / "runs")
    return root


# --------------------------------------------------------------------------------------------- torchrun runs
@pytest.mark.slow
def test_two_processes_match_one_and_write_once(tmp_path: Path, single: Path) -> None:
    proc = _torchrun(tmp_path)
    doc = json.loads(proc.stdout)  # only rank 0 prints
    assert doc["status"] == "finished" and doc["run_id"] == TINY.run_id() and len(doc["rounds"]) == TINY.rounds + 1
    for t in range(TINY.rounds + 1):
        _assert_round_matches(single / "runs", tmp_path / "runs", t)
    _assert_rows_match(single / "db.sqlite", tmp_path / "db.sqlite", range(TINY.rounds + 1))
    with Store(tmp_path / "db.sqlite") as store:
        (run,) = store.list_runs()
        assert run["status"] == "finished" and run["settings"]["launch"] == {"world_size": 2, "backend": "gloo"}
    # Rank 0 alone wrote: one database, one run folder, no stray files.
    assert {p.name for p in tmp_path.iterdir()} <= {"db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "runs"}
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [TINY.run_id()]


@pytest.mark.slow
def test_two_processes_resume_a_run_where_it_stopped(tmp_path: Path, single: Path) -> None:
    """Rounds 0–1 computed by one process, then interrupted; 2 processes resume from round 1's checkpoint."""
    shutil.copytree(single / "runs", tmp_path / "runs")
    shutil.copy(single / "db.sqlite", tmp_path / "db.sqlite")
    rd = RunDir(tmp_path / "runs", TINY.run_id())
    for t in (2, 3):  # as after a kill during round 2 (JSON written last marks a round complete)
        rd.json(t).unlink()
        rd.tensors(t).unlink()
    _torchrun(tmp_path)
    assert "launch" not in rd.read_round(1)  # rounds 0–1 were not recomputed
    for t in (2, 3):
        _assert_round_matches(single / "runs", tmp_path / "runs", t)
    _assert_rows_match(single / "db.sqlite", tmp_path / "db.sqlite", range(TINY.rounds + 1))


# --------------------------------------------------------------------------------------------- mask check
def test_mask_mismatch_stops_with_a_clear_error() -> None:
    masks = {"fc.weight": torch.ones(4, 5, dtype=torch.bool)}
    mine = distributed.mask_digest(masks)
    assert distributed.verify_masks(masks, "round 3", gather=lambda d: [d, d]) == [mine, mine]
    with pytest.raises(
        distributed.MaskMismatchError, match=r"^round 3: the pruning masks differ across ranks \(rank 0: "
    ):
        distributed.verify_masks(masks, "round 3", gather=lambda d: [d, d ^ 1])


def test_mask_digest_sees_one_bit_and_names() -> None:
    m = torch.rand(7, 9) > 0.5
    flipped = m.clone()
    flipped[6, 8] = ~flipped[6, 8]
    base = distributed.mask_digest({"a": m})
    assert base == distributed.mask_digest({"a": m.clone()})
    assert base != distributed.mask_digest({"a": flipped})
    assert base != distributed.mask_digest({"b": m})
    assert base != distributed.mask_digest({"a": m.reshape(9, 7)})


# --------------------------------------------------------------------------------------------- data sharding
def test_batch_shares_are_distributed_samplers_split() -> None:
    """Sharing each global batch of 6 between 2 ranks = DistributedSampler over the permutation, batches of 3."""
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    for r in range(2):
        sampler = torch.utils.data.DistributedSampler(range(24), num_replicas=2, rank=r, shuffle=False)
        positions = list(sampler)
        theirs = [perm[positions[j : j + 3]] for j in range(0, len(positions), 3)]
        ours = [distributed.batch_share(perm[i : i + 6], r, 2) for i in range(0, 24, 6)]
        assert all(torch.equal(a, b) for a, b in zip(theirs, ours, strict=True))
    # Uneven batches: the shares still cover each example once.
    batch = torch.arange(7)
    assert sorted(torch.cat([distributed.batch_share(batch, r, 3) for r in range(3)]).tolist()) == list(range(7))


def test_merged_scores_equal_the_whole() -> None:
    torch.manual_seed(0)
    for y in (torch.randint(0, 3, (10,)), torch.randn(10, 2)):
        out = torch.randn(10, 3) if y.dtype == torch.int64 else torch.randn(10, 2)
        whole, parts = _Score(), [_Score(), _Score(), _Score()]
        whole.add(out, y, 5.0)
        parts[0].add(out[:4], y[:4], 2.0)
        parts[1].add(out[4:], y[4:], 3.0)  # parts[2] saw nothing (more ranks than examples)
        got, want = _Score.merged([p.state() for p in parts]), whole.metrics()
        assert got.loss == pytest.approx(want.loss) and got.accuracy == pytest.approx(
            want.accuracy, rel=1e-6
        )  # float32 sums


# --------------------------------------------------------------------------------------------- a real gloo group
def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """One of 2 processes: DDP training and evaluation vs single-process, mask check, start-error propagation."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(57, 6, generator=gen), torch.randint(0, 3, (57,), generator=gen)  # last batch 7 = 4 + 3

        def model(bn: bool = False) -> torch.nn.Module:
            torch.manual_seed(1)
            norm = torch.nn.BatchNorm1d(8) if bn else torch.nn.Identity()
            return torch.nn.Sequential(torch.nn.Linear(6, 8), norm, torch.nn.ReLU(), torch.nn.Linear(8, 3))

        cfg = TrainConfig(batch_size=10, lr=0.05)
        ref, ddp = model(), model()
        train_epochs(ref, (x, y), 2, cfg, seed=3)  # what one process computes with the same global batch
        train_epochs(ddp, (x, y), 2, cfg, seed=3, distributed=True)
        weights = max(
            float((a - b).detach().abs().max()) for a, b in zip(ref.parameters(), ddp.parameters(), strict=True)
        )
        ev_ref, ev_ddp = evaluate(ref, (x, y), 7), evaluate(ddp, (x, y), 7, distributed=True)
        # BatchNorm normalises by each rank's share of the batch (no SyncBatchNorm on CPU): not equal to one
        # process, but rank 0's running statistics are copied to all at each epoch's end.
        bn = model(bn=True)
        train_epochs(bn, (x, y), 1, cfg, seed=3, distributed=True)
        masks = {"w": torch.tensor([True, rank == 0, False])}
        try:
            distributed.verify_masks(masks, "round 5")
            mismatch = ""
        except distributed.MaskMismatchError as err:
            mismatch = str(err)
        ctx = distributed.Context(rank=rank, world_size=2, backend="gloo")
        if rank == 0:
            distributed.announce_start(ctx, error="RunBusy: run x is being computed by another process")
            peer = ""
        else:
            try:
                distributed.receive_start(ctx)
                peer = ""
            except distributed.PeerFailed as err:
                peer = str(err)
        Path(out_dir, f"rank{rank}.json").write_text(
            json.dumps(
                {
                    "weights": weights,
                    "ref": list(ev_ref),
                    "ddp": list(ev_ddp),
                    "mismatch": mismatch,
                    "peer": peer,
                    "bn": bn[1].running_mean.tolist(),
                }
            )
        )
    except BaseException:
        dist.destroy_process_group()
        raise
    else:
        distributed.close()


def test_ddp_training_equals_one_process_in_a_real_gloo_group(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["weights"] < WEIGHT_TOL  # the global batch's gradient, split over 2 ranks
        assert r["ddp"][1] == r["ref"][1] and r["ddp"][0] == pytest.approx(r["ref"][0], abs=1e-3)
        assert r["mismatch"].startswith("round 5: the pruning masks differ across ranks")
    assert r0["bn"] == r1["bn"]  # buffers synchronised from rank 0 at each epoch's end
    assert r1["peer"] == "rank 1: rank 0 could not start the run: RunBusy: run x is being computed by another process"
