"""`splitsim advise`: simulate every layout that can run for a model on a cluster, rank them, say why.

Every candidate (`splitsim.candidates`) that survives pruning is a full simulation of the same workload with
the same seed, run in a process pool (`splitsim.workers`), best bound first; a candidate whose closed-form bound
(`sim/bounds.py`) is below the best score found before it is not simulated. Objectives:
- `throughput_per_gpu` (default): steady-state output tokens/s per GPU. With no load given, at saturation: a
  closed loop of as many clients as the candidate can run at once (its batch slots or its KV cache, the
  smaller), three requests each, so the steady state is measured between ramp-up and drain (the summary's
  `steady_state`, docs/metrics.md); with percentile SLOs (`ttft_p99=2`), at the most clients whose run meets
  them (a bisection over 1..saturation, to 2 % of the load). With `--rate` or `--concurrency`, at that load.
- `goodput` (the default when the SLO has per-request thresholds): the most requests/s per GPU meeting every
  threshold, over clients doubling up to saturation, refined around the best.
- `latency`: the lowest mean end-to-end latency at the given load (ties broken by TPOT p50), not per GPU.

Each judged point's steady-state throughput is known to ±2 % (95 % confidence, batch means; the run is
lengthened until it is); search points run three requests per client. Then the best layout's scheduler knobs
are halved and doubled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from splitsim.candidates import Candidate, Considered, consider, prune_reason
from splitsim.errors import ScenarioError
from splitsim.scenario import scenario_from_dict
from splitsim.sim.bounds import Bound, decode_bound
from splitsim.sim.plan import build_plan, resolve_inputs
from splitsim.sim.result import flatten
from splitsim.slo import Slo
from splitsim.workers import Workers, workers_for

Objective = Literal["throughput_per_gpu", "goodput", "latency"]
OBJECTIVES: tuple[str, ...] = ("throughput_per_gpu", "goodput", "latency")
SATURATION_ROUNDS = 3  # requests per client in a closed-loop run: ramp-up, steady state, drain
MAX_ROUNDS = 12  # ... doubled while the steady-state throughput is known less well than PRECISION
PRECISION = 0.02  # relative half-width of its 95 % confidence interval
VLLM_VERSION = "0.11.0"


@dataclass(frozen=True)
class Question:
    """What the user asks: the scenario mapping every candidate shares, and how to judge them."""

    base: dict[str, Any]  # model, cluster, workload lengths (and any scheduler/memory keys), seed
    gpus: int
    weights: tuple[str, ...] = ("bf16",)
    kv_caches: tuple[str, ...] = ("bf16",)
    objective: Objective = "throughput_per_gpu"
    load: dict[str, Any] | None = None  # {"rate": r} or {"concurrency": c}; None: searched (saturation)
    slo: Slo | None = None
    num_requests: int | None = None  # at a given load; default 1,000


@dataclass
class Evaluated:
    candidate: Candidate
    load: dict[str, Any]
    score: float  # higher is better
    metrics: dict[str, Any]  # the run's summary, flattened
    # (clients, output tok/s per user, output tok/s per GPU) of each load its search ran, fewest clients first
    curve: tuple[tuple[float, float, float], ...] = ()


@dataclass
class Advice:
    question: Question
    ranked: list[Evaluated]
    pruned: list[Considered]
    failed: list[tuple[Candidate, str]] = field(default_factory=list)

    @property
    def best(self) -> Evaluated | None:
        """The top candidate, unless even it misses the SLO (then none is advised)."""
        if not self.ranked or self.ranked[0].metrics.get("slo_met") is False:
            return None
        return self.ranked[0]


def advise(question: Question, jobs: int | None = None,
           on_done: Callable[[Candidate], None] | None = None, ray: str | None = None,
           on_workers: Callable[[Workers], None] | None = None) -> Advice:
    """Enumerate, prune, simulate each survivor (in `jobs` processes, default every core; or on the Ray
    cluster at `ray`, e.g. "auto"), rank. `on_workers` sees the workers once they are up."""
    resolved = replace(question, base=resolve_base(question.base))  # what the tasks carry: specs, not paths
    considered = consider(resolved.base, question.gpus, list(question.weights), list(question.kv_caches))
    advice = Advice(question, [], [c for c in considered if c.pruned is not None])
    with workers_for(jobs, ray) as workers:
        if on_workers is not None:
            on_workers(workers)
        _simulate([c.candidate for c in considered if c.pruned is None], advice, resolved, workers, on_done)
        if advice.best is not None:  # then the scheduler knobs the engine chose, halved and doubled around the best
            variants = [Considered(v, prune_reason(resolved.base, v)) for v in knob_variants(question, advice.best)]
            advice.pruned += [v for v in variants if v.pruned is not None]
            _simulate([v.candidate for v in variants if v.pruned is None], advice, resolved, workers, on_done)
    return advice


def resolve_base(base: dict[str, Any]) -> dict[str, Any]:
    """The question's scenario mapping with the model's and cluster's specs in place of their names or paths."""
    resolved = resolve_inputs(scenario_from_dict(base))
    return {**base, "model": resolved.model, "cluster": resolved.cluster}


def _simulate(candidates: list[Candidate], advice: Advice, question: Question, workers: Workers,
              on_done: Callable[[Candidate], None] | None) -> None:
    """Simulate `candidates` in the order of their bound (sim/bounds.py), best first, skipping each whose bound
    is below the best score found before it. That rule is sequential, so the outcome does not depend on
    the workers: they run candidates ahead of it while earlier ones are still running, and a result the rule
    would have skipped is dropped. `question` is the advice's, resolved."""
    limits = {c: candidate_limit(question, c) for c in candidates}
    order = sorted(candidates, key=lambda c: (-limits[c][0], c))
    start = advice.ranked[0] if advice.ranked else None
    outcomes: dict[Candidate, Evaluated | str] = {}

    def walk() -> Iterator[tuple[Candidate, Evaluated | None]]:
        """The sequential rule over the outcomes so far: each candidate with the best before it, until one
        that is neither skipped nor done."""
        best = start
        for candidate in order:
            yield candidate, best
            if _skipped(limits[candidate][0], best):
                continue
            outcome = outcomes.get(candidate)
            if outcome is None:
                return
            if isinstance(outcome, Evaluated) and outcome.score > _score(best):
                best = outcome

    queue = list(order)
    pending: dict[Future[Any], Candidate] = {}
    while queue or pending:
        settled = list(walk())[-1][1]  # the best before the first candidate not yet decided
        while queue and len(pending) < workers.size:
            candidate = queue.pop(0)
            if not _skipped(limits[candidate][0], settled):
                pending[workers.submit(_evaluate_or_error, (question, candidate))] = candidate
            elif on_done is not None:
                on_done(candidate)
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            candidate = pending.pop(future)
            outcomes[candidate] = future.result()
            if on_done is not None:
                on_done(candidate)
    for candidate, best in walk():
        limit, bound = limits[candidate]
        outcome = outcomes.get(candidate)
        if _skipped(limit, best) or outcome is None:
            advice.pruned.append(Considered(candidate, bound_reason(question, limit, bound, best)))
        elif isinstance(outcome, str):
            advice.failed.append((candidate, outcome))
        else:
            advice.ranked.append(outcome)
    advice.ranked.sort(key=lambda e: (-e.score, e.candidate))


def _score(evaluated: Evaluated | None) -> float:
    return -math.inf if evaluated is None else evaluated.score


def _skipped(limit: float, best: Evaluated | None) -> bool:
    """A candidate is not simulated when its bound is below the best so far, or says it cannot meet the SLO."""
    return limit == -math.inf or limit < _score(best)


def candidate_limit(question: Question, candidate: Candidate) -> tuple[float, Bound]:
    """The best score the candidate could get (sim/bounds.py), and the bound it comes from. Under the
    throughput objective a percentile TPOT or ITL limit (p50 or above: the steady state's batches) caps the
    batch; a candidate no batch of which meets it scores 0 at best, and is skipped even against a best of 0."""
    data = candidate.scenario(question.base)
    plan = build_plan(scenario_from_dict(data))
    workload = question.base.get("workload", {})
    step_limit = math.inf
    if question.objective == "throughput_per_gpu" and question.slo is not None:
        step_limit = min((p.limit_s for p in question.slo.percentiles
                          if p.metric in ("tpot", "itl") and p.percentile >= 50), default=math.inf)
    output_tokens = _shortest(workload.get("output_tokens", 1024))
    bound = decode_bound(plan.pool, _shortest(workload.get("prompt_tokens", 1024)), output_tokens, step_limit)
    limit = bound.limits(question.objective, output_tokens)
    # A request's TPOT is the mean of its gaps, each at least the quickest decode round: above a per-request
    # threshold, no request is good and goodput is 0 at every load.
    threshold = math.inf if question.slo is None else question.slo.thresholds_s.get("tpot", math.inf)
    if question.objective == "goodput" and output_tokens > 1 and bound.step_s > threshold:
        return -math.inf, bound
    return (-math.inf if limit == 0 and step_limit < math.inf else limit), bound


def bound_reason(question: Question, limit: float, bound: Bound, best: Evaluated | None) -> str:
    """Why a candidate was not simulated: its bound against the best before it, in the objective's terms."""
    if limit == -math.inf:
        return (f"bound: no batch meets the SLO's time per output token: one decode step takes at least "
                f"{bound.step_s * 1e3:.1f} ms")
    label = best.candidate.label if best is not None else ""
    match question.objective:
        case "latency":
            best_e2e = best.metrics["e2e_s.mean"] if best is not None else math.nan
            return (f"bound: E2E at least {bound.e2e_s:.2f} s ({bound.decode_steps} decode steps of at least "
                    f"{bound.step_s * 1e3:.1f} ms), above {label}'s mean {best_e2e:.2f} s")
        case "goodput":
            return f"bound: at most {limit:.3g} requests/s per GPU, below {label}'s {_score(best):.3g}"
    return (f"bound: at most {limit:.0f} output tok/s per GPU from its decode steps alone, below {label}'s "
            f"{_score(best):.0f}")


def _shortest(spec: Any) -> int:
    """The fewest tokens a workload length spec gives: the number, a uniform's low, the shortest replayed, 1 for
    a log-normal."""
    if not isinstance(spec, dict):
        return int(spec)
    match spec.get("dist"):
        case "uniform":
            return int(spec["low"])
        case "replay":
            return int(min(spec["values"]))
    return 1


def knob_variants(question: Question, best: Evaluated) -> list[Candidate]:
    """The best layout with max_num_seqs, then max_batched_tokens, halved and doubled (knobs the question
    pins stay as they are)."""
    scheduler = question.base.get("scheduler", {})
    seqs, tokens = int(best.metrics["max_num_seqs"]), int(best.metrics["max_batched_tokens"])
    variants = []
    if "max_num_seqs" not in scheduler:
        variants += [replace(best.candidate, max_num_seqs=n, max_batched_tokens=tokens) for n in (seqs // 2, seqs * 2)
                     if n >= 1]
    if "max_batched_tokens" not in scheduler:
        variants += [replace(best.candidate, max_num_seqs=seqs, max_batched_tokens=n) for n in (tokens // 2, tokens * 2)
                     if n >= 1]
    return variants


def _evaluate_or_error(task: tuple[Question, Candidate]) -> Evaluated | str:
    """A candidate's result, or the one-line reason the simulator refused its workload."""
    try:
        return evaluate(*task)
    except ScenarioError as err:
        return str(err)


def evaluate(question: Question, candidate: Candidate) -> Evaluated:
    """The candidate judged by the question's objective, at the load the objective asks for."""
    data = candidate.scenario(question.base)
    if question.load is not None:
        return _judge(question, candidate, question.load, _run_at(question, data, question.load))
    saturation = saturating_clients(data)
    if question.objective == "goodput":
        return _best_goodput(question, candidate, data, saturation)
    if question.slo is not None and question.slo.percentiles:
        return _highest_meeting(question, candidate, data, saturation)
    load = {"concurrency": saturation}
    return _judge(question, candidate, load, _run_at(question, data, load))


def _run_at(question: Question, data: dict[str, Any], load: dict[str, Any], precise: bool = False,
            shorter: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a run at `load`: a closed loop of C clients sends SATURATION_ROUNDS·C requests (ramp-up,
    steady state, drain); `precise` doubles that while the steady-state throughput's 95 % confidence interval
    is wider than ±PRECISION, up to MAX_ROUNDS·C, going on from `shorter` (this load's summary at fewer rounds:
    runs are seeded, so it is what that run would give again). A rate sends `num_requests`. The summary gains
    `steady_state_precision` (the interval's relative half-width) and `rounds`."""
    from splitsim.api import simulate  # in the worker process

    clients = load.get("concurrency")
    lengths = {key: value for key, value in question.base.get("workload", {}).items()
               if key in ("prompt_tokens", "output_tokens")}
    rounds = SATURATION_ROUNDS if shorter is None or not clients else 2 * shorter["rounds"]
    while True:
        num_requests = rounds * int(clients) if clients else question.num_requests or 1000
        run = {**data, "workload": {**lengths, "num_requests": num_requests, **load}}
        if question.slo is not None:
            run["slo"] = question.slo.as_dict()
        result = simulate(scenario_from_dict(run), error_bars=False)
        summary: dict[str, Any] = result.summary
        precision = steady_precision(result.requests, summary["steady_state"])
        summary["steady_state_precision"] = precision
        summary["rounds"] = rounds if clients else None
        if not precise or not clients or (precision is not None and precision <= PRECISION) \
                or rounds >= MAX_ROUNDS:
            return summary
        rounds *= 2


PRECISION_BATCHES = 10


def steady_precision(requests: Any, steady: dict[str, Any] | None) -> float | None:
    """The relative half-width of a 95 % confidence interval on the steady-state output throughput, by batch
    means: the window cut into PRECISION_BATCHES equal parts, each request's tokens spread evenly from its
    first token to its finish (its TPOT) and counted in the parts they fall in; Student's t with 9 degrees of
    freedom (2.262). Finish counts would not do: a closed loop of equal requests finishes them in waves.
    None without a steady state."""
    if steady is None:
        return None
    start, end = steady["start_s"], steady["end_s"]
    edges = np.linspace(start, end, PRECISION_BATCHES + 1)
    first, finish = requests["first_token_s"].to_numpy(), requests["finish_s"].to_numpy()
    later = requests["output_tokens"].to_numpy() - 1.0  # tokens after the first, spread over (first, finish]
    keep = (finish > start) & (first < end)
    first, finish, later = first[keep], finish[keep], later[keep]
    rate = np.divide(later, finish - first, out=np.zeros_like(later), where=finish > first)
    overlap = np.clip(np.minimum(finish[:, None], edges[None, 1:]) - np.maximum(first[:, None], edges[None, :-1]),
                      0.0, None)
    tokens = (overlap * rate[:, None]).sum(axis=0)
    tokens += np.histogram(first, bins=edges)[0]  # each first token where it came
    if tokens.mean() <= 0:
        return None
    return float(2.262 * tokens.std(ddof=1) / np.sqrt(PRECISION_BATCHES) / tokens.mean())


STEADY_PERCENTILES = {50.0: "p50", 90.0: "p90", 99.0: "p99"}  # what the summary's steady_state keeps


def slo_values(summary: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Each percentile limit's (value, limit) as a load is judged: TTFT and TPOT percentiles over the steady
    state when the run has one (a closed loop starts with every client's request at once: that burst is not
    the load), else, and for ITL and E2E, over the whole run."""
    steady = summary.get("steady_state")
    values = {}
    for key, check in summary.get("slo", {}).get("percentiles", {}).items():
        metric, _, q = key.partition("_p")
        column = STEADY_PERCENTILES.get(float(q))
        value = check["value_s"]
        if steady and metric in ("ttft", "tpot") and column and steady[f"{metric}_s"][column] is not None:
            value = steady[f"{metric}_s"][column]
        values[key] = (value or 0.0, check["limit_s"])
    return values


def _meets(summary: dict[str, Any]) -> bool:
    return all(value <= limit for value, limit in slo_values(summary).values())


def _excess(summary: dict[str, Any]) -> float:
    """The largest value/limit − 1 over the percentile limits: ≤ 0 meets them all."""
    return max(value / limit - 1.0 for value, limit in slo_values(summary).values())


def _highest_meeting(question: Question, candidate: Candidate, data: dict[str, Any], saturation: int) -> Evaluated:
    """Throughput at the most clients whose run meets every percentile SLO, to 2 % of the load; a candidate
    that misses them even with one client scores 0. Latency grows with clients: the most is bracketed from
    below (16 clients, ×4 at a time up to saturation: runs at high load are the long ones), then the bracket
    shrinks by false position on the worst limit's excess (Illinois variant: a side kept twice has its
    weight halved), bisecting where interpolation would not shrink it."""
    runs: dict[int, dict[str, Any]] = {}

    def excess(clients: int) -> float:
        if clients not in runs:
            runs[clients] = _run_at(question, data, {"concurrency": clients})
        return _excess(runs[clients])

    low, f_low, high, f_high = 0, 0.0, 0, 0.0
    clients = min(16, saturation)
    while True:
        f = excess(clients)
        if f > 0:
            high, f_high = clients, f
            break
        low, f_low = clients, f
        if clients == saturation:
            break
        clients = min(clients * 4, saturation)
    if high and not low:
        if high == 1 or excess(1) > 0:
            judged = _judge(question, candidate, {"concurrency": 1}, runs[1])
            judged.score = 0.0
            judged.metrics["slo_met"] = False
            judged.curve = _curve(question, runs)
            return judged
        low, f_low = 1, excess(1)
    if high:
        side = 0
        while high - low > max(1, low // 50):  # to 2 % of the load
            guess = low + (high - low) * f_low / (f_low - f_high)  # where the excess line crosses 0
            mid = min(max(round(guess), low + 1), high - 1)
            f_mid = excess(mid)
            if f_mid <= 0:
                low, f_low = mid, f_mid
                if side == -1:
                    f_high /= 2
                side = -1
            else:
                high, f_high = mid, f_mid
                if side == 1:
                    f_low /= 2
                side = 1
    judged = _judge(question, candidate, {"concurrency": low}, runs[low])
    judged.metrics["slo_met"] = True
    judged.metrics["slo_missed_at_concurrency"] = high or None
    judged.metrics["load_search_runs"] = len(runs)
    judged.curve = _curve(question, runs)
    return judged


def _best_goodput(question: Question, candidate: Candidate, data: dict[str, Any], saturation: int) -> Evaluated:
    """The most requests/s meeting every per-request threshold, over clients doubling up to saturation, then
    halfway to each neighbour of the best."""
    runs: dict[int, dict[str, Any]] = {}

    def goodput(clients: int) -> float:
        if clients not in runs:
            runs[clients] = _run_at(question, data, {"concurrency": clients})
        return float(runs[clients]["goodput_requests_per_s"])

    grid = sorted({min(2**i, saturation) for i in range(saturation.bit_length() + 1)})
    best = max(grid, key=goodput)
    for neighbour in (best // 2, min(best * 2, saturation)):
        halfway = (best + neighbour) // 2
        if halfway >= 1:  # one client is already a grid point: nothing lies below it
            goodput(halfway)
    best = max(runs, key=goodput)
    judged = _judge(question, candidate, {"concurrency": best}, runs[best])
    judged.metrics["load_search_runs"] = len(runs)
    judged.curve = _curve(question, runs)
    return judged


def _curve(question: Question, runs: dict[int, dict[str, Any]]) -> tuple[tuple[float, float, float], ...]:
    """The loads a search ran as (clients, output tok/s per user, output tok/s per GPU), from each run's steady
    state where it has one (1 / TPOT p50, output throughput / GPUs), fewest clients first."""
    points = []
    for clients, summary in sorted(runs.items()):
        point = _point(question, summary)
        if point is not None:
            points.append((float(clients), *point))
    return tuple(points)


def _point(question: Question, summary: dict[str, Any]) -> tuple[float, float] | None:
    """(output tok/s per user, per GPU) of a run, from its steady state where it has one."""
    steady = summary.get("steady_state")
    tpot = (steady or {}).get("tpot_s", {}).get("p50") or summary["tpot_s"]["p50"]
    return (1.0 / tpot, _tokens_per_gpu(question, summary)) if tpot else None


def _tokens_per_gpu(question: Question, summary: dict[str, Any]) -> float:
    """Output tok/s per GPU: the steady state's where the run has one, else the whole run's."""
    steady = summary.get("steady_state")
    tokens_per_s = steady["output_throughput_tokens_per_s"] if steady else summary["throughput_tokens_per_s"]
    return float(tokens_per_s) / question.gpus


def _judge(question: Question, candidate: Candidate, load: dict[str, Any], summary: dict[str, Any]) -> Evaluated:
    """The candidate at its chosen load. The search's run decided whether the load meets the SLO; the figures
    come from a run long enough that the steady-state throughput is known to ±PRECISION (the same run when
    it already was)."""
    meets = _meets(summary)
    precision = summary.get("steady_state_precision")
    rerun = "concurrency" in load and (precision is None or precision > PRECISION)
    if rerun:
        data = candidate.scenario(question.base)
        longer = summary.get("rounds") is not None and summary["rounds"] < MAX_ROUNDS
        summary = {**_run_at(question, data, load, precise=True, shorter=summary if longer else None),
                   "slo": summary.get("slo", {})}
    metrics = flatten({k: v for k, v in summary.items() if k != "scenario"})
    metrics["precision_rerun"] = rerun
    metrics["steady_state_found"] = summary["steady_state"] is not None
    metrics["max_num_seqs"] = summary["scenario"]["scheduler"]["max_num_seqs"]
    metrics["max_batched_tokens"] = summary["scenario"]["scheduler"]["max_batched_tokens"]
    metrics["throughput_per_gpu"] = _tokens_per_gpu(question, summary)
    if question.slo is not None and "goodput_requests_per_s" in summary:
        metrics["goodput_per_gpu"] = summary["goodput_requests_per_s"] / question.gpus
    match question.objective:
        case "latency":
            score = -(summary["e2e_s"]["mean"] + 1e-9 * summary["tpot_s"]["p50"])
        case "goodput":
            score = metrics["goodput_per_gpu"]
        case _:
            score = metrics["throughput_per_gpu"] if meets else 0.0
    point = _point(question, summary)
    clients = float(load.get("concurrency") or 0.0)
    return Evaluated(candidate, load, score, metrics, () if point is None else ((clients, *point),))


def saturating_clients(data: dict[str, Any]) -> int:
    """Clients that keep every batch slot of every replica busy: per replica the smaller of its sequences
    in flight (max_num_seqs in each of its PP slots) and what its KV cache holds at the workload's lengths."""
    pool = build_plan(scenario_from_dict(data)).pool
    lengths = data.get("workload", {})
    tokens = _typical(lengths.get("prompt_tokens", 1024)) + _typical(lengths.get("output_tokens", 1024))
    per_replica = min(pool.scheduler.max_num_seqs * pool.pp, math.floor(pool.max_concurrency(tokens)))
    return max(1, per_replica) * pool.dp


def _typical(spec: Any) -> int:
    """A request length of a workload spec, for sizing a load: the number, or a distribution's mean (capped)."""
    if isinstance(spec, dict):
        if spec.get("dist") == "uniform":
            return int((spec["low"] + spec["high"]) // 2)
        if spec.get("dist") == "replay":
            return int(np.mean(spec["values"]))
        mean = spec["median"] * math.exp(spec["sigma"] ** 2 / 2)
        return int(min(mean, spec.get("max") or mean))
    return int(spec)


def vllm_serve_flags(evaluated: Evaluated, model: str) -> str:
    """The `vllm serve` command line (vLLM v0.11.0 flags) that deploys this candidate."""
    c, m = evaluated.candidate, evaluated.metrics
    from splitsim.models.spec import hub_id, load_model

    flags = [f"vllm serve {hub_id(model)}", f"--tensor-parallel-size {c.tp}", f"--pipeline-parallel-size {c.pp}",
             f"--data-parallel-size {c.dp}", f"--max-num-seqs {m['max_num_seqs']}",
             f"--max-num-batched-tokens {m['max_batched_tokens']}"]
    if c.ep > 1:  # vLLM spreads the experts over all tp × dp GPUs
        flags.append("--enable-expert-parallel")
    separate = c.ep == 1 and c.dp > 1 and load_model(model).moe is not None
    if separate:  # one server's DP would run the MoE layers across its replicas, in lockstep
        flags[3] = "--data-parallel-size 1"
    if c.weights == "fp8":
        flags.append("--quantization fp8")
    if c.kv_cache == "fp8":
        flags.append("--kv-cache-dtype fp8")
    if separate:
        flags.append(f"# on each of {c.dp} servers behind a load balancer")
    return " ".join(flags)


# ---------------------------------------------------------------------------------------------- reporting

def candidate_rows(advice: Advice) -> list[dict[str, Any]]:
    """One row per candidate: ranked ones first (rank, load, every summary metric), then failed and pruned."""
    rows: list[dict[str, Any]] = []
    for rank, e in enumerate(advice.ranked, 1):
        load = {f"load.{k}": v for k, v in e.load.items()}
        rows.append({"rank": rank, **e.candidate.as_row(), "status": "evaluated", "reason": "", **load, **e.metrics})
    for candidate, reason in advice.failed:
        rows.append({"rank": None, **candidate.as_row(), "status": "failed", "reason": reason})
    for considered in advice.pruned:
        rows.append({"rank": None, **considered.candidate.as_row(), "status": "pruned", "reason": considered.pruned})
    return rows


def advice_json(advice: Advice) -> dict[str, Any]:
    best = advice.best
    out: dict[str, Any] = {"objective": advice.question.objective, "best": None,
                           "candidates": {"evaluated": len(advice.ranked), "pruned": len(advice.pruned),
                                          "failed": len(advice.failed)}}
    if best is not None:
        c = best.candidate
        out["best"] = {"tp": c.tp, "pp": c.pp, "dp": c.dp, "ep": c.ep, "order": c.order,
                       "precision": {"weights": c.weights, "kv_cache": c.kv_cache},
                       "max_num_seqs": best.metrics["max_num_seqs"],
                       "max_batched_tokens": best.metrics["max_batched_tokens"], "load": best.load,
                       "metrics": {k: best.metrics[k] for k in SHOWN if k in best.metrics},
                       "curve": [{"concurrency": clients, "output_tokens_per_s_per_user": user,
                                  "output_tokens_per_s_per_gpu": gpu} for clients, user, gpu in best.curve]}
    return out


SHOWN = ("throughput_per_gpu", "steady_state.output_throughput_tokens_per_s", "throughput_tokens_per_s",
         "ttft_s.p50", "ttft_s.p99", "tpot_s.p50", "tpot_s.p99", "e2e_s.mean", "steady_state_found")


def format_table(advice: Advice, limit: int = 15) -> str:
    header = (f"{'#':>3}  {'layout':34} {'load':>14} {'tok/s/GPU':>10} {'TTFT p50':>9} {'TPOT p50':>9} "
              f"{'E2E mean':>9}")
    lines = [header]
    for rank, e in enumerate(advice.ranked[:limit], 1):
        m = e.metrics
        load = ", ".join(f"{k} {v:g}" for k, v in e.load.items())
        steady = " (misses the SLO at 1 client)" if m.get("slo_met") is False else \
            "" if m["steady_state_found"] else " (no steady state)"
        lines.append(f"{rank:>3}  {e.candidate.label:34} {load:>14} {m['throughput_per_gpu']:>10.1f} "
                     f"{m['ttft_s.p50'] * 1e3:>7.0f}ms {m['tpot_s.p50'] * 1e3:>7.1f}ms "
                     f"{m['e2e_s.mean']:>8.2f}s{steady}")
    if len(advice.ranked) > limit:
        lines.append(f"     … {len(advice.ranked) - limit} more in candidates.csv")
    lines.append(f"{len(advice.ranked)} simulated, {len(advice.pruned)} pruned, {len(advice.failed)} refused "
                 "their workload (reasons in candidates.csv)")
    return "\n".join(lines)


CATEGORY_WORDS = {"compute": "computing", "tp_comm": "in TP all-reduces", "pp_comm": "in PP hand-offs",
                  "ep_comm": "in expert all-to-alls", "bubble": "in pipeline bubbles", "idle": "idle"}


def explain(advice: Advice, wires: str) -> str:
    """One paragraph: why the best won, from its GPU-time breakdown and the wires, against the runner-up (the
    best other layout: a variant of the best's scheduler knobs is not a rival); every number is a column of
    candidates.csv."""
    best = advice.best
    if best is None:
        return ""
    m, c = best.metrics, best.candidate
    objective = advice.question.objective
    figure = {"latency": f"a mean E2E of {m['e2e_s.mean']:.2f} s",
              "goodput": f"{m.get('goodput_per_gpu', 0.0):.3g} good requests/s per GPU"}.get(
        objective, f"{m['throughput_per_gpu']:.0f} output tok/s per GPU")
    load = ", ".join(f"{k} {v:g}" for k, v in best.load.items())
    parts = [f"{c.label} gives {figure} at {load}."]
    parts.append(f"Its GPUs spend {_breakdown(m)} ({wires}).")
    layout = _layout(c)
    others = [e for e in advice.ranked if _layout(e.candidate) != layout]  # knob variants are not rivals
    if others:
        runner = others[0]
        r = runner.metrics
        gap = (best.score - runner.score) / abs(best.score) if best.score else 0.0
        worst = max(CATEGORY_WORDS, key=lambda k: r.get(f"gpu_time_fraction.{k}", 0.0)
                    - m.get(f"gpu_time_fraction.{k}", 0.0))
        delta = r.get(f"gpu_time_fraction.{worst}", 0.0) - m.get(f"gpu_time_fraction.{worst}", 0.0)
        parts.append(f"The runner-up, {runner.candidate.label}, scores {gap:.1%} lower: its GPUs spend "
                     f"{r.get(f'gpu_time_fraction.{worst}', 0.0):.0%} {CATEGORY_WORDS[worst]} "
                     f"({delta:+.0%} against the best).")
    return " ".join(parts)


def _layout(candidate: Candidate) -> tuple[Any, ...]:
    return candidate.tp, candidate.pp, candidate.dp, candidate.order, candidate.weights, candidate.kv_cache


def _breakdown(metrics: dict[str, Any]) -> str:
    shares = [(metrics.get(f"gpu_time_fraction.{k}", 0.0), words) for k, words in CATEGORY_WORDS.items()]
    shown = [f"{share:.0%} {words}" for share, words in sorted(shares, reverse=True) if share >= 0.005]
    return ", ".join(shown) or "no time"


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For each (x, y), whether no other point is at least as good in both and better in one (higher is
    better on both axes)."""
    return [not any((ox >= x and oy >= y) and (ox > x or oy > y) for ox, oy in points) for x, y in points]


def pareto_figure(advice: Advice) -> Any:
    """Output tok/s per GPU against tok/s per user (1 / TPOT p50): each simulated layout's curve over the loads its
    search ran (as AIConfigurator draws its Pareto), the front across every point, the SLO's TPOT limits as
    lines, the best labelled at its chosen load. Built without pyplot (see splitsim.plots)."""
    from matplotlib.figure import Figure

    from splitsim.plots import any_text

    ranked = [e for e in advice.ranked if e.curve]
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    points = [(x, y) for e in ranked for _, x, y in e.curve]
    for i, e in enumerate(ranked):
        xs, ys = [p[1] for p in e.curve], [p[2] for p in e.curve]
        ax.plot(xs, ys, ".-", color="#9aa7b1", lw=0.8, ms=4, alpha=0.8, label="a layout over its loads" if not i
                else None)
    front = pareto_front(points)
    edge = sorted(p for p, on in zip(points, front) if on)
    ax.plot([p[0] for p in edge], [p[1] for p in edge], "o-", color="#2b7bba", label="Pareto front")
    slo = advice.question.slo
    limits = [] if slo is None else [(f"tpot_p{p.percentile:g}", p.limit_s) for p in slo.percentiles
                                     if p.metric == "tpot"] + [("tpot", t) for m, t in slo.thresholds_s.items()
                                                               if m == "tpot"]
    for name, limit in limits:
        ax.axvline(1.0 / limit, color="#f0ad4e", ls="--", lw=1, label=f"SLO {name} ≤ {limit * 1e3:g} ms")
    best = advice.best
    tpot = None if best is None else best.metrics.get("steady_state.tpot_s.p50") or best.metrics.get("tpot_s.p50")
    if best is not None and tpot:
        x, y = 1.0 / tpot, best.metrics["throughput_per_gpu"]
        ax.scatter([x], [y], color="#d9534f", s=70, zorder=3, label="best")
        ax.annotate(best.candidate.label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("output tokens/s per user (1 / TPOT p50, steady state)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(f"{len(ranked)} layouts over {len(points)} loads, objective {advice.question.objective}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with any_text():
        fig.tight_layout()
    return fig
