"""Multi-process training on PyTorch's own engine (torchrun + DistributedDataParallel): the few helpers pqprune needs.

``torchrun --nproc_per_node N -m pqprune run ...`` starts N processes with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in their environment. :func:`session` sees them, initialises the process group (gloo on CPU,
NCCL on CUDA with device ``cuda:LOCAL_RANK``) and tears it down afterwards. Everything else here is a thin,
typed wrapper over :mod:`torch.distributed` so that :mod:`pqprune.experiment.train` and :mod:`pqprune.experiment` never call
it directly:

- :func:`wrap_ddp`, :func:`broadcast_buffers`: the model for training, and keeping BatchNorm statistics equal;
- :func:`batch_share`, :func:`shard_bounds`: which examples this rank takes (training / evaluation);
- :func:`gather_objects`, :func:`announce_start`, :func:`receive_start`: small results and the start decision
  of rank 0 (resume point, or the error that stopped it) sent to the other ranks;
- :func:`mask_digest`, :func:`verify_masks`: every rank's masks must be identical, checked every round.

This module knows nothing of runs, databases or pruning methods (layers point downwards).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

# Environment variables set by torchrun (and by torch.distributed.launch / elastic agents).
ENV_WORLD_SIZE, ENV_RANK, ENV_LOCAL_RANK = "WORLD_SIZE", "RANK", "LOCAL_RANK"


class DistributedError(RuntimeError):
    """A multi-process run cannot go on (ranks disagree, or another rank failed)."""


class MaskMismatchError(DistributedError):
    """The ranks' pruning masks differ: their models have diverged, so the run stops."""


class PeerFailed(DistributedError):
    """Rank 0 failed before the loop started; the other ranks stop with its message."""


@dataclass(frozen=True)
class Context:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: not distributed

    @property
    def active(self) -> bool:
        """Whether several processes train together (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, the database and progress."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What a run records about how it was launched (not part of its identity)."""
        return {"world_size": self.world_size, "backend": self.backend}


# --------------------------------------------------------------------------------------------- launch
def launched() -> bool:
    """Whether this process was started by torchrun with more than one process in the job."""
    return _env_int(ENV_WORLD_SIZE, 1) > 1 and ENV_RANK in os.environ


def launch_rank() -> int:
    """This process's rank from the environment (0 when not launched by torchrun); needs no process group."""
    return _env_int(ENV_RANK, 0)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def is_active() -> bool:
    """Whether a process group of more than one process is initialised now."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    return rank() == 0


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Context]:
    """The run's :class:`Context`; initialises (and afterwards destroys) the process group under torchrun.

    ``device`` is the resolved device setting: CPU → gloo; CUDA → NCCL on ``cuda:LOCAL_RANK`` (one GPU per
    process, whatever index was asked for). Without torchrun this is a no-op giving a one-process context. A
    process group the caller initialised already is used as it is and left alone.
    """
    if is_active():  # the caller's own group (e.g. a user script): use it, do not destroy it
        yield _context(dist.get_backend(), device)
        return
    if not launched():
        yield Context(device=device)
        return
    if not dist.is_available():
        raise DistributedError("launched by torchrun, but this PyTorch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", _env_int(ENV_LOCAL_RANK, 0))
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)  # env:// rendezvous: MASTER_ADDR/PORT from torchrun
    try:
        yield _context(backend, device)
    except BaseException:
        dist.destroy_process_group()
        raise
    else:
        close()


def close() -> None:
    """Leave the process group once every rank is done with it.

    A broadcast's source may return before its peers have read the data; tearing the group down under them makes
    gloo abort the process ("terminate called without an active exception", seen in the 2-process test). So the
    ranks meet at a barrier first.
    """
    dist.barrier()
    dist.destroy_process_group()


def _context(backend: str, device: torch.device) -> Context:
    if device.type == "cuda":
        device = torch.device("cuda", _env_int(ENV_LOCAL_RANK, torch.cuda.current_device()))
    return Context(dist.get_rank(), dist.get_world_size(), _env_int(ENV_LOCAL_RANK, 0), device, str(backend))


# --------------------------------------------------------------------------------------------- model
def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (which first copies rank 0's parameters and buffers to all).

    The wrapper shares the module's parameters: masks kept beside the module (MaskSet) stay valid.
    """
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step every rank holds statistics
    updated by its own share of the batch; evaluating then would differ by rank. One broadcast fixes that.
    """
    for buf in model.buffers():
        dist.broadcast(buf, src)


# --------------------------------------------------------------------------------------------- data
def batch_share(indices: Tensor, rank_: int, world: int) -> Tensor:
    """This rank's share of one global batch: every ``world``-th index starting at ``rank_``.

    With the same permutation on every rank this is exactly DistributedSampler's split (``indices[rank::world]``
    of the epoch's permutation, batched) whenever the batch size divides evenly; unlike it, no example is
    repeated to pad the last batch, so an epoch sees each example once whatever the number of processes.
    """
    return indices[rank_::world]


def shard_bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    """A contiguous, nearly equal slice ``[lo, hi)`` of ``n`` examples for evaluation on rank ``rank_``."""
    return n * rank_ // world, n * (rank_ + 1) // world


# --------------------------------------------------------------------------------------------- small messages
def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def announce_start(ctx: Context, start: Mapping[str, Any] | None = None, error: str | None = None) -> None:
    """Rank 0: send the start decision (``start``) or the ``error`` that stopped it to the other ranks.

    A no-op in a one-process run. Without it the other ranks would wait in their first collective forever.
    """
    if ctx.active:
        box = [{"error": error} if error is not None else {"start": dict(start or {})}]
        dist.broadcast_object_list(box, src=0)


def receive_start(ctx: Context) -> dict[str, Any]:
    """Ranks > 0: rank 0's start decision; :class:`PeerFailed` with rank 0's message if it failed."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    msg = box[0]
    if "error" in msg:
        raise PeerFailed(f"rank {ctx.rank}: rank 0 could not start the run: {msg['error']}")
    return dict(msg["start"])


# --------------------------------------------------------------------------------------------- masks
def mask_digest(masks: Mapping[str, Tensor]) -> int:
    """A signed 64-bit integer from the SHA-256 of the masks (names, shapes and bits, in name order)."""
    h = hashlib.sha256()
    for name in sorted(masks):
        m = masks[name].detach()
        h.update(f"{name}:{tuple(m.shape)};".encode())
        h.update(np.packbits(m.to("cpu", torch.bool).contiguous().numpy().reshape(-1)).tobytes())
    return int.from_bytes(h.digest()[:8], "little", signed=True)


def _all_gather_int64(value: int) -> list[int]:
    mine = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        mine = mine.cuda()
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def verify_masks(
    masks: Mapping[str, Tensor], where: str, gather: Callable[[int], Sequence[int]] | None = None
) -> list[int]:
    """Check that every rank holds the same masks (a collective); returns each rank's digest, in rank order.

    ``where`` names the point of the run (e.g. ``"round 3"``) in the error. ``gather`` replaces the all-gather
    (tests). Raises :class:`MaskMismatchError` on every rank when any two digests differ.
    """
    digests = list((gather or _all_gather_int64)(mask_digest(masks)))
    if len(set(digests)) > 1:
        ranks = ", ".join(f"rank {r}: {d & (2**64 - 1):016x}" for r, d in enumerate(digests))
        raise MaskMismatchError(
            f"{where}: the pruning masks differ across ranks ({ranks}); the ranks' weights have diverged, so the "
            "run stops here. The checkpoint of the last complete round is intact; rerun to resume from it."
        )
    return digests


def digest_hex(digest: int) -> str:
    """A digest as 16 hex digits (for records)."""
    return f"{digest & (2**64 - 1):016x}"
