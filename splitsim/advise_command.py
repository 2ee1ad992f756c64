"""The `splitsim advise` command: flags to a `Question`, the advice to the console and an output folder."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any, get_args

from splitsim.errors import ScenarioError
from splitsim.models.precision import KvDtype, WeightDtype
from splitsim.workers import add_workers_flags
from splitsim.writing import check_out_path, replace_folder


def add_parser(sub: argparse._SubParsersAction, positive_int: Any, positive_float: Any) -> None:
    advise = sub.add_parser(
        "advise", help="simulate every layout of a model on a cluster and rank them",
        description="Enumerate every TP × PP × DP (and placement order, weight and KV precision) that uses the "
                    "GPUs, prune what cannot run (with the reason), simulate the rest with the same workload "
                    "and seed, and rank them. Writes candidates.csv and advice.json.")
    advise.add_argument("--model", help="catalog name, config.json path or folder")
    advise.add_argument("--cluster", help="cluster preset or YAML")
    advise.add_argument("--scenario", type=Path,
                        help="take the model, cluster, request lengths, scheduler, memory, SLO and seed from a "
                             "scenario YAML (flags given as well win)")
    advise.add_argument("--gpus", type=positive_int, help="GPUs every candidate uses (default: all of the cluster's)")
    advise.add_argument("--isl", type=positive_int, help="prompt tokens per request (default 1024)")
    advise.add_argument("--osl", type=positive_int, help="output tokens per request (default 1024)")
    advise.add_argument("--trace", type=Path,
                        help="take the request lengths from a trace CSV, in its order (repeated if a run needs "
                             "more); its arrival times are not used: the load is searched, or --rate/--concurrency")
    advise.add_argument("--overlong", choices=["refuse", "truncate", "skip"], default="refuse",
                        help="a trace request longer than the model's context: an error (default), shortened, or "
                             "left out")
    load = advise.add_mutually_exclusive_group()
    load.add_argument("--rate", type=positive_float, help="requests/s (Poisson) for the whole deployment")
    load.add_argument("--concurrency", type=positive_int, help="clients in a closed loop")
    advise.add_argument("--num-requests", type=positive_int, help="requests at a given load (default 1,000)")
    advise.add_argument("--precision", default=None,
                        help="weight precisions to try, e.g. bf16,fp8; checkpoint: as the model's config.json stores "
                             "them (DeepSeek-V3's fp8, gpt-oss's MXFP4 experts); default: bf16, or checkpoint for a "
                             "checkpoint stored in another format")
    advise.add_argument("--kv-cache", default="bf16", help="KV-cache precisions to try, e.g. bf16,fp8")
    advise.add_argument("--slo", help="ttft=2,tpot=0.05 (per-request thresholds: goodput) or ttft_p99=2,tpot_p99=0.03 "
                                      "(percentile limits: the most load that meets them)")
    advise.add_argument("--objective", choices=["throughput_per_gpu", "goodput", "latency"],
                        help="throughput_per_gpu (default): steady-state output tok/s per GPU, at saturation or "
                             "at the most load meeting percentile SLOs; goodput (default with per-request SLOs): "
                             "most requests/s per GPU meeting them; latency: lowest mean E2E at the given load")
    advise.add_argument("--max-num-seqs", type=positive_int, help="pin the batch's sequences (default: vLLM's)")
    advise.add_argument("--max-batched-tokens", type=positive_int, help="pin the batch's tokens (default: vLLM's)")
    advise.add_argument("--seed", type=int, help="the runs' random seed (default 0)")
    add_workers_flags(advise, positive_int)
    advise.add_argument("--out", type=Path, help="output folder (default: runs/advice-<model>)")
    advise.add_argument("--json", action="store_true", help="end with advice.json on one line")
    advise.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    advise.set_defaults(func=run)


def _choices(flag: str, text: str, valid: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(","))
    for value in values:
        if value not in valid:
            raise ScenarioError(f"{flag} {text[:60]}: {value[:20]!r} is not a precision (valid: {', '.join(valid)})")
    return tuple(dict.fromkeys(values))


def question_from_args(args: argparse.Namespace) -> Any:
    from splitsim.advisor import Objective, Question
    from splitsim.hardware.catalog import load_cluster
    from splitsim.models.spec import load_model
    from splitsim.slo import parse_slo_arg

    given = _from_scenario(args.scenario, args.overlong) if args.scenario is not None else {}
    args.model = args.model or given.get("model")
    args.cluster = args.cluster or given.get("cluster")
    for flag, value in (("--model", args.model), ("--cluster", args.cluster)):
        if not value:
            raise ScenarioError(f"{flag}: required (or a --scenario that names it)")
    if not isinstance(args.cluster, str):
        raise ScenarioError("--scenario: give the cluster as a preset name or YAML path for the advisor")
    try:
        cluster = load_cluster(args.cluster)
    except ValueError as err:
        raise ScenarioError(f"--cluster {args.cluster[:80]}: {str(err).splitlines()[0]}") from None
    try:
        model = load_model(args.model)
    except ValueError as err:
        raise ScenarioError(f"--model {args.model[:80]}: {str(err).splitlines()[0]}") from None
    gpus = args.gpus or cluster.num_gpus
    if gpus > cluster.num_gpus:
        raise ScenarioError(f"--gpus {gpus}: {cluster.name} has {cluster.num_gpus} GPUs "
                            f"(valid: 1 to {cluster.num_gpus})")
    slo = parse_slo_arg(args.slo) if args.slo is not None else given.get("slo")
    objective: Objective = args.objective or (
        "goodput" if slo is not None and slo.thresholds_s else "throughput_per_gpu")
    if objective == "latency" and args.rate is None and args.concurrency is None:
        raise ScenarioError("--objective latency: give the load it is judged at (--rate or --concurrency)")
    if objective == "goodput" and (slo is None or not slo.thresholds_s):
        raise ScenarioError("--objective goodput: give per-request thresholds, e.g. --slo ttft=2,tpot=0.05")
    scheduler = {key: value for key, value in (("max_num_seqs", args.max_num_seqs),
                                               ("max_batched_tokens", args.max_batched_tokens)) if value}
    if args.trace is not None:
        if args.isl or args.osl:
            raise ScenarioError("--trace: gives the lengths; drop --isl and --osl")
        given |= _trace_lengths(args.trace, model.max_position_embeddings, args.overlong)
    lengths = {"prompt_tokens": args.isl or given.get("prompt_tokens", 1024),
               "output_tokens": args.osl or given.get("output_tokens", 1024)}
    base = {"name": "advice", "model": args.model, "cluster": args.cluster,
            "sim": {"seed": given.get("seed", 0) if args.seed is None else args.seed},
            "scheduler": {"policy": "chunked", **given.get("scheduler", {}), **scheduler},
            "memory": given.get("memory", {}), "moe": given.get("moe", {}),
            "workload": {"num_requests": 1, "rate": 0, **lengths}}
    load = {"rate": args.rate} if args.rate is not None else \
        {"concurrency": args.concurrency} if args.concurrency is not None else None
    stored = model.expert_weight_dtype is not None or model.default_weight_dtype != "bf16"
    weights = _choices("--precision", args.precision or ("checkpoint" if stored else "bf16"),
                       (*get_args(WeightDtype), "checkpoint"))
    if not stored:  # the checkpoint's own format: the same runs as its name
        weights = tuple(dict.fromkeys(model.default_weight_dtype if w == "checkpoint" else w for w in weights))
    return Question(base=base, gpus=gpus, weights=weights,
                    kv_caches=_choices("--kv-cache", args.kv_cache, get_args(KvDtype)), objective=objective,
                    load=load, num_requests=args.num_requests, slo=slo)


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    from tqdm import tqdm

    from splitsim.advisor import (
        VLLM_VERSION,
        advice_json,
        advise,
        candidate_rows,
        explain,
        format_table,
        pareto_figure,
        vllm_serve_flags,
    )
    from splitsim.csvfile import write_csv

    question = question_from_args(args)
    out_dir = args.out or Path("runs") / f"advice-{Path(args.model).name}"
    check_out_path(out_dir)
    with tqdm(unit="candidate", desc="simulating", leave=False, disable=args.quiet or None, file=sys.stderr) as bar:
        advice = advise(question, jobs=args.jobs, on_done=lambda _: bar.update(), ray=args.ray)
    summary = advice_json(advice)

    def write(folder: Path) -> None:
        from splitsim.plots import save_figure  # matplotlib: only when a figure is written

        write_csv(pd.DataFrame(candidate_rows(advice)), folder / "candidates.csv")
        (folder / "advice.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        if advice.ranked:
            save_figure(pareto_figure(advice), folder / "pareto.png")

    replace_folder(out_dir, write)
    print(f"{args.model} on {args.cluster}, {question.gpus} GPUs, objective {question.objective}")
    print(format_table(advice))
    if advice.best is not None:
        print(textwrap.fill(explain(advice, _wires(args.cluster)), width=110))
        print(f"deploy with (vLLM v{VLLM_VERSION}): {vllm_serve_flags(advice.best, args.model)}")
    else:
        print("no candidate meets the SLO, even with one client: relax it, or give more GPUs")
    print(f"wrote {out_dir}/candidates.csv, advice.json and pareto.png")
    if args.json:
        print(json.dumps(summary, separators=(",", ":"), allow_nan=False))
    return 0


def _wires(cluster_ref: str) -> str:
    """The cluster's links in words: `8 GPUs per node on nvlink4-nvswitch, 2 nodes over ib-ndr-rail`."""
    from splitsim.hardware.catalog import load_cluster

    cluster = load_cluster(cluster_ref)
    words = f"{cluster.gpus_per_node} GPUs per node on {cluster.intra_node.name}"
    if cluster.inter_node is not None:
        words += f", {cluster.num_nodes} nodes over {cluster.inter_node.name}"
    return words


def _from_scenario(path: Path, overlong: str) -> dict[str, Any]:
    """What the advisor takes from a scenario file: model, cluster, lengths, scheduler/memory knobs, SLO, seed."""
    from splitsim.models.spec import load_model
    from splitsim.scenario import load_scenario

    scenario = load_scenario(path)
    workload = scenario.workload
    context = load_model(scenario.model).max_position_embeddings
    lengths = _trace_lengths(Path(workload.trace), context, overlong) if workload.trace is not None else {
        "prompt_tokens": _length(workload.prompt_tokens), "output_tokens": _length(workload.output_tokens)}
    scheduler = {k: v for k, v in scenario.scheduler.model_dump(exclude_none=True).items()
                 if k in ("policy", "max_num_seqs", "max_batched_tokens")}
    return {"model": scenario.model, "cluster": scenario.cluster, "slo": scenario.slo, "seed": scenario.sim.seed,
            **lengths, "scheduler": scheduler, "memory": scenario.memory.model_dump(exclude_none=True),
            "moe": scenario.moe.model_dump()}


def _trace_lengths(path: Path, context: int, overlong: str) -> dict[str, Any]:
    """A trace's prompt and output lengths, in file order, as replayed length specs; requests longer than the
    model's `context` refused, truncated or skipped."""
    from splitsim.sim.trace import apply_overlong, read_trace

    try:
        rows, _ = apply_overlong(read_trace(path, num_requests=None), context, overlong)  # type: ignore[arg-type]
    except ScenarioError as err:  # in the flags' words
        raise ScenarioError(str(err).replace(f"workload.overlong = {overlong!r}: ", f"--overlong {overlong}: ")
                            .replace("(valid: refuse", "(--overlong: refuse")) from None
    return {"prompt_tokens": {"dist": "replay", "values": rows.prompt_tokens.tolist()},
            "output_tokens": {"dist": "replay", "values": rows.output_tokens.tolist()}}


def _length(spec: Any) -> Any:
    return spec if isinstance(spec, int) or spec is None else spec.model_dump()
