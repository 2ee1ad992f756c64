"""Service-level objectives: one grammar for scenario YAML (`slo: {ttft: 0.5, ttft_p99: 2}`) and every CLI
(`--slo ttft=0.5,ttft_p99=2`).

A bare key (ttft, tpot, e2e, itl) is a per-request threshold in seconds: goodput counts the requests that
meet all of them. A key with a percentile suffix (ttft_p99, itl_p99.9) limits that percentile of the run's
distribution. Bad input is one line naming the key, the value and what is valid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

from splitsim.errors import ScenarioError

Metric = Literal["ttft", "tpot", "e2e", "itl"]
METRICS: tuple[Metric, ...] = ("ttft", "tpot", "e2e", "itl")
_PERCENTILE_KEY = re.compile(r"(ttft|tpot|e2e|itl)_p(\d+(?:\.\d+)?)")
_VALID_KEYS = "valid: ttft, tpot, e2e, itl, or one of them with a percentile suffix such as ttft_p99"
_ARG_FORM = "expected key=seconds, comma-separated, e.g. ttft=0.5,tpot=0.05,ttft_p99=2"


class PercentileLimit(BaseModel):
    """`key` as written (itl_p99.9): the `percentile` (0–100) of `metric` must be at most `limit_s`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    metric: Metric
    percentile: float
    limit_s: float


def _is_seconds(value: object) -> bool:
    """A finite number > 0, and not a bool (YAML's `yes` is not a duration)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return math.isfinite(value) and bool(value > 0)


def _parse(items: list[tuple[Any, Any, str, str]]) -> dict[str, Any]:
    """The fields of an `Slo` from (key, value, key label, value label) items; ValueError names the item."""
    thresholds: dict[str, float] = {}
    limits: dict[tuple[str, float], PercentileLimit] = {}
    for key, value, key_label, value_label in items:
        match = _PERCENTILE_KEY.fullmatch(key) if isinstance(key, str) else None
        if key not in METRICS and match is None:
            raise ValueError(f"{key_label}: unknown key ({_VALID_KEYS})")
        if not _is_seconds(value):
            raise ValueError(f"{value_label}: must be a finite number of seconds > 0")
        if match is None:
            if key in thresholds:
                raise ValueError(f"{key_label}: given twice")
            thresholds[key] = float(value)
            continue
        metric, percentile = match[1], float(match[2])
        if percentile > 100:
            raise ValueError(f"{key_label}: percentile must be between 0 and 100")
        if (metric, percentile) in limits:
            raise ValueError(f"{key_label}: the same constraint as {limits[metric, percentile].key}")
        limits[metric, percentile] = PercentileLimit(key=key, metric=metric, percentile=percentile,
                                                     limit_s=float(value))
    if not items:
        raise ValueError(f"slo: no constraints ({_VALID_KEYS})")
    return {"thresholds_s": thresholds, "percentiles": tuple(limits.values())}


class Slo(BaseModel):
    """Built from the flat mapping `{ttft: 0.5, tpot: 0.05, ttft_p99: 2}` (and dumped back to it), since
    percentile keys are open-ended: `thresholds_s` holds the per-request ones, `percentiles` the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thresholds_s: dict[Metric, float]
    percentiles: tuple[PercentileLimit, ...]

    @model_validator(mode="before")
    @classmethod
    def _from_mapping(cls, data: Any) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise ValueError(f"slo = {data!r}: expected a mapping of key: seconds, e.g. {{ttft: 0.5, ttft_p99: 2}}")
        return _parse([(key, value, f"slo.{key}", f"slo.{key} = {value!r}") for key, value in data.items()])

    @model_serializer
    def _dump(self) -> dict[str, float]:
        return self.as_dict()

    def as_dict(self) -> dict[str, float]:
        """The key → seconds mapping it was written as (per-request keys first), e.g. for summary.json."""
        mapping: dict[str, float] = {metric: limit_s for metric, limit_s in self.thresholds_s.items()}
        return mapping | {limit.key: limit.limit_s for limit in self.percentiles}


def parse_slo(mapping: Any) -> Slo:
    """An `Slo` from the YAML form, or a one-line `ScenarioError`."""
    try:
        return Slo.model_validate(mapping)
    except ValidationError as err:
        raise ScenarioError(err.errors()[0]["msg"].removeprefix("Value error, ")) from None


def parse_slo_arg(text: str) -> Slo:
    """An `Slo` from the CLI form `ttft=0.5,tpot=0.05,ttft_p99=2` (spaces allowed), or a `ScenarioError`."""
    if not text.strip():
        raise ScenarioError(f"--slo: empty ({_ARG_FORM})")
    items = []
    for raw in text.split(","):
        key, sep, value = (part.strip() for part in raw.partition("="))
        if not raw.strip():
            raise ScenarioError(f"--slo {text!r}: empty item ({_ARG_FORM})")
        if not (sep and key and value):
            raise ScenarioError(f"--slo {raw.strip()!r}: {_ARG_FORM}")
        try:
            number: float | str = float(value)
        except ValueError:
            number = value
        items.append((key, number, f"--slo {key}={value}", f"--slo {key}={value}"))
    try:
        _parse(items)  # checked here for messages naming --slo; the model then reads the same pairs
    except ValueError as err:
        raise ScenarioError(str(err)) from None
    return Slo.model_validate({key: number for key, number, _, _ in items})
