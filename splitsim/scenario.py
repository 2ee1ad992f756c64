"""The scenario: one frozen, strict description of a run, read from YAML with `--set` overrides.

Checks run in the order schema → layout → memory: the schema here, layout and memory in `sim.plan`.
Every failure becomes one `ScenarioError` line naming the field, the value and what would be valid.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from splitsim.errors import ScenarioError
from splitsim.files import cut, parse_yaml_text, read_yaml_file
from splitsim.hardware.cluster import ClusterSpec
from splitsim.lengths import Lengths, Overlong
from splitsim.models.precision import KvDtype, WeightDtype
from splitsim.models.spec import ModelSpec
from splitsim.slo import Slo

# The schema's version, in every summary.json: a change that gives a file another meaning, or refuses one that
# was valid, raises it (1: the first versioned schema, with deployment and router).
SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Parallel(_Strict):
    tp: StrictInt = Field(1, ge=1, description="tensor-parallel degree: GPUs that split every layer")
    pp: StrictInt = Field(1, ge=1, description="pipeline stages: contiguous groups of layers")
    dp: StrictInt = Field(1, ge=1, description="replicas behind the router")
    ep: StrictInt = Field(1, ge=1, description="expert parallelism (mixture-of-experts models): the experts spread "
                                                "whole over this many ranks. A divisor of tp: within each replica's "
                                                "TP group; else a divisor of tp×dp: over every replica's GPUs, "
                                                "attention data-parallel (vLLM's DP+EP), each expert split tp×dp/ep "
                                                "ways; 1: every expert split by TP")
    order: Literal["tp-pp-dp", "tp-dp-pp"] = Field(
        "tp-pp-dp",
        description="placement, innermost first: tp-pp-dp packs each replica onto adjacent GPUs; "
        "tp-dp-pp puts the same stage of every replica side by side",
    )

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp


LOAD_KINDS = ("rate", "concurrency", "trace")
_COMPANIONS = {"rate": ("burstiness",), "concurrency": (), "trace": ("time_scale",)}


class Workload(_Strict):
    """Which requests arrive when: exactly one load kind (`rate`, `concurrency` or `trace`)."""

    num_requests: int | None = Field(None, ge=1, le=10_000_000,
                                     description="requests to serve (trace: the first N rows); at most 10^7")
    rate: float | None = Field(None, description="requests/s, gamma-distributed gaps; inf (or 0): all at t=0")
    burstiness: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="gamma shape of the gaps with `rate` (1 = Poisson)")
    concurrency: StrictInt | None = Field(None, ge=1, description="closed loop: clients each sending the next request "
                                                            "when the previous one finishes")
    trace: str | None = Field(None, description="CSV of arrival, prompt and output tokens per request")
    time_scale: float | None = Field(None, gt=0, allow_inf_nan=False, description="multiplies trace arrivals")
    overlong: Overlong = Field(
        "refuse", description="a request longer than the model's context: an error, shortened, or left out")
    prompt_tokens: Lengths | None = None
    output_tokens: Lengths | None = None

    @field_validator("rate", mode="before")
    @classmethod
    def _rate_is_a_number(cls, rate: Any) -> Any:
        if isinstance(rate, bool):
            raise ValueError("need requests/s > 0, or inf for everything at t=0 (not a boolean)")
        return rate

    @field_validator("rate")
    @classmethod
    def _rate(cls, rate: float | None) -> float | None:
        if rate is None:
            return None
        if math.isnan(rate) or rate < 0:
            raise ValueError("need requests/s > 0, or inf for everything at t=0")
        return math.inf if rate == 0 else rate

    @model_validator(mode="after")
    def _one_load_kind(self) -> Workload:
        given = [kind for kind in LOAD_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            named = " and ".join(f"workload.{kind}" for kind in given) + " are given together; " if given else ""
            raise ValueError(f"workload: {named}give exactly one load kind: rate, concurrency or trace")
        kind = given[0]
        for other, companions in _COMPANIONS.items():
            for companion in companions:
                if other != kind and getattr(self, companion) is not None:
                    raise ValueError(f"workload.{companion}: only with workload.{other}, not with workload.{kind}")
        if kind != "trace":
            missing = [key for key in ("num_requests", "prompt_tokens", "output_tokens") if getattr(self, key) is None]
            if missing:
                raise ValueError(f"workload.{missing[0]}: required with workload.{kind}")
        return self

    @property
    def kind(self) -> str:
        """burst (rate inf), rate, concurrency or trace."""
        if self.rate is not None:
            return "burst" if math.isinf(self.rate) else "rate"
        return "concurrency" if self.concurrency is not None else "trace"


class Precision(_Strict):
    weights: WeightDtype | None = Field(None, description="default: the model's torch_dtype")
    kv_cache: KvDtype | None = Field(None, description="default: 16-bit, as the weights' compute")


class Moe(_Strict):
    """How a mixture of experts' tokens spread over its experts (ignored by dense models)."""

    imbalance: float | None = Field(
        None, ge=1.0, allow_inf_nan=False,
        description="the hottest expert's tokens over the mean expert's, a property of the model and traffic "
                    "(default: none beyond random top-k routing, whose expected spread is always counted)")
    redundant_experts: StrictInt = Field(
        0, ge=0, description="extra expert copies that vLLM's EPLB places to even the EP ranks' load "
                             "(--num-redundant-experts with --enable-eplb): more weights per GPU, and only random "
                             "routing's spread left")


class Scheduler(_Strict):
    """Unset knobs are the serving engine's to decide (`sim.defaults`); summary.json shows them resolved."""

    policy: Literal["chunked", "prefill_first"] | None = Field(
        None, description="chunked: vLLM V1 chunked prefill (default); prefill_first: vLLM V0 without chunking")
    chunked_prefill: bool | None = Field(None, description="deprecated alias: true = chunked, false = prefill_first")
    max_num_seqs: int | None = Field(None, ge=1, description="sequences in one batch")
    max_batched_tokens: int | None = Field(None, ge=1, description="tokens in one batch")

    @model_validator(mode="after")
    def _alias_agrees(self) -> Scheduler:
        if self.chunked_prefill is None:
            return self
        implied = "chunked" if self.chunked_prefill else "prefill_first"
        if self.policy is not None and self.policy != implied:
            raise ValueError(f"scheduler.chunked_prefill = {str(self.chunked_prefill).lower()} contradicts "
                             f"scheduler.policy = {self.policy} (give policy alone: chunked or prefill_first)")
        return self

    @property
    def chosen_policy(self) -> Literal["chunked", "prefill_first"] | None:
        if self.policy is not None or self.chunked_prefill is None:
            return self.policy
        return "chunked" if self.chunked_prefill else "prefill_first"


class Memory(_Strict):
    gpu_utilization: float | None = Field(None, gt=0, le=1, description="fraction of GPU memory used (vLLM: 0.9)")
    block_size: int | None = Field(None, ge=1, description="KV-cache block, in tokens (vLLM: 16)")
    kv_allocation: Literal["on_demand", "reserve"] | None = Field(
        None, description="on_demand: blocks as tokens come, preemption by recompute (vLLM); "
                          "reserve: prompt + output at admission (TRT-LLM guaranteed-no-evict)")


RouterPolicy = Literal["least_outstanding", "round_robin", "vllm_dp"]


class Router(_Strict):
    """How requests are spread over the replicas (sim/router.py)."""

    policy: RouterPolicy = Field(
        "least_outstanding", description="least_outstanding: the replica with the fewest unfinished requests; "
                                         "round_robin: in turn; vllm_dp: vLLM's DP load balancer (lowest "
                                         "4 × waiting + running, on counts up to 100 ms old)")


class SimOptions(_Strict):
    granularity: Literal["stage", "layer"] = "stage"
    fast_forward: bool = Field(True, description="fold runs of identical decode steps into one event (exact); "
                                                 "false steps every batch, the reference it is tested against")
    seed: int = Field(0, ge=0)
    contention: bool = Field(True, description="stage granularity: transfers share links fairly (sim/flows.py), "
                                                "as layer granularity always does; false ignores sharing (faster "
                                                "where links are shared)")


_NAME_LIMIT = 100


def _check_name(name: str) -> str:
    """A scenario's name becomes runs/<name>: it must stay one folder inside runs/."""
    if not name.strip():
        raise ValueError("empty (give a file name such as h100-tp8)")
    if len(name) > _NAME_LIMIT:
        raise ValueError(f"{len(name)} characters (at most {_NAME_LIMIT})")
    if any(c in name for c in "/\\\0") or name.startswith("."):
        raise ValueError("must be one plain file name: no '/', '\\' or NUL, not starting with '.'")
    return name


class AggregatedDeployment(Parallel):
    """One pool of replicas that serve every phase of a request (`parallel` is its shorthand), with its own
    scheduler, memory and precision where they differ from the scenario's (field by field)."""

    kind: Literal["aggregated"] = Field(description="aggregated: one pool serves prefill and decode")
    scheduler: Scheduler | None = Field(None, description="overrides the scenario's scheduler, field by field")
    memory: Memory | None = Field(None, description="overrides the scenario's memory, field by field")
    precision: Precision | None = Field(None, description="overrides the scenario's precision, field by field")


def overridden(base: _Strict, given: _Strict | None) -> Any:
    """`base` with the fields `given` sets (a pool's own scheduler, memory or precision) in their place."""
    if given is None:
        return base
    return base.model_copy(update={name: getattr(given, name) for name in given.model_fields_set})


class Scenario(_Strict):
    name: str = Field("scenario", description="names the output folder runs/<name>: one plain file name")
    model: str | ModelSpec = Field(description="catalog name, config.json path, or a folder holding one")
    cluster: str | dict[str, Any] | ClusterSpec = Field(description="preset name, YAML path, or an inline spec")
    parallel: Parallel = Field(Parallel(), description="the layout: shorthand for deployment {kind: aggregated}")
    deployment: AggregatedDeployment | None = Field(
        None, description="the pools that serve the requests, each written like parallel (kind: aggregated)")
    workload: Workload
    precision: Precision = Precision()
    moe: Moe = Moe()
    scheduler: Scheduler = Scheduler()
    memory: Memory = Memory()
    router: Router = Router()
    sim: SimOptions = SimOptions()
    engine: Literal["vllm", "sglang", "trtllm", "ideal"] = Field(
        "vllm", description="the serving engine: its all-reduce, hand-offs and default knobs (sim/defaults.py); "
                            "ideal: the physics alone")
    hardware_profile: str | None = Field(None, description="path to a calibrated profile YAML")
    slo: Slo | None = Field(None, description="service-level objectives, e.g. {ttft: 0.5, tpot: 0.05, ttft_p99: 2}")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        return _check_name(name)

    @model_validator(mode="after")
    def _one_layout(self) -> Scenario:
        if self.deployment is not None and "parallel" in self.model_fields_set:
            raise ValueError("parallel and deployment are given together: give one (parallel is the shorthand "
                             "for deployment: {kind: aggregated, tp: …, pp: …, dp: …})")
        return self


_UNION_TAGS = ("int", "constrained-int", "uniform", "lognormal",  # length distributions
               "nvswitch", "pcie", "shared-memory", "infiniband", "ethernet")  # fabric kinds


def _is_union_branch(part: int | str) -> bool:
    """pydantic's names for the branch of a union in an error's location, not a field of ours."""
    return isinstance(part, str) and (part in _UNION_TAGS or part.startswith(("function-", "tagged-union")))


def _field_names(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """The valid field names of the (sub)model at `loc`, to list in an unknown-field message."""
    for key in loc:
        field = model.model_fields.get(str(key))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return [field.alias or name for name, field in model.model_fields.items()]  # as written in files


def describe_validation_error(err: ValidationError, model: type[BaseModel] = Scenario) -> str:
    """One line from pydantic's first error: `field: value — what is wrong (what is valid)`."""
    errors = err.errors()
    # A length given as a mapping failed as a distribution, not as an integer: report that branch.
    tagged = [e for e in errors if e["type"] == "union_tag_invalid"
              or any(part in ("uniform", "lognormal") for part in e["loc"])]
    first = tagged[0] if tagged else errors[0]
    loc = tuple(part for part in first["loc"] if not _is_union_branch(part))
    where = ".".join(str(part) if str(part).isprintable() else cut(repr(part)) for part in loc) or "scenario"
    if first["type"] == "extra_forbidden":
        valid = _field_names(model, loc[:-1])
        hint = f" (valid: {', '.join(valid)})" if valid else ""
        return f"{where}: unknown field{hint}"
    if first["type"] == "missing":
        return f"{where}: required field is missing"
    message = first["msg"].removeprefix("Value error, ")
    if not loc or message.startswith((f"{loc[0]}.", f"{loc[0]}:", f"{loc[0]} = ")):
        return message  # a cross-field check: its message names its fields
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" = {cut(repr(value))}"
    return f"{where}{shown}: {message}"


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key.path=value` pairs applied to a scenario mapping; values parse as YAML scalars."""
    data = copy.deepcopy(data)  # keeps the caller's mapping intact
    given: set[str] = set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ScenarioError(f"--set {cut(repr(item))}: expected key.path=value")
        value = parse_yaml_text(raw, f"--set {cut(repr(item))}")  # as strict as a file: no alias bombs
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if i == 0 and part == "cluster" and isinstance(child, str):  # a named cluster: derive from it
                child = node[part] = {"base": child}
            if not isinstance(child, dict):
                raise ScenarioError(f"--set {cut(key)}: {cut(part)} = {cut(repr(child))} is not a mapping")
            node = child
        if len(parts) == 2 and parts[0] == "workload" and parts[1] in LOAD_KINDS:
            for kind, companions in _COMPANIONS.items():  # a load kind given replaces the file's
                if kind != parts[1]:
                    for dropped in (kind, *companions):
                        node.pop(dropped, None)
            if parts[1] == "trace" and "workload.num_requests" not in given:
                node.pop("num_requests", None)  # the file's count was for its own load: replay the whole trace
        node[parts[-1]] = value
        given.add(key)
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_file(path, "scenario", "model, cluster, parallel, workload…")


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(describe_validation_error(err)) from None


def load_scenario(path: str | Path, overrides: list[str] | str | None = None) -> Scenario:
    """Read a scenario YAML, apply `key.path=value` overrides, validate. The name defaults to the stem."""
    if isinstance(overrides, str):
        overrides = [overrides]
    path = Path(path)
    data = read_yaml(path)
    workload = data.get("workload")
    if isinstance(workload, dict) and isinstance(workload.get("trace"), str):
        workload["trace"] = str(path.parent / workload["trace"])  # the file's trace: next to it (--set's: cwd)
    data = apply_overrides(data, overrides or [])
    data.setdefault("name", path.stem)
    # Files a scenario names are found next to it, as a reader of the file would expect.
    for key in ("model", "cluster", "hardware_profile"):
        value = data.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and os.path.exists(path.parent / value):
            data[key] = str(path.parent / value)
    return scenario_from_dict(data)
