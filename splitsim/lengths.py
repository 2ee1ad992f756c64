"""Request lengths as a scenario writes them: a fixed count, or a seeded distribution (uniform, log-normal,
a replayed list); and what to do with a request longer than the model's context."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

Overlong = Literal["refuse", "truncate", "skip"]


MAX_TOKENS = 10_000_000  # the longest context of a released model (Llama 4 Scout, 10M tokens)


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Uniform(_Dist):
    """Integers drawn uniformly from [low, high]."""

    dist: Literal["uniform"]
    low: int = Field(gt=0, le=MAX_TOKENS)
    high: int = Field(gt=0, le=MAX_TOKENS)

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
    median: float = Field(gt=0, le=MAX_TOKENS, allow_inf_nan=False)
    sigma: float = Field(gt=0, le=10, allow_inf_nan=False)  # e^10 ≈ 22,000×: far wider than any length trace
    max: int = Field(gt=0, le=MAX_TOKENS)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = rng.lognormal(math.log(self.median), self.sigma, size=n)  # the C library's log: same on every CPU
        return np.clip(np.rint(values), 1, self.max).astype(np.int64)


class Replay(_Dist):
    """Given lengths, in order, repeated from the first once they run out: a trace's lengths, at a load of
    the caller's choosing (the advisor's `--trace`)."""

    dist: Literal["replay"]
    values: list[Annotated[StrictInt, Field(gt=0, le=MAX_TOKENS)]] = Field(min_length=1, max_length=10_000_000)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.resize(np.asarray(self.values, dtype=np.int64), n)

    def described(self) -> dict[str, Any]:
        """What summary.json says of it: not every value."""
        values = np.asarray(self.values)
        return {"dist": "replay", "count": int(values.size), "mean": float(values.mean()), "min": int(values.min()),
                "max": int(values.max())}


Lengths = (Annotated[StrictInt, Field(gt=0, le=MAX_TOKENS)]
           | Annotated[Uniform | LogNormal | Replay, Field(discriminator="dist")])


def draw_lengths(spec: Lengths, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(spec, int):
        return np.full(n, spec, dtype=np.int64)
    return spec.draw(rng, n).astype(np.int64)
