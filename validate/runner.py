"""`splitsim validate run`: measure real sharded layers for a sweep of layouts, write one measurements folder.

Two ways to get ranks:

- on its own (the default): for each (tp, pp) of the sweep, spawn tp·pp local processes
  (torch.multiprocessing, MASTER_ADDR 127.0.0.1 and a free port) and measure that layout;
- under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set): join torchrun's
  process group and measure each layout of the sweep with tp·pp = WORLD_SIZE, in turn; rank 0 writes.

Everything that can be wrong with the options is checked before any process starts, and reported as one
ScenarioError line naming the option, the value and what is valid.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist

from splitsim.errors import ScenarioError
from splitsim.hardware.catalog import load_cluster
from splitsim.models.spec import ModelSpec, load_model
from splitsim.validate import measurements
from splitsim.validate.dist import CPU_THREADS_PER_RANK, backend_for, init_from_env, launch, under_torchrun
from splitsim.validate.measure import MeasureOptions, measure_layout
from splitsim.validate.micro import ATTENTION_BATCHES, ATTENTION_CONTEXTS, ATTENTION_PROMPTS, GEMM_TOKENS, MicroPlan
from splitsim.validate.model import RMS_NORM_EPS, ROPE_THETA
from splitsim.validate.parallel import layout_problem, valid_tp
from splitsim.validate.pipeline import stage_weight_bytes
from splitsim.validate.timing import timer_for
from splitsim.writing import check_out_path, replace_folder

Layout = tuple[int, int]
ELEMENT_BYTES = 2  # bf16 and fp16 weights
MEMORY_HEADROOM = 1.25  # generating and concatenating shards, activations, KV caches, the runtime
GB = 1e9
HANDOFF = ("one activation tensor per step: TP rank r sends 1/tp of the flattened [tokens, hidden] to TP rank r "
           "of the next stage, which all-gathers it over its TP group")


def _unique(values: list[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(values))


def _spec(ref: str) -> ModelSpec:
    try:
        return load_model(ref)
    except ValueError as err:
        raise ScenarioError(f"--model {ref}: {err}") from None


def check_options(args: argparse.Namespace, spec: ModelSpec, world_size: int | None) -> list[Layout]:
    """The layouts to measure, in sweep order; ScenarioError on the first bad option. `world_size` is
    torchrun's WORLD_SIZE, or None when the runner spawns its own ranks."""
    layers = spec.num_layers if args.layers is None else args.layers
    if layers > spec.num_layers:
        raise ScenarioError(f"--layers {layers}: {spec.name} has {spec.num_layers} layers "
                            f"(valid: 1 to {spec.num_layers})")
    for name in ("decode", "warmup"):
        value = getattr(args, name)
        if value < 0:
            raise ScenarioError(f"--{name} {value}: a count (valid: 0 or more)")
    for tp in _unique(args.tp):
        problem = layout_problem(spec, tp)
        if problem:
            raise ScenarioError(f"--tp {tp}: {spec.name}: {problem} "
                                f"(valid: {', '.join(map(str, valid_tp(spec)))})")
    for pp in _unique(args.pp):
        if pp > layers:
            raise ScenarioError(f"--pp {pp}: {layers} layers cannot fill {pp} pipeline stages "
                                f"(valid: 1 to {layers}; --layers keeps {layers})")
    longest = max(args.prompt) + args.decode
    if longest > spec.max_position_embeddings:
        raise ScenarioError(f"--prompt {max(args.prompt)} --decode {args.decode}: {longest} positions exceed "
                            f"{spec.name}'s max_position_embeddings {spec.max_position_embeddings}")
    layouts = [(tp, pp) for tp in _unique(args.tp) for pp in _unique(args.pp)]
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise ScenarioError(f"--device cuda: torch {torch.__version__} sees no CUDA device (valid here: cpu)")
        if world_size is None:
            _check_ranks(layouts, torch.cuda.device_count(), "this machine has {n} CUDA devices")
    if args.cluster is not None:
        try:
            load_cluster(args.cluster)
        except ValueError as err:
            raise ScenarioError(f"--cluster {args.cluster}: {str(err).splitlines()[0]}") from None
    if world_size is not None:
        _check_ranks(layouts, world_size, "torchrun started {n} ranks")
        layouts = [layout for layout in layouts if layout[0] * layout[1] == world_size]
        if not layouts:
            raise ScenarioError(f"--tp {' '.join(map(str, args.tp))} --pp {' '.join(map(str, args.pp))}: no layout "
                                f"uses the {world_size} ranks torchrun started (valid: tp·pp = {world_size})")
    _check_memory(spec, layers, layouts, args.device, world_size)
    return layouts


def _memory_bytes(device: str) -> tuple[float, str] | None:
    """(bytes, what) the weights must fit in: available host memory for CPU ranks (Linux), one device's
    memory for CUDA ranks; None when unknown."""
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return float(torch.cuda.get_device_properties(local).total_memory), "one CUDA device has {gb:.1f} GB"
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in lines if line.startswith("MemAvailable:")), None)
    return None if kib is None else (kib * 1024.0, "this machine has {gb:.1f} GB available")


def _check_memory(spec: ModelSpec, layers: int, layouts: list[Layout], device: str, world_size: int | None) -> None:
    """Refuse a run whose weights cannot fit: on CPU all of a machine's ranks share its memory, on CUDA
    each rank has one device. The figure counts the weights with MEMORY_HEADROOM for what building and
    running them takes besides."""
    limit = _memory_bytes(device)
    if limit is None:
        return
    available, what = limit

    def need(n_layers: int, tp: int, pp: int) -> float:
        per_rank = [stage_weight_bytes(spec, n_layers, tp, pp, s, ELEMENT_BYTES) for s in range(pp)]
        if device == "cuda":
            return max(per_rank) * MEMORY_HEADROOM
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", tp * pp)) if world_size else tp * pp
        return (sum(per_rank) * tp * ranks_here / (tp * pp)) * MEMORY_HEADROOM

    for tp, pp in layouts:
        needed = need(layers, tp, pp)
        if needed <= available:
            continue
        fits = [n for n in range(pp, layers) if need(n, tp, pp) <= available]
        valid = f"valid: --layers {pp} to {max(fits)}" if fits else f"not even --layers {pp} fits"
        raise ScenarioError(f"--layers {layers}: {spec.name} at tp={tp} pp={pp} needs ≈{needed / GB:.1f} GB for "
                            f"weights, {what.format(gb=available / GB)} ({valid})")


def _check_ranks(layouts: list[Layout], n: int, what: str) -> None:
    for tp, pp in layouts:
        if tp * pp > n:
            raise ScenarioError(f"--tp {tp} --pp {pp}: needs {tp * pp} ranks, {what.format(n=n)} "
                                f"(valid: tp·pp ≤ {n})")


def micro_plans(layouts: list[Layout], options: MeasureOptions) -> list[MicroPlan]:
    """What each layout microbenchmarks: GEMMs and attention once per TP degree; collectives once per
    group size, over a TP group when some layout has one of that size, else over all of a layout's
    ranks; send/recv once (in the first layout with pp > 1, where the pair crosses stages, else the
    first with two ranks)."""
    b, s, d = options.batches, options.prompts, options.decode
    max_pos = options.spec.max_position_embeddings
    tokens = tuple(sorted(set(GEMM_TOKENS) | set(b) | set(s) | {x * y for x in b for y in s}))
    prefill = tuple(sorted({(x, y) for x in {1, *b} for y in {*ATTENTION_PROMPTS, *s} if y <= max_pos}))
    decode = tuple(sorted({(x, c) for x in {*ATTENTION_BATCHES, *b}
                           for c in {*ATTENTION_CONTEXTS, *(y + d for y in s)} if c <= max_pos}))
    pair = next((lay for lay in layouts if lay[1] > 1), next((lay for lay in layouts if lay[0] * lay[1] > 1), None))
    owner: dict[int, Layout] = {}
    for tp, pp in layouts:
        if tp > 1:
            owner.setdefault(tp, (tp, pp))
    for tp, pp in layouts:
        if tp * pp > 1:
            owner.setdefault(tp * pp, (tp, pp))
    plans = []
    for i, (tp, pp) in enumerate(layouts):
        first = tp not in {t for t, _ in layouts[:i]}
        groups = tuple(sorted(g for g, lay in owner.items() if lay == (tp, pp)))
        plans.append(MicroPlan(gemm_tokens=tokens if first else (), attention_prefill=prefill if first else (),
                               attention_decode=decode if first else (), collective_groups=groups,
                               sendrecv=(tp, pp) == pair))
    return plans


def _config(args: argparse.Namespace, spec: ModelSpec, options: MeasureOptions, layouts: list[Layout],
            launcher: str, wall_s: float) -> dict[str, Any]:
    cpu = args.device == "cpu"
    return {
        "model": spec.name, "model_spec": spec.model_dump(), "layers": options.num_layers,
        "tp": list(_unique(args.tp)), "pp": list(_unique(args.pp)), "layouts": [list(lay) for lay in layouts],
        "batch": list(options.batches), "prompt": list(options.prompts), "decode": options.decode,
        "device": args.device, "backend": backend_for(args.device), "dtype": options.dtype,
        "timer": timer_for(args.device).kind, "threads_per_rank": CPU_THREADS_PER_RANK if cpu else None,
        "torch": torch.__version__, "hostname": socket.gethostname(),
        "cluster": args.cluster or ("cpu-local" if cpu else None),
        "cuda_device": None if cpu else torch.cuda.get_device_name(0),
        "warmup": options.warmup, "repeats": options.repeats, "seed": options.seed, "micro": not args.no_micro,
        "launcher": launcher, "rope_theta": ROPE_THETA, "rms_norm_eps": RMS_NORM_EPS, "handoff": HANDOFF,
        "wall_time_s": round(wall_s, 3),
    }


def summary(rows: pd.DataFrame) -> str:
    """Median step times per layout and batch: prefill, and decode over its contexts."""
    steps = rows[rows["kind"] == "step"]
    table = steps.pivot_table(index=["tp", "pp", "batch", "prompt"], columns="phase", values="seconds",
                              aggfunc="median").reset_index()
    lines = ["   tp  pp  batch  prompt   prefill ms   decode ms"]
    for r in table.to_dict("records"):
        layout = f"{int(r['tp']):3d} {int(r['pp']):3d} {int(r['batch']):6d} {int(r['prompt']):7d}"
        lines.append(f"  {layout} {r['prefill'] * 1e3:12.3f} {r.get('decode', math.nan) * 1e3:11.3f}")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    spec = _spec(args.model)
    torchrun = under_torchrun()
    world_size = int(os.environ["WORLD_SIZE"]) if torchrun else None
    layouts = check_options(args, spec, world_size)
    check_out_path(Path(args.out))
    options = MeasureOptions(
        spec=spec, num_layers=spec.num_layers if args.layers is None else args.layers,
        batches=_unique(args.batch), prompts=_unique(args.prompt), decode=args.decode, warmup=args.warmup,
        repeats=args.repeats, dtype=args.dtype, seed=args.seed)
    plans: list[MicroPlan | None] = [None] * len(layouts) if args.no_micro else list(micro_plans(layouts, options))
    if args.device == "cpu" and not torchrun and max(tp * pp for tp, pp in layouts) > (os.cpu_count() or 1):
        print(f"splitsim: warning: {max(tp * pp for tp, pp in layouts)} ranks on {os.cpu_count()} CPU cores "
              "time-share them")  # stdout, as a run's notes: stderr is for errors only
    tables: list[pd.DataFrame | None] = []
    if torchrun:
        ctx = init_from_env(args.device)
        try:
            tables = [measure_layout(ctx, options, tp, pp, plan) for (tp, pp), plan in zip(layouts, plans)]
        finally:
            dist.destroy_process_group()
        if ctx.rank != 0:
            return 0
    else:
        for (tp, pp), plan in zip(layouts, plans):
            tables.append(launch(measure_layout, tp * pp, args.device, options, tp, pp, plan)[0])
    rows = pd.concat([t for t in tables if t is not None], ignore_index=True)
    wall_s = time.perf_counter() - started
    out = Path(args.out)
    config = _config(args, spec, options, layouts, "torchrun" if torchrun else "spawn", wall_s)
    replace_folder(out, lambda staging: measurements.write(staging, rows, config))
    print(f"{spec.name}, {options.num_layers} layers, {args.device} ({backend_for(args.device)}), {args.dtype}: "
          f"{len(layouts)} layout(s) in {wall_s:.1f} s; {len(rows)} rows in {out}/")
    print(summary(rows))
    return 0
