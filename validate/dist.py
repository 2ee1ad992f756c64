"""Process groups: one option picks device and backend, ranks come from torchrun or from a local spawn,
and a TP×PP layout becomes this rank's stage, TP group and pipeline neighbours.

    cpu  → gloo, one thread per rank, tensors on the CPU
    cuda → NCCL, rank r on cuda:LOCAL_RANK

Ranks are placed TP innermost, as the simulator's plan places GPUs: global rank = stage·tp + tp_rank,
so a TP group takes adjacent ranks (one node's GPUs under torchrun whenever it fits in one).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from splitsim.validate.parallel import TPGroup

DeviceKind = Literal["cpu", "cuda"]
Backend = Literal["gloo", "nccl"]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
CPU_THREADS_PER_RANK = 1


def backend_for(device: DeviceKind) -> Backend:
    match device:
        case "cpu":
            return "gloo"
        case "cuda":
            return "nccl"
    raise ValueError(f"device {device!r} (valid: cpu, cuda)")


def torch_device(device: DeviceKind, local_rank: int) -> torch.device:
    match device:
        case "cpu":
            return torch.device("cpu")
        case "cuda":
            return torch.device("cuda", local_rank)
    raise ValueError(f"device {device!r} (valid: cpu, cuda)")


def under_torchrun(environ: dict[str, str] | None = None) -> bool:
    """True when torchrun (or anything that sets its variables) started this process as one rank."""
    env = os.environ if environ is None else environ
    return all(name in env for name in TORCHRUN_VARS)


@dataclass(frozen=True)
class Context:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device_kind: DeviceKind
    device: torch.device

    @property
    def backend(self) -> Backend:
        return backend_for(self.device_kind)


def init_from_env(device: DeviceKind) -> Context:
    """Join the process group that RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT describe: the
    entry point of every rank, under torchrun or under `launch`."""
    rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    where = torch_device(device, local)
    if device == "cpu":
        torch.set_num_threads(CPU_THREADS_PER_RANK)  # one core per rank, like one GPU per rank
    else:
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), rank=rank, world_size=world,
                                device_id=where if device == "cuda" else None)
    return Context(rank, world, local, device, where)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(rank: int, world_size: int, port: int, results: str, device: DeviceKind,
             fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    ctx = init_from_env(device)
    try:
        result = fn(ctx, *args)
        if result is not None:
            torch.save(result, Path(results) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], world_size: int, device: DeviceKind, *args: Any) -> list[Any]:
    """Run `fn(ctx, *args)` on `world_size` local processes (torch.multiprocessing spawn, MASTER_ADDR
    127.0.0.1 and a free port) and return each rank's result (None where it returned None).

    `fn` must be importable by name (a module-level function of the package); results travel back
    through files, so they must pickle."""
    with tempfile.TemporaryDirectory(prefix="splitsim-launch-") as results:
        mp.spawn(_spawned, args=(world_size, free_port(), results, device, fn, args), nprocs=world_size, join=True)
        paths = [Path(results) / f"rank{r}.pt" for r in range(world_size)]
        return [torch.load(p, weights_only=False) if p.exists() else None for p in paths]


# -------------------------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class ParallelState:
    """One rank of a TP×PP layout: its stage and TP rank, its TP group, the global ranks of the same TP
    rank in the previous and next stages. The layout is the whole process group."""

    tp: int
    pp: int
    rank: int
    stage: int
    tp_group: TPGroup
    prev_rank: int | None
    next_rank: int | None

    @property
    def tp_rank(self) -> int:
        return self.tp_group.rank

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.pp - 1

    def global_rank(self, stage: int, tp_rank: int) -> int:
        return stage * self.tp + tp_rank


def parallel_state(ctx: Context, tp: int, pp: int) -> ParallelState:
    """Build the groups of a tp×pp layout over all `ctx.world_size` ranks (which must equal tp·pp). Every
    rank calls this, in the same order, since creating a group is collective."""
    if tp * pp != ctx.world_size:
        raise ValueError(f"layout tp={tp} × pp={pp} needs {tp * pp} ranks, the process group has {ctx.world_size}")
    stage, tp_rank = divmod(ctx.rank, tp)
    mine: dist.ProcessGroup | None = None
    for s in range(pp):
        group = dist.new_group(list(range(s * tp, (s + 1) * tp))) if tp > 1 else None
        if s == stage:
            mine = group
    return ParallelState(
        tp=tp, pp=pp, rank=ctx.rank, stage=stage, tp_group=TPGroup(tp_rank, tp, mine),
        prev_rank=(stage - 1) * tp + tp_rank if stage > 0 else None,
        next_rank=(stage + 1) * tp + tp_rank if stage < pp - 1 else None,
    )
