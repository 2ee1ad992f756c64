"""The scenario: one frozen, strict description of a run, read from YAML with `--set` overrides.

Checks run in the order schema → layout → memory: the schema here, layout and memory in `sim.plan`.
Every failure becomes one `ScenarioError` line naming the field, the value and what would be valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from splitsim.errors import ScenarioError
from splitsim.models.precision import KvDtype, WeightDtype
from splitsim.sim.workload import Lengths, max_length


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Parallel(_Strict):
    tp: StrictInt = Field(1, ge=1, description="tensor-parallel degree: GPUs that split every layer")
    pp: StrictInt = Field(1, ge=1, description="pipeline stages: contiguous groups of layers")
    dp: StrictInt = Field(1, ge=1, description="replicas behind the router")
    order: Literal["tp-pp-dp", "tp-dp-pp"] = Field(
        "tp-pp-dp",
        description="placement, innermost first: tp-pp-dp packs each replica onto adjacent GPUs; "
        "tp-dp-pp puts the same stage of every replica side by side",
    )

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp


class Workload(_Strict):
    num_requests: int = Field(ge=1)
    rate: float = Field(ge=0, allow_inf_nan=False, description="Poisson arrivals per second; 0 = all at t=0")
    prompt_tokens: Lengths
    output_tokens: Lengths


class Precision(_Strict):
    weights: WeightDtype | None = Field(None, description="default: the model's torch_dtype")
    kv_cache: KvDtype | None = Field(None, description="default: 16-bit, as the weights' compute")


class Scheduler(_Strict):
    max_num_seqs: int = Field(256, ge=1, description="sequences in one batch (vLLM's default: 256)")
    max_batched_tokens: int = Field(8192, ge=1, description="tokens in one batch")
    chunked_prefill: bool = Field(False, description="split prompts into chunks that ride with decodes")


class Memory(_Strict):
    gpu_utilization: float = Field(0.9, gt=0, le=1, description="fraction of GPU memory used (vLLM: 0.9)")
    block_size: int = Field(16, ge=1, description="KV-cache block, in tokens (vLLM: 16)")


class SimOptions(_Strict):
    granularity: Literal["stage", "layer"] = "stage"
    seed: int = Field(0, ge=0)


class Scenario(_Strict):
    name: str = "scenario"
    model: str = Field(description="catalog name, config.json path, or a folder holding one")
    cluster: str | dict[str, Any] = Field(description="preset name, YAML path, or an inline spec")
    parallel: Parallel = Parallel()
    workload: Workload
    precision: Precision = Precision()
    scheduler: Scheduler = Scheduler()
    memory: Memory = Memory()
    sim: SimOptions = SimOptions()
    hardware_profile: str | None = Field(None, description="path to a calibrated profile YAML")

    @model_validator(mode="after")
    def _prompt_fits_a_batch(self) -> Scenario:
        longest = max_length(self.workload.prompt_tokens)
        budget = self.scheduler.max_batched_tokens
        if not self.scheduler.chunked_prefill and longest > budget:
            raise ValueError(
                f"workload.prompt_tokens: prompts of up to {longest} tokens exceed "
                f"scheduler.max_batched_tokens={budget} with chunked_prefill off "
                f"(raise max_batched_tokens to at least {longest} or turn chunked_prefill on)"
            )
        return self


_UNION_TAGS = ("int", "constrained-int", "uniform", "lognormal")


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
    return list(model.model_fields)


def describe_validation_error(err: ValidationError, model: type[BaseModel] = Scenario) -> str:
    """One line from pydantic's first error: `field: value — what is wrong (what is valid)`."""
    errors = err.errors()
    # A length given as a mapping failed as a distribution, not as an integer: report that branch.
    tagged = [e for e in errors if e["type"] == "union_tag_invalid"
              or any(part in ("uniform", "lognormal") for part in e["loc"])]
    first = tagged[0] if tagged else errors[0]
    loc = tuple(part for part in first["loc"] if not _is_union_branch(part))
    where = ".".join(str(part) for part in loc) or "scenario"
    if first["type"] == "extra_forbidden":
        valid = _field_names(model, loc[:-1])
        hint = f" (valid: {', '.join(valid)})" if valid else ""
        return f"{where}: unknown field{hint}"
    if first["type"] == "missing":
        return f"{where}: required field is missing"
    message = first["msg"].removeprefix("Value error, ")
    if not loc:  # a cross-field check: its message names its fields
        return message
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{where}{shown}: {message}"


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key.path=value` pairs applied to a scenario mapping; values parse as YAML scalars."""
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy that keeps the caller's mapping intact
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ScenarioError(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ScenarioError(f"--set {item!r}: the value is not a YAML scalar") from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ScenarioError(f"--set {key}: {part} = {child!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ScenarioError(f"{path}: cannot read the scenario ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ScenarioError(f"{path}:{line}: malformed YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a YAML mapping (model, cluster, parallel, workload…)")
    return data


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
    data = apply_overrides(read_yaml(path), overrides or [])
    data.setdefault("name", path.stem)
    # Files a scenario names are found next to it, as a reader of the file would expect.
    for key in ("model", "cluster", "hardware_profile"):
        value = data.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).exists():
            data[key] = str(path.parent / value)
    return scenario_from_dict(data)
