"""The layouts an advisor considers, derived from the model and the cluster, each kept or pruned with its reason.

A candidate uses exactly `gpus` GPUs: every TP × PP × DP that multiplies to it (for a mixture of experts, with its
experts split by TP and, where DP is 1, spread whole over the TP group: EP = TP), with each placement order
that places it differently (`tp-dp-pp` differs from `tp-pp-dp` only when PP and DP are both > 1 and the GPUs
span nodes), for each weight and KV-cache precision asked. A candidate is pruned when the simulator would
refuse it, with its one-line error as the reason: heads TP does not divide, a TP group that neither fits
evenly in a node nor fills whole nodes, layers PP cannot fill, weights or a request that do not fit, FP8 on
a GPU without it. A layout refused only because the activations of the scheduler's largest batch do not fit
beside its weights is tried again with the knobs the question leaves free (`max_batched_tokens`,
`max_num_seqs`) halved together, down to `MIN_BATCHED_TOKENS` and `MIN_NUM_SEQS`, as a user shrinks vLLM's
`--max-num-batched-tokens` and `--max-num-seqs` when its memory profile fails; it is kept with the largest that fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from splitsim.errors import ActivationsDoNotFit, ScenarioError
from splitsim.hardware.catalog import load_cluster
from splitsim.models.spec import load_model
from splitsim.scenario import scenario_from_dict
from splitsim.sim.plan import build_plan

ORDERS = ("tp-pp-dp", "tp-dp-pp")
MIN_BATCHED_TOKENS = 512  # below this a prompt chunk's GEMMs leave the GPU idle: not a layout worth saving
MIN_NUM_SEQS = 16


@dataclass(frozen=True, order=True)
class Candidate:
    tp: int
    pp: int
    dp: int
    order: str
    weights: str
    kv_cache: str
    max_num_seqs: int = 0  # 0: as the scenario (or the engine's default) has it
    max_batched_tokens: int = 0
    ep: int = 1  # expert parallelism (mixture-of-experts models): the experts spread over tp (or tp × dp) GPUs

    @property
    def label(self) -> str:
        order = "" if self.order == ORDERS[0] else f" {self.order}"
        experts = f"×EP{self.ep}" if self.ep > 1 else ""
        knobs = "".join(f" {name}={value}" for name, value in (("seqs", self.max_num_seqs),
                                                                ("tokens", self.max_batched_tokens)) if value)
        return f"TP{self.tp}×PP{self.pp}×DP{self.dp}{experts}{order} {self.weights}/kv {self.kv_cache}{knobs}"

    def scenario(self, base: dict[str, Any]) -> dict[str, Any]:
        """`base` (a scenario mapping) with this candidate's layout, precisions and scheduler knobs."""
        scheduler = dict(base.get("scheduler", {}))
        for name in ("max_num_seqs", "max_batched_tokens"):
            if getattr(self, name):
                scheduler[name] = getattr(self, name)
        return {**base, "parallel": {"tp": self.tp, "pp": self.pp, "dp": self.dp, "ep": self.ep, "order": self.order},
                "precision": {"weights": None if self.weights == CHECKPOINT else self.weights,
                              "kv_cache": self.kv_cache},
                "scheduler": scheduler}

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        del row["max_num_seqs"], row["max_batched_tokens"]  # the run's own values are in the row
        return row


@dataclass(frozen=True)
class Considered:
    candidate: Candidate
    pruned: str | None  # the reason it is not simulated, or None


CHECKPOINT = "checkpoint"  # a candidate's weights as the model's config.json stores them


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layouts(gpus: int, multi_node: bool) -> list[tuple[int, int, int, str]]:
    """Every (tp, pp, dp, order) with tp·pp·dp = gpus, an order only where it changes the placement: the
    second order puts different groups on each node, so it differs only with PP and DP > 1 over nodes."""
    found = []
    for tp in divisors(gpus):
        for pp in divisors(gpus // tp):
            dp = gpus // (tp * pp)
            for order in ORDERS if pp > 1 and dp > 1 and multi_node else ORDERS[:1]:
                found.append((tp, pp, dp, order))
    return found


def consider(base: dict[str, Any], gpus: int, weights: list[str], kv_caches: list[str]) -> list[Considered]:
    """Every candidate for the scenario mapping `base` (model, cluster, workload…), kept or pruned."""
    considered = []
    multi_node = gpus > load_cluster(base["cluster"]).gpus_per_node
    experts = load_model(base["model"]).moe is not None
    for tp, pp, dp, order in layouts(gpus, multi_node):
        for ep in _expert_splits(experts, tp, pp, dp):
            for weight in weights:
                for kv in kv_caches:
                    considered.append(_with_room(base, Candidate(tp, pp, dp, order, weight, kv, ep=ep)))
    return considered


def _with_room(base: dict[str, Any], candidate: Candidate) -> Considered:
    """`candidate` kept or pruned; refused only for its batch's activations, retried with the free scheduler knobs
    halved together until it fits or they reach their floors (then pruned with the first refusal)."""
    refusal = _refusal(base, candidate)
    if not isinstance(refusal, ActivationsDoNotFit):
        return Considered(candidate, None if refusal is None else str(refusal))
    fixed = base.get("scheduler") or {}
    tokens, seqs = refusal.max_batched_tokens, refusal.max_num_seqs
    while True:  # smaller batches free activation memory, which may also make room for a request's KV
        smaller = (tokens if "max_batched_tokens" in fixed else tokens // 2,
                   seqs if "max_num_seqs" in fixed else seqs // 2)
        if smaller == (tokens, seqs) or smaller[0] < MIN_BATCHED_TOKENS or smaller[1] < MIN_NUM_SEQS:
            return Considered(candidate, str(refusal))
        tokens, seqs = smaller
        tried = replace(candidate, max_batched_tokens=tokens, max_num_seqs=seqs)
        if _refusal(base, tried) is None:
            return Considered(tried, None)


def _expert_splits(experts: bool, tp: int, pp: int, dp: int) -> tuple[int, ...]:
    """A mixture of experts' EP degrees worth trying: its experts split by TP (1), spread whole over one TP group
    (tp, with one replica), or over every replica's GPUs with attention data-parallel (tp × dp, one stage:
    vLLM's `--data-parallel-size` with `--enable-expert-parallel`)."""
    if not experts:
        return (1,)
    if dp == 1:
        return (1, tp) if tp > 1 else (1,)
    return (1, tp * dp) if pp == 1 else (1,)


def prune_reason(base: dict[str, Any], candidate: Candidate) -> str | None:
    """The simulator's one-line refusal of this candidate, or None if it can run: it must hold its weights and
    the longest request (every one of replayed lengths: a trace's)."""
    refusal = _refusal(base, candidate)
    return None if refusal is None else str(refusal)


def _refusal(base: dict[str, Any], candidate: Candidate) -> ScenarioError | None:
    from splitsim.api import make_requests

    workload = base.get("workload", {})
    replayed = [len(spec["values"]) for spec in (workload.get("prompt_tokens"), workload.get("output_tokens"))
                if isinstance(spec, dict) and spec.get("dist") == "replay"]
    if replayed:
        base = {**base, "workload": {**workload, "num_requests": max(replayed)}}
    try:
        scenario = scenario_from_dict(candidate.scenario(base))
        plan = build_plan(scenario)
        plan.check_requests(make_requests(scenario, plan, None))  # one request must fit the KV cache
    except ScenarioError as err:
        return err
    return None
