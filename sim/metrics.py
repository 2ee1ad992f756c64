"""Latency statistics: exact ones from per-request columns, streaming ones for inter-token latencies.

A run can emit hundreds of millions of inter-token gaps, too many to keep; `LogHistogram` keeps exact
counts in fixed log-spaced bins, so its percentiles are exact up to one bin and its mean and std are exact.
"""

from __future__ import annotations

import math
from array import array
from itertools import repeat

import numpy as np

STAT_KEYS = ("mean", "p50", "p90", "p99", "std")


def distribution_stats(values: np.ndarray) -> dict[str, float | None]:
    """mean, p50, p90, p99 and population std (ddof=0, as vLLM's benchmark) of the non-NaN values,
    with numpy's linear-interpolation percentiles; all None when there are none."""
    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    if data.size == 0:
        return dict.fromkeys(STAT_KEYS)
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return {"mean": float(data.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "std": float(data.std())}


class LogHistogram:
    """Counts of durations ≥ 0 s in log-spaced bins from `low_s` to `high_s`, plus an underflow bin
    (below `low_s`, zero included) and an overflow bin; memory is fixed whatever the number of values.

    The default 256 bins per decade make each bin 10^(1/256) - 1 ≈ 0.90 % wide (`relative_resolution`);
    a percentile is reported at its bin's geometric midpoint, within ≈ 0.45 % of the exact value.
    The mean and std are exact (Chan et al.'s pairwise update of count, mean and M2 per batch).
    """

    def __init__(self, low_s: float = 1e-9, high_s: float = 1e4, bins_per_decade: int = 256) -> None:
        if not (0 < low_s < high_s and math.isfinite(high_s)) or bins_per_decade < 1:
            raise ValueError(f"need 0 < low_s < high_s < inf and bins_per_decade ≥ 1, got {low_s}, {high_s}, "
                             f"{bins_per_decade}")
        self.low_s, self.high_s, self.bins_per_decade = low_s, high_s, bins_per_decade
        self._log_low = math.log10(low_s)
        self._bins = math.ceil((math.log10(high_s) - self._log_low) * bins_per_decade - 1e-9)  # 13 decades: 3328
        self.counts = np.zeros(self._bins + 2, dtype=np.int64)  # [underflow, bins…, overflow]
        self.count = 0
        self.sum = 0.0
        self._mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        # Python's float power (the C library's pow), not numpy's: on AVX-512 hosts numpy's power and log10 take
        # vectorised paths whose last bit differs from other hosts', and the outputs must not depend on the CPU.
        self._edges = np.array([10.0 ** (self._log_low + k / bins_per_decade) for k in range(self._bins + 1)])
        edges = self._edges
        # Representative value of each bin; the open-ended ones are clamped to [min, max] on use.
        self._mids = np.concatenate([[0.0], np.sqrt(edges[:-1] * edges[1:]), [math.inf]])

    @property
    def relative_resolution(self) -> float:
        """Width of one bin relative to its lower edge."""
        return float(10.0 ** (1.0 / self.bins_per_decade) - 1.0)

    def add(self, values: np.ndarray) -> None:
        """Count a batch of finite durations ≥ 0 (s); NaN, infinite or negative values are a bug upstream."""
        batch = np.asarray(values, dtype=np.float64).ravel()
        n = batch.size
        if n == 0:
            return
        low, high = float(batch.min()), float(batch.max())
        if not (low >= 0 and high < math.inf):
            raise ValueError(f"durations must be finite and ≥ 0 s, got values in [{low}, {high}]")
        # Edges at or below each value: 0 below the first edge (underflow), k + 1 in [edge k, edge k + 1), the
        # overflow bin from the last edge on. Comparisons only, so every host bins alike.
        index = np.searchsorted(self._edges, batch, side="right")
        self.counts += np.bincount(index, minlength=self.counts.size)
        batch_sum = float(batch.sum())
        deviation = batch - batch_sum / n
        # Not np.dot: BLAS splits a long dot over its threads, so the last bits would depend on the machine
        # (and threads of two worker processes would fight over the cores).
        self._combine(n, batch_sum, batch_sum / n, float(np.square(deviation).sum()), low, high)

    def _combine(self, n: int, total: float, mean: float, m2: float, low: float, high: float) -> None:
        both = self.count + n
        delta = mean - self._mean
        self._mean += delta * n / both
        self._m2 += m2 + delta * delta * self.count * n / both
        self.count = both
        self.sum += total
        self.min, self.max = min(self.min, low), max(self.max, high)

    def merge(self, other: LogHistogram) -> None:
        """Add another histogram's values (same binning), e.g. one per replica."""
        if (other.low_s, other.high_s, other.bins_per_decade) != (self.low_s, self.high_s, self.bins_per_decade):
            raise ValueError("cannot merge histograms with different bins")
        if other.count:
            self.counts += other.counts
            self._combine(other.count, other.sum, other._mean, other._m2, other.min, other.max)

    @property
    def mean(self) -> float | None:
        return self._mean if self.count else None

    @property
    def std(self) -> float | None:
        """Population standard deviation (ddof=0, numpy's default)."""
        return math.sqrt(max(self._m2, 0.0) / self.count) if self.count else None

    def percentile(self, q: float) -> float | None:
        """numpy's 'linear' percentile with every value replaced by its bin's midpoint (clamped to the
        exact min and max), so it is exact at q=0 and q=100; None when empty."""
        if not 0 <= q <= 100:
            raise ValueError(f"percentile q = {q} must be between 0 and 100")
        if not self.count:
            return None
        rank = (self.count - 1) * q / 100.0
        below = math.floor(rank)
        lo, hi = (self._value_at(k) for k in (below, min(below + 1, self.count - 1)))
        return lo + (rank - below) * (hi - lo)

    def _value_at(self, k: int) -> float:
        """The k-th smallest value (from 0) as its bin's midpoint; the extremes are known exactly."""
        if k == 0:
            return self.min
        if k == self.count - 1:
            return self.max
        bin_index = int(np.searchsorted(np.cumsum(self.counts), k, side="right"))
        return float(np.clip(self._mids[bin_index], self.min, self.max))

    def stats(self) -> dict[str, float | None]:
        """The same keys as `distribution_stats`."""
        return {"mean": self.mean, "p50": self.percentile(50), "p90": self.percentile(90),
                "p99": self.percentile(99), "std": self.std}


class HistogramBuffer:
    """Feeds a `LogHistogram` from a hot loop: `append` is the bare `array('d').append` (hoist it into a local);
    the caller calls `flush_if_full()` now and then (the engine: once a batch), which adds the values to the
    histogram once `FLUSH_EVERY` have gathered, so memory stays bounded (~512 KiB plus one batch) and numpy's
    per-call cost is paid once per 65,536 values. Call `flush()` at the end of a run before reading."""

    FLUSH_EVERY = 1 << 16

    def __init__(self, histogram: LogHistogram) -> None:
        self.histogram = histogram
        self._values = array("d")
        self.append = self._values.append

    def __len__(self) -> int:
        """Values waiting to be flushed."""
        return len(self._values)

    def append_many(self, value: float, count: int) -> None:
        """`count` equal values (a batch of decodes sharing one gap), at C speed."""
        self._values.extend(repeat(value, count))

    def extend_steps(self, gaps: np.ndarray, per_step: int) -> None:
        """`per_step` copies of each gap, flushed where `flush_if_full` after every step would flush, so the
        histogram's sums come out the same bits as stepping gives (a fast-forward span's gaps)."""
        start = 0
        while start < len(gaps):
            room = max(self.FLUSH_EVERY - len(self._values), 1)
            stop = min(len(gaps), start + -(-room // per_step))  # the step that fills the buffer, or the last
            self._values.frombytes(np.repeat(np.asarray(gaps[start:stop], dtype=np.float64), per_step).tobytes())
            self.flush_if_full()
            start = stop

    def flush_if_full(self) -> None:
        if len(self._values) >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> LogHistogram:
        if self._values:
            # A copy (0.5 ns a value), so the array holds no buffer export when it is emptied.
            batch = np.frombuffer(self._values, dtype=np.float64).copy()
            del self._values[:]
            self.histogram.add(batch)
        return self.histogram
