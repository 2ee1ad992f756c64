"""Request lengths and arrivals: fixed numbers or seeded distributions, drawn once per run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Uniform(_Dist):
    """Integers drawn uniformly from [low, high]."""

    dist: Literal["uniform"]
    low: int = Field(gt=0)
    high: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high={self.high} must be at least low={self.low}")
        return self

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, size=n)


class LogNormal(_Dist):
    """Heavy-tailed lengths, as in chat traces: median and σ of log-length, clipped to [1, max]."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(gt=0)
    max: int = Field(gt=0)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = rng.lognormal(np.log(self.median), self.sigma, size=n)
        return np.clip(np.rint(values), 1, self.max).astype(np.int64)


Lengths = Annotated[StrictInt, Field(gt=0)] | Annotated[Uniform | LogNormal, Field(discriminator="dist")]


def draw_lengths(spec: Lengths, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(spec, int):
        return np.full(n, spec, dtype=np.int64)
    return spec.draw(rng, n).astype(np.int64)


def max_length(spec: Lengths) -> int:
    if isinstance(spec, int):
        return spec
    return spec.high if isinstance(spec, Uniform) else spec.max


def arrival_times(rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals at `rate` requests/s (exponential gaps, first at its gap), or all at t=0."""
    if rate == 0:
        return np.zeros(n)
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


@dataclass(frozen=True)
class RequestStream:
    """The requests a run serves, in id order: lengths, and arrival times (open loop)."""

    arrival_s: np.ndarray  # float64, non-decreasing
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64

    @property
    def num_requests(self) -> int:
        return len(self.prompt_tokens)
