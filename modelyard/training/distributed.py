"""Data-parallel training on torch.distributed: who this process is, the process group, sharding.

One process per rank (torchrun starts them: ``modelyard train --nproc N`` relaunches itself under
``torch.distributed.run``). Every rank computes the same epoch batch list (a pure function of
``(seed, epoch)``) and trains on its slice of every batch, so length bucketing is kept and every
rank runs the same number of steps. The step's gradient is that of the whole global batch: each
shard's mean loss is weighted by its share of the batch's samples (DDP averages over ranks), so a
batch that does not split evenly needs neither padding nor dropping. A rank whose shard is empty
(a last batch smaller than the world) runs one repeated sample with weight 0, to take part in the
all-reduce. Rank 0 alone validates and writes; it broadcasts each epoch's record so every rank
takes the same best-checkpoint and early-stopping decisions.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from modelyard.config import Config
from modelyard.errors import ConfigError, RunError
from modelyard.training.environment import resolve_device, seed_everything

log = logging.getLogger("modelyard.training")
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> World:
        """The world torchrun describes in ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``."""
        try:
            return cls(
                rank=int(env.get("RANK", "0")),
                size=int(env.get("WORLD_SIZE", "1")),
                local_rank=int(env.get("LOCAL_RANK", "0")),
            )
        except ValueError as exc:
            raise RunError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from exc


def under_torchrun(env: Mapping[str, str]) -> bool:
    """True when this process was started by torchrun (or anything that sets its variables)."""
    return "WORLD_SIZE" in env and "RANK" in env


# ------------------------------------------------------------------------------ backend, launch
def resolve_backend(name: str, device: torch.device) -> str:
    """``auto`` → nccl for CUDA devices, gloo otherwise; a backend this torch lacks is an error."""
    backend = ("nccl" if device.type == "cuda" else "gloo") if name == "auto" else name
    if not dist.is_available():
        raise ConfigError("train.backend: this torch build has no torch.distributed")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("train.backend: nccl needs CUDA devices; use gloo on CPU")
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available()}
    if not available[backend]:
        raise ConfigError(f"train.backend: this torch build has no {backend} backend")
    return backend


def check_nproc(nproc: int, config: Config) -> None:
    """Refuse a process count this machine cannot run (CPU cores for gloo, GPUs for nccl)."""
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: give at least 1 process")
    tcfg = config.train
    wants_cuda = tcfg.device.startswith("cuda") or (
        tcfg.device == "auto" and torch.cuda.is_available()
    )
    if nproc > 1 and tcfg.device.startswith("cuda:"):
        raise ConfigError(
            f"train.device {tcfg.device}: with --nproc > 1 each rank uses cuda:LOCAL_RANK; "
            "set train.device=cuda"
        )
    device = torch.device("cuda" if wants_cuda else "cpu")
    resolve_backend(tcfg.backend, device)
    if wants_cuda:
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(f"--nproc {nproc}: this machine has {gpus} CUDA device(s)")
    else:
        cores = os.cpu_count() or 1
        if nproc > cores:
            raise ConfigError(
                f"--nproc {nproc}: this machine has {cores} CPU core(s); gloo on CPU runs one "
                "process per core at most"
            )


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now (torchrun binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def launch(argv: Sequence[str], nproc: int, master_addr: str, master_port: int | None) -> int:
    """Run ``python -m modelyard ARGV`` as ``nproc`` processes under torchrun; its exit status.

    The environment (PYTHONPATH included) passes through to every rank.
    """
    cmd = torchrun_command(argv, nproc, master_addr, master_port)
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    return subprocess.run(cmd, env=dict(os.environ), check=False).returncode


def torchrun_command(
    argv: Sequence[str], nproc: int, master_addr: str = "127.0.0.1", master_port: int | None = None
) -> list[str]:
    """The command line that runs ``python -m modelyard ARGV`` as ``nproc`` ranks on this
    machine (a free port when none is given)."""
    port = master_port if master_port is not None else free_port(master_addr)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        master_addr,
        "--master-port",
        str(port),
        "-m",
        "modelyard",
        *argv,
    ]


# ------------------------------------------------------------------------------- process group
def local_rank(world: World) -> int | None:
    """The rank on this node that picks ``cuda:LOCAL_RANK``; None for one process."""
    return world.local_rank if world.distributed else None


@contextlib.contextmanager
def process_group(world: World, config: Config) -> Iterator[World]:
    """Join the process group for the run (nothing to do for one process); leave it after.

    The rendezvous is torchrun's: ``MASTER_ADDR`` / ``MASTER_PORT`` in the environment. A rank
    that seems stuck prints every thread's stack to stderr on ``kill -USR1 PID``.
    """
    if not world.distributed or dist.is_initialized():
        yield world
        return
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    device = resolve_device(config.train.device, local_rank(world))
    backend = resolve_backend(config.train.backend, device)
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def seed_rank(world: World, seed: int) -> None:
    """Give ranks other than 0 their own RNG streams (dropout masks differ per shard)."""
    if world.rank == 0:
        return  # rank 0 keeps the single-process streams
    seed_everything(seed + 1_000_003 * world.rank)


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module | None:
    """The DDP wrapper that all-reduces gradients, or None for one process."""
    if not world.distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def accumulating(ddp: nn.Module | None) -> contextlib.AbstractContextManager[Any]:
    """A micro-batch that only accumulates gradients: DDP skips its all-reduce."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(ddp, DistributedDataParallel):
        return ddp.no_sync()
    return contextlib.nullcontext()


def shard(batch: np.ndarray, world: World) -> np.ndarray:
    """This rank's slice of a batch: contiguous, sizes differ by one at most (may be empty)."""
    return np.array_split(batch, world.size)[world.rank]


# ---------------------------------------------------------------------------------- collectives
def all_reduce_sum(values: Sequence[float], world: World) -> list[float]:
    """Element-wise sums over ranks (float64, on CPU for gloo)."""
    if not world.distributed:
        return list(values)
    device = _collective_device()
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def broadcast(obj: T, world: World) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def gather(obj: T, world: World) -> list[T]:
    """Every rank's ``obj`` on rank 0 (in rank order); an empty list on the others."""
    if not world.distributed:
        return [obj]
    out: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def on_main(world: World, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; its error, if any, is raised on every rank."""
    result: T | None = None
    error: str | None = None
    if world.is_main:
        try:
            result = fn()
        except RunError as exc:
            if not world.distributed:
                raise
            error = str(exc)
    error = broadcast(error, world)
    if error is not None:
        raise RunError(error)
    return result


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names and bytes): equal digests, equal weights."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_ranks_agree(model: nn.Module, world: World) -> list[str]:
    """Every rank's weights digest (gathered on rank 0); raises when ranks diverged."""
    digests = gather(weights_digest(model), world)
    if world.is_main and len(set(digests)) > 1:
        raise RunError(f"ranks ended with different weights: {digests}")
    return digests


def without_options(argv: Sequence[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` less the options ``names`` and their values (``--x V`` or ``--x=V``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{n}=" for n in names)):
            out.append(arg)
    return out
