"""Multi-process episodic evaluation with ``torch.distributed`` (``torchrun``, ``accelerate
launch``, or any launcher that sets ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR``).

Episode ids are dealt round-robin (rank ``r`` of ``W`` gets ``r, r + W, ...``). The evaluate
loop (:func:`focusvit.runs.evaluate`) does the rest: every rank streams to its own shard file
(resumable), the records are gathered with ``all_gather_object`` and rank 0 writes the one
episode file, identical to the file of a single-process run. gloo on CPU, nccl on CUDA.

Collectives wait up to :data:`TIMEOUT_ENV` minutes (default :data:`DEFAULT_TIMEOUT_MINUTES`)
for the slowest process, not torch's 30 (gloo) or 10 (nccl): the main process alone fine-tunes
the attention-focus episodes of a report while the others wait, which takes longer than that on
a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch

from focusvit.errors import ConfigError

TIMEOUT_ENV = "FOCUSVIT_DIST_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 240.0


def process_group_timeout() -> timedelta:
    """How long a collective waits for the slowest process: ``$FOCUSVIT_DIST_TIMEOUT_MINUTES``
    or :data:`DEFAULT_TIMEOUT_MINUTES` (a crashed process still ends the job at once: the
    launcher stops the others)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        minutes = float(raw) if raw else DEFAULT_TIMEOUT_MINUTES
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ConfigError(
            f"{TIMEOUT_ENV}={raw!r} is not a positive number of minutes; set e.g. "
            f"{TIMEOUT_ENV}=240, or unset it for the default ({DEFAULT_TIMEOUT_MINUTES:g})"
        )
    return timedelta(minutes=minutes)


def _env_int(name: str, default: str) -> int:
    """The integer environment variable ``name`` a launcher sets (``default`` when unset)."""
    raw = os.environ.get(name, default).strip() or default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not an integer; launch with torchrun / accelerate launch, or "
            f"unset {name} for a single process"
        ) from None


def shard(ids: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The episode ids of ``rank``: ``ids[rank::world_size]``."""
    if not all(type(v) is int for v in (rank, world_size)) or not 0 <= rank < world_size:
        raise ConfigError(
            f"rank {rank!r} is not in 0..world_size-1 (world_size={world_size!r}); pass integers "
            "with 0 <= rank < world_size"
        )
    return list(ids)[rank::world_size]


@dataclass
class DistContext:
    """Rank, world size and backend of this process (world size 1 without a launcher)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str | None = None) -> DistContext:
        """Join the process group a launcher set up (``WORLD_SIZE`` > 1), else single process."""
        world = _env_int("WORLD_SIZE", "1")
        if world <= 1:
            return cls()
        import torch.distributed as dist

        use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        backend = "nccl" if use_cuda else "gloo"
        local_rank = _env_int("LOCAL_RANK", "0")
        owns = False
        if not dist.is_initialized():
            if use_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend, timeout=process_group_timeout())
            owns = True
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, backend, owns)

    def device(self, requested: str | None) -> str | None:
        """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA runs."""
        if self.distributed and self.backend == "nccl":
            return f"cuda:{self.local_rank}"
        return requested

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False
