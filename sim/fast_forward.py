"""Fast-forward: many decode steps of one slot in one event, with exactly the results of stepping them.

Between two events that change a batch — an arrival, a request finishing, a KV block that cannot be had —
a slot whose batch is every one of its decoding requests in lockstep repeats the same step: the same
requests, each context one token longer. The step times follow from the cost model
(`StageCosts.decode_stage_times`, the same float operations as `stage_time`), the step ends from adding
them one by one as SimPy would, so the fast path reproduces exact stepping bit for bit: the same token
times, gaps, KV blocks, busy seconds and counters. The engine then waits once, until the last step of the
span ends, and completes that step the ordinary way (it may finish requests).

A span stops before: the first formation at or after the next arrival (any replica may get it), the step
in which a request finishes (that step is the span's last), and the formation whose new KV blocks would
not all fit (it preempts). Cases that must step are counted by reason in `FastForwardStats.fallbacks`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from splitsim.models.ops import BatchShape
from splitsim.sim.costs import StageCosts
from splitsim.sim.metrics import HistogramBuffer
from splitsim.sim.recorder import Recorder
from splitsim.sim.scheduler import Batch, SlotScheduler

MIN_SPAN = 4  # shorter spans step: numpy's fixed cost (~30 µs) exceeds what three SimPy steps cost


@dataclass
class FastForwardStats:
    """What `run.json` reports: steps run in all, steps folded into spans, and why the others stepped."""

    steps_total: int = 0
    steps_skipped: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    spans: Counter[int] = field(default_factory=Counter)  # span length, rounded down to a power of two

    def as_dict(self) -> dict[str, object]:
        return {"steps_total": self.steps_total, "steps_skipped": self.steps_skipped,
                "fallbacks": dict(sorted(self.fallbacks.items())),
                "span_lengths": {f"{k}-{2 * k - 1}" if k > 1 else "1": n for k, n in sorted(self.spans.items())}}


@dataclass(frozen=True, slots=True)
class Span:
    """`steps` decode steps starting at `starts[0]`: their (start, end) times and stage busy times."""

    starts: np.ndarray
    ends: np.ndarray
    compute: np.ndarray
    comm: float
    admission_kv_blocked: bool  # each formation fails to admit the head of the queue for want of blocks
    local_contexts: np.ndarray | None = None  # each step's Σ positions sliding or chunked layers see

    @property
    def steps(self) -> int:
        return len(self.ends)


def plan_span(slot: SlotScheduler, batch: Batch, costs: StageCosts, now: float, next_arrival_s: float,
              max_steps: int) -> Span | str:
    """The longest span of at most `max_steps` steps starting with `batch` at `now` that nothing can change,
    or the reason why this batch must step alone. `batch` was just formed by `slot` (its KV blocks for this
    step are held)."""
    if batch.prefill:
        return "prefill"
    if not (batch.every_decode and slot.in_step):
        return "lockstep_break"
    if slot.preempted:  # the next formation may readmit what this one preempted
        return "preempted"
    decode = batch.decode
    n = len(decode)
    finish_in = min(request.output - slot.generated(request) for request in decode)  # the step one finishes
    if finish_in < MIN_SPAN:
        return "finish"
    if max_steps < MIN_SPAN:
        return "progress_tick"
    compute0, comm = costs.stage_time(batch.shape, batch.num_logits)
    dt0 = compute0 + comm
    horizon = min(finish_in, max_steps)
    if next_arrival_s < math.inf:  # steps only lengthen: at most this many can start before the arrival
        horizon = min(horizon, int((next_arrival_s - now) / dt0) + 2)
        if horizon < MIN_SPAN:
            return "arrival"
    contexts = batch.shape.decode_context + n * np.arange(horizon, dtype=np.int64)
    local = costs.model.local_attention
    seen = None if local is None else local_contexts(
        np.array([request.prompt + slot.generated(request) for request in decode], dtype=np.int64), horizon, *local)
    compute, comm = costs.decode_stage_times(n, contexts, seen)
    ends = np.add.accumulate(np.concatenate(([now], compute + comm)))[1:]  # SimPy's now + delay, one by one
    # Formations 1..k-1 happen at ends[0..k-2]: each must come before the next arrival.
    steps = min(horizon, 1 + int(np.searchsorted(ends, next_arrival_s, side="left")))
    if steps < MIN_SPAN:
        return "arrival"
    if slot.on_demand:
        steps = _within_free_blocks(slot, batch, steps)
        if steps < MIN_SPAN:
            return "kv_blocks"
    ends = ends[:steps]
    return Span(np.concatenate(([now], ends[:-1])), ends, compute[:steps], comm, slot.policy.admits_each_step(slot, n),
                None if seen is None else seen[:steps])


def local_contexts(contexts: np.ndarray, horizon: int, kind: str, span: int) -> np.ndarray:
    """Σ positions a sliding or chunked layer lets each sequence see, for each of `horizon` steps from now, the
    sequences' contexts (themselves included) `contexts` now, one more each step: models/ops.py `local_positions`
    summed, vectorised. A window: min(c + s, w), from the sorted contexts and their prefix sums; a chunk:
    (c + s − 1) mod C + 1, over every (sequence, step)."""
    steps = np.arange(horizon, dtype=np.int64)
    if kind == "chunked":
        return ((contexts[:, None] + steps[None, :] - 1) % span + 1).sum(axis=0)  # type: ignore[no-any-return]
    ordered = np.sort(contexts)
    below = np.concatenate(([0], np.cumsum(ordered)))  # Σ of the smallest i contexts
    growing = np.searchsorted(ordered, span - steps, side="left")  # sequences whose view still grows at step s
    return below[growing] + growing * steps + (len(ordered) - growing) * span  # type: ignore[no-any-return]


def _blocks_needed(slot: SlotScheduler, batch: Batch, steps: int) -> int:
    """New KV blocks the formations inside a span of `steps` steps take (their tokens: prompt + generated)."""
    block = slot.kv.block
    need = 0
    for request in batch.decode:
        blocks = -(-(request.prompt + slot.generated(request) + steps - 1) // block)
        if blocks > request.kv_blocks:
            need += blocks - request.kv_blocks
    return need


def _within_free_blocks(slot: SlotScheduler, batch: Batch, steps: int) -> int:
    """The longest span up to `steps` whose formations' new blocks all fit in the free ones."""
    free = slot.kv.free_blocks
    if _blocks_needed(slot, batch, steps) <= free:
        return steps
    low, high = 1, steps  # _blocks_needed(low) fits (nothing new before formation 1), high does not
    while high - low > 1:
        mid = (low + high) // 2
        if _blocks_needed(slot, batch, mid) <= free:
            low = mid
        else:
            high = mid
    return low


def apply_span(slot: SlotScheduler, batch: Batch, span: Span, itl: HistogramBuffer, recorder: Recorder,
               replica: int) -> None:
    """Complete the span's steps but the last, as stepping would have, and make `batch` the last step's.

    Tokens, gaps and blocks for steps 0..k-2 and formations 1..k-1; busy and in-flight records for all k
    steps (the last step's in-flight interval is closed by the engine when it ends)."""
    k = span.steps
    decode = batch.decode
    n = len(decode)
    ends = span.ends
    gaps = np.diff(np.concatenate(([slot.last_end], ends[:-1])))  # each step's gap since the previous token
    itl.extend_steps(gaps, n)
    for request in slot.advance(k - 1, gaps):  # tokens whose new blocks the span's formations took
        taken = slot.kv.allocate(request, request.prompt + slot.generated(request))
        assert taken, "plan_span checked that the span's blocks fit"
        slot.reschedule(request)
    slot.context += (k - 1) * n
    slot.last_end = float(ends[-2])
    if span.admission_kv_blocked:
        slot.kv_blocked += k - 1
    local = 0 if span.local_contexts is None else int(span.local_contexts[k - 1])
    batch.shape = BatchShape((), n, batch.shape.decode_context + (k - 1) * n, local)
    recorder.decode_span(replica, span.starts, span.ends, span.compute, span.comm)
