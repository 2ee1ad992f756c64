"""The `splitsim` command: run a scenario, price one operation, list the presets.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError

from splitsim import advise_command, sweep
from splitsim.errors import ScenarioError
from splitsim.writing import check_out_path

if TYPE_CHECKING:
    from splitsim.hardware.cluster import ClusterSpec
    from splitsim.scenario import Scenario

EXIT_BAD_INPUT = 2


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from splitsim.api import simulate
    from splitsim.report import format_summary, write_outputs
    from splitsim.scenario import load_scenario

    scenario = load_scenario(args.scenario, args.set)
    if args.slo is not None:
        from splitsim.slo import parse_slo_arg

        scenario = scenario.model_copy(update={"slo": parse_slo_arg(args.slo)})
    out_dir = Path(args.out) if args.out else Path("runs") / scenario.name
    check_out_path(out_dir)
    for note in _notes(scenario):
        print(f"note: {note}")
    started = time.perf_counter()
    with tqdm(total=scenario.workload.num_requests, unit="req", desc="simulating", leave=False,
              disable=args.quiet or None, file=sys.stderr) as bar:
        result = simulate(scenario, trace_window_s=args.trace_window, trace_start_s=args.trace_start,
                          on_finish=lambda _: bar.update(),
                          on_tick=lambda now: bar.set_postfix_str(f"{now:,.1f} s simulated"))
    sim_wall = time.perf_counter() - started
    run_info = {
        "scenario": str(args.scenario), "overrides": args.set, "wall_time_s": sim_wall,
        "events": result.meta.get("events"), "fast_forward": result.meta.get("fast_forward"),
        "python": platform.python_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        written = write_outputs(result, out_dir, run_info, timeline=not args.no_plot)
    except OSError as err:
        raise ScenarioError(f"--out {out_dir}: cannot write the outputs ({err.strerror})") from None
    print(format_summary(result))
    print(f"  wall time       {sim_wall:.2f} s to simulate; outputs in {out_dir}/ "
          f"({', '.join(p.name for p in written)})")
    return 0


def _notes(scenario: Scenario) -> list[str]:
    """What the user should know before the run starts (stdout: stderr is for errors alone)."""
    notes = []
    if scenario.scheduler.chunked_prefill is not None:
        notes.append(f"scheduler.chunked_prefill is deprecated: use scheduler.policy: "
                     f"{scenario.scheduler.chosen_policy}")
    wl = scenario.workload
    if wl.trace is not None and (wl.prompt_tokens is not None or wl.output_tokens is not None):
        notes.append("workload.prompt_tokens and output_tokens are not used: the trace gives every request's lengths")
    return notes


def _cost(args: argparse.Namespace) -> int:
    from splitsim.hardware.catalog import load_cluster, load_gpu

    if args.op == "gemm":
        gpu = load_gpu(args.gpu)
        weight_bytes = {"fp8": 1.0, "fp4": 0.5}.get(args.dtype, 2.0)
        if (args.dtype == "fp8" and not gpu.has_fp8) or (args.dtype == "fp4" and not gpu.has_fp4):
            valid = ", ".join(["bf16", "fp16"] + ["fp8"] * gpu.has_fp8 + ["fp4"] * gpu.has_fp4)
            raise ScenarioError(f"--dtype {args.dtype}: {gpu.name} has no {args.dtype.upper()} tensor cores "
                                f"(valid: {valid})")
        seconds = gpu.gemm_time_s(args.m, args.n, args.k, weight_bytes=weight_bytes, dtype=args.dtype)
        label = f"gemm {args.m}×{args.k} · {args.k}×{args.n} {args.dtype} on {gpu.name}"
        result: dict[str, object] = {"seconds": seconds}
    else:
        cluster = load_cluster(args.cluster)
        if not 2 <= args.gpus <= cluster.num_gpus:
            raise ScenarioError(f"--gpus = {args.gpus}: {cluster.name} has {cluster.num_gpus} GPUs "
                                f"(valid: 2 to {cluster.num_gpus})")
        gpus = list(range(args.gpus))
        try:
            seconds, regime = _collective_s(args, cluster, gpus)
        except ValueError:  # a group uneven over nodes (hardware.collectives refuses it)
            raise ScenarioError(f"--gpus = {args.gpus}: a collective over {cluster.name}'s nodes of "
                                f"{cluster.gpus_per_node} GPUs needs as many on each node (valid: up to "
                                f"{cluster.gpus_per_node}, or a multiple of it)") from None
        how = "NCCL" if regime == "nccl" else f"the engine's own, {regime.replace('_', '-')}"
        label = f"{args.op} of {args.bytes:g} bytes over {args.gpus} GPUs of {cluster.name} ({how})"
        result = {"seconds": seconds, "impl": "nccl" if regime == "nccl" else "custom", "regime": regime}
    print(f"{label}: {seconds * 1e6:.3f} µs")
    if args.json:
        print(json.dumps(result))
    return 0


def _collective_s(args: argparse.Namespace, cluster: ClusterSpec, gpus: list[int]) -> tuple[float, str]:
    """(seconds, regime) of the collective `splitsim cost` was asked for."""
    from splitsim.hardware import collectives
    from splitsim.sim.defaults import ENGINES

    if args.op == "allreduce":
        custom = args.impl == "custom" or (args.engine is not None and ENGINES[args.engine].custom_allreduce)
        if custom:
            return collectives.engine_allreduce(cluster, gpus, args.bytes)
        return collectives.allreduce_s(cluster, gpus, args.bytes), "nccl"
    if args.op == "allgather":
        return collectives.allgather_s(cluster, gpus, args.bytes), "nccl"
    if args.op == "alltoall":
        return collectives.alltoall_s(cluster, gpus, args.bytes), "nccl"
    return collectives.sendrecv_s(cluster, gpus[0], gpus[-1], args.bytes), "nccl"


def _list(args: argparse.Namespace) -> int:
    from splitsim.hardware.catalog import preset_names
    from splitsim.models.spec import catalog_names
    from splitsim.sim.defaults import ENGINES

    print("models:   " + ", ".join(catalog_names()))
    for kind in ("gpus", "fabrics", "clusters"):
        print(f"{kind + ':':9} " + ", ".join(preset_names(kind)))
    print("engines:  " + ", ".join(ENGINES) + "  (scenario key engine:, default vllm)")
    return 0


def _validate_run(args: argparse.Namespace) -> int:
    from splitsim.validate.runner import run_command  # imports torch: only here

    return run_command(args)


def _validate_compare(args: argparse.Namespace) -> int:
    from splitsim.validate.compare import compare_command

    return compare_command(args)


def _calibrate(args: argparse.Namespace) -> int:
    from splitsim.validate.calibrate import calibrate_command

    return calibrate_command(args)


def _add_validate(sub: argparse._SubParsersAction) -> None:
    validate = sub.add_parser("validate", help="run real sharded layers in torch and compare with the simulator",
                              description="Measure real TP/PP-sharded layers (torch; gloo on CPU, NCCL on GPUs) "
                                          "and compare the simulator's predictions with them.")
    vsub = validate.add_subparsers(dest="validate_command", required=True, metavar="ACTION")
    run = vsub.add_parser("run", help="time every op of a sharded forward pass, and microbenchmarks",
                          description="Launch TP×PP processes on this machine (or run under torchrun), time "
                                      "prefill and decode steps op by op, and microbenchmark GEMMs, attention, "
                                      "all-reduce and send/recv; writes measurements.csv and config.json.")
    run.add_argument("--model", required=True, help="catalog name or config.json path/folder")
    run.add_argument("--tp", type=_positive_int, nargs="+", default=[1], help="TP degrees (a sweep)")
    run.add_argument("--pp", type=_positive_int, nargs="+", default=[1], help="PP degrees (a sweep)")
    run.add_argument("--batch", type=_positive_int, nargs="+", default=[1], help="sequences per batch")
    run.add_argument("--prompt", type=_positive_int, nargs="+", default=[128], help="prompt tokens")
    run.add_argument("--decode", type=int, default=4, help="decode steps after each prefill (default 4)")
    run.add_argument("--layers", type=_positive_int, help="keep only the first N layers (default: all)")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                     help="cpu: gloo, one thread per rank; cuda: NCCL, CUDA-event timers")
    run.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    run.add_argument("--warmup", type=int, default=2, help="untimed repeats first (default 2)")
    run.add_argument("--repeats", type=_positive_int, default=5, help="timed repeats; medians kept (default 5)")
    run.add_argument("--cluster", help="the cluster preset these devices are (default: cpu-local on cpu)")
    run.add_argument("--no-micro", action="store_true", help="skip the microbenchmarks")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", required=True, help="measurements folder to write")
    run.set_defaults(func=_validate_run)
    compare = vsub.add_parser("compare", help="predicted vs measured, per op kind and per step",
                              description="Simulate the measured model, layouts and batches with a calibrated "
                                          "profile; print measured vs predicted and write comparison.csv and "
                                          "comparison.png into the measurements folder.")
    compare.add_argument("measurements", type=Path, help="a folder written by `splitsim validate run`")
    compare.add_argument("--profile", required=True, type=Path, help="hardware profile YAML (splitsim calibrate)")
    compare.set_defaults(func=_validate_compare)

    calibrate = sub.add_parser("calibrate", help="fit a hardware profile to measurements",
                               description="Fit the cost model's parameters (GEMM and memory efficiency, "
                                           "collective and send/recv alpha-beta, per-op overhead) to a folder "
                                           "written by `splitsim validate run`, or to a Vidur profiling folder.")
    calibrate.add_argument("measurements", type=Path, nargs="*",
                           help="measurement folder(s), or one Vidur profiling folder (compute/ and network/); "
                                "none with --aiconfigurator")
    calibrate.add_argument("--out", required=True, type=Path, help="profile YAML to write")
    calibrate.add_argument("--gpu", help="Vidur format: the GPU folder under compute/ (h100, a100)")
    calibrate.add_argument("--network", help="Vidur format: the topology folder under network/ (h100_dgx…)")
    calibrate.add_argument("--aiconfigurator", metavar="SYSTEM",
                           help="fit NVIDIA's measured kernel tables for SYSTEM (h100_sxm, h200_sxm, a100_sxm, "
                                "l40s) from the aiconfigurator-core package (splitsim[aiconfigurator])")
    calibrate.add_argument("--framework", choices=["vllm", "trtllm", "sglang"],
                           help="with --aiconfigurator: whose kernels (default vllm)")
    calibrate.add_argument("--version", help="with --aiconfigurator: the tables' version folder (default: the "
                                             "newest collection, printed)")
    calibrate.add_argument("--tables", type=Path, help="with --aiconfigurator: a copy of the package's "
                                                       "systems/data folder instead of the installed package's")
    calibrate.add_argument("--json", action="store_true", help="end with the held-out errors on one line")
    calibrate.set_defaults(func=_calibrate)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text[:40]} is not a positive integer")
    return value


def _float_type(low: float, strict: bool, what: str) -> Callable[[str], float]:
    """An argparse type: a finite number above `low` (or at least it, unless `strict`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            raise argparse.ArgumentTypeError(f"{text[:40]} is not {what}")
        return value
    return parse


_positive_float = _float_type(0.0, True, "a finite number > 0")
_nonnegative_float = _float_type(0.0, False, "a finite number of seconds ≥ 0")


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage before an error: two lines and more. Bad input here is one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog.split()[0]} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="splitsim",
        description="Simulate tensor-, pipeline- and data-parallel LLM inference on given GPUs and wires.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="simulate a scenario YAML and write its outputs",
                         description="Simulate a scenario and write summary.json, requests.csv, gpus.csv, "
                                     "trace.json (Perfetto) and timeline.png.")
    run.add_argument("scenario", type=Path, help="scenario YAML file (see scenarios/)")
    run.add_argument("--out", help="output folder (default: runs/<scenario name>)")
    run.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a scenario key, e.g. --set parallel.tp=4 (repeatable)")
    run.add_argument("--slo", metavar="KEY=SECONDS,...",
                     help="service-level objectives, replacing the scenario's slo: per-request thresholds "
                          "(ttft, tpot, e2e, itl) count toward goodput; a percentile suffix limits the "
                          "distribution, e.g. --slo ttft=0.5,tpot=0.05,ttft_p99=2")
    run.add_argument("--trace-window", type=_nonnegative_float, default=2.0, metavar="SECONDS",
                     help="simulated seconds kept in trace.json, gpus.csv and timeline.png (default: 2)")
    run.add_argument("--trace-start", type=_nonnegative_float, default=0.0, metavar="SECONDS",
                     help="where the trace window starts, in simulated seconds (default: 0)")
    run.add_argument("--no-plot", action="store_true", help="skip timeline.png")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)

    cost = sub.add_parser("cost", help="predicted seconds of one GEMM or collective",
                          description="Price one operation with the cost model the simulator uses.")
    cost.add_argument("op", choices=["allreduce", "allgather", "alltoall", "sendrecv", "gemm"])
    cost.add_argument("--cluster", help="cluster preset or YAML (collectives)")
    cost.add_argument("--gpus", type=_positive_int, help="GPUs in the group, taken in placement order")
    cost.add_argument("--bytes", type=float, help="message bytes (all-gather: the gathered size; all-to-all: what "
                                                  "each GPU sends to the others, its own share excluded)")
    cost.add_argument("--gpu", help="GPU preset or YAML (gemm)")
    cost.add_argument("--m", type=_positive_int, help="rows of the activation (tokens)")
    cost.add_argument("--n", type=_positive_int, help="columns of the weight")
    cost.add_argument("--k", type=_positive_int, help="inner dimension")
    cost.add_argument("--dtype", choices=["bf16", "fp16", "fp8", "fp4"], default="bf16")
    impl = cost.add_mutually_exclusive_group()
    impl.add_argument("--impl", choices=["nccl", "custom"], default=None,
                      help="allreduce: NCCL (default), or the engine's own all-reduce where vLLM's rules allow it "
                           "(NCCL beyond them)")
    impl.add_argument("--engine", choices=["vllm", "sglang", "trtllm", "ideal"], default=None,
                      help="allreduce: whatever this serving engine runs (vllm, sglang: custom; trtllm, ideal: NCCL)")
    cost.add_argument("--json", action="store_true",
                      help='end with a line {"seconds": x} (collectives: and "impl": nccl | custom, "regime")')
    cost.set_defaults(func=_cost)

    advise_command.add_parser(sub, _positive_int, _positive_float)
    sweep.add_parser(sub, _positive_int)

    lister = sub.add_parser("list", help="list the model, GPU, fabric and cluster presets and the serving engines")
    lister.set_defaults(func=_list)
    _add_validate(sub)
    return parser


def _check_cost_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command != "cost":
        return
    needed = ("gpu", "m", "n", "k") if args.op == "gemm" else ("cluster", "gpus", "bytes")
    missing = [f"--{name}" for name in needed if getattr(args, name) is None]
    if missing:
        parser.error(f"cost {args.op} needs {', '.join(missing)}")
    if args.op != "allreduce" and (args.impl is not None or args.engine is not None):
        parser.error(f"--impl and --engine choose an all-reduce: not for cost {args.op}")
    if args.op != "gemm" and not (args.bytes >= 0 and math.isfinite(args.bytes)):
        parser.error(f"--bytes = {args.bytes:g}: give a finite number of bytes, 0 or more")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_cost_args(parser, args)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `splitsim … | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        print("splitsim: error: this command needs torch: pip install 'splitsim[validate]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ScenarioError, ValidationError) as err:  # bad input; any other exception is a bug: its traceback shows
        message = str(err)
        if isinstance(err, ValidationError):  # a schema refusing a figure: its first complaint, on one line
            first = err.errors()[0]
            message = f"{'.'.join(map(str, first['loc']))} = {first.get('input')!r}: {first['msg']}"
        print(f"splitsim: error: {' '.join(message.splitlines())}", file=sys.stderr)  # one line, whatever it quotes
        return EXIT_BAD_INPUT
