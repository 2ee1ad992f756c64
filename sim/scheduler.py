"""Continuous batching for one scheduler (one slot of a replica): its queues, its requests' progress, and where
their KV-cache blocks come from. Which requests run in the next batch is its batch policy's (sim/batching.py).

KV allocation (`kv_allocation`):
- `reserve`: a request takes blocks for its prompt and whole output when admitted (TRT-LLM's
  guaranteed-no-evict policy); it never needs more, so nothing is preempted.
- `on_demand` (vLLM's paged cache): a request holds the blocks of the tokens computed so far, taking
  more as it is scheduled. When a running request needs a block and none is free, the most recently
  admitted running request is preempted by recompute: its blocks are freed, it goes to the front of the
  waiting queue, and when readmitted it prefills its prompt and the tokens it had generated again
  (vLLM v0.11.0 `v1/core/sched/scheduler.py`, FCFS policy, prefix caching off). No request is admitted in
  a step that preempted.

A request's state follows vLLM's counters: it has `prompt + generated` tokens, `computed` of them with KV
in the cache; a step computes the difference (or a chunk of it) and samples a token when it catches up.
A decoding request computes one token a step (the last one sampled), so while it decodes `computed` is not
kept up to date: it is `prompt + generated - 1`.
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from splitsim.models.ops import BatchShape, local_positions
from splitsim.models.spec import AttentionKind
from splitsim.sim.kv_cache import KvManager
from splitsim.sim.metrics import HistogramBuffer

GAP_LOG_LIMIT = 1 << 20  # lockstep gaps kept per slot before the ones no request needs are dropped
Policy = Literal["chunked", "prefill_first"]
KvAllocation = Literal["on_demand", "reserve"]


class Request:
    """One request's lengths and progress, owned by the engine while the request is in the system."""

    __slots__ = ("id", "arrival_s", "prompt", "output", "computed", "generated", "decoding", "kv_blocks", "room",
                 "replica", "preemptions", "first_scheduled_s", "first_token_s", "last_token_s", "max_itl_s",
                 "since_tick", "due_tick", "seq")

    def __init__(self, request_id: int, arrival_s: float, prompt: int, output: int) -> None:
        self.id = request_id
        self.arrival_s = arrival_s
        self.prompt = prompt
        self.output = output
        self.computed = 0  # tokens whose KV is in the cache
        self.generated = 0  # output tokens sampled so far
        self.decoding = False  # the next step computes one token: the last one sampled
        self.kv_blocks = 0
        self.room = 0  # output tokens its blocks hold (kv_blocks·block − prompt): one more needs a block
        self.replica = -1
        self.preemptions = 0
        self.first_scheduled_s = -1.0
        self.first_token_s = -1.0
        self.last_token_s = -1.0
        self.max_itl_s = 0.0  # the longest gap between two of its output tokens (none yet: 0)
        self.since_tick = 0  # decoding in lockstep: `generated` and `max_itl_s` are as of this slot tick
        self.due_tick = -1  # the slot tick of its next event: its last token, or a token that needs a block
        self.seq = -1  # admission order in its slot (running is in this order)


@dataclass(slots=True)
class Batch:
    prefill: list[tuple[Request, int]]  # (request, tokens it computes now): prompts and recomputes
    decode: list[Request]
    shape: BatchShape
    num_logits: int  # sequences that sample a token at the end of this batch
    every_decode: bool  # every decoding request of the slot is in `decode`


class FormsBatches(Protocol):
    """A batch policy (sim/batching.py `BatchPolicy`), as a slot uses it."""

    def form(self, slot: SlotScheduler, now: float) -> Batch | None: ...

    def admits_each_step(self, slot: SlotScheduler, decodes: int) -> bool: ...


class Occupancy:
    """Requests admitted and unfinished in one replica (all its slots), and the most there ever were."""

    __slots__ = ("running", "peak")

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The resolved scheduler and KV-allocation choices (see `sim.defaults`)."""

    policy: Policy
    max_num_seqs: int
    max_batched_tokens: int
    kv_allocation: KvAllocation


class SlotScheduler:
    """One slot's queues and its requests' progress: `waiting` (FCFS; preempted requests at the front) and
    `running` (admission order). `next_batch` forms a batch; `complete` hands out its tokens.

    Decoding requests cost nothing a token: while every decode runs in every batch (`in_step`, lockstep) a
    batch advances the slot's `tick`, and a decoding request's `generated` and `max_itl_s` are kept as of
    its `since_tick` (`synced` brings them up to date from the log of lockstep gaps, `gaps`). Each request is
    touched only at its own events, found by tick in `due`: its last token, and the token that needs its next
    KV block (1 in `block_size`). Per batch: `context` is Σ (prompt + generated) over the decoding requests (a
    batch's decode attention), `needs_block` the decodes whose next token starts a new KV block, in running
    order; their `last_token_s` is `last_end` until the lockstep breaks, when every decode is synced and
    stepped one by one."""

    __slots__ = ("config", "policy", "kv", "occupancy", "waiting", "running", "on_demand", "preempted", "kv_blocked",
                 "needs_block", "context", "itl", "in_step", "last_end", "tick", "gaps", "gap_offset", "due",
                 "admissions", "local")

    def __init__(self, config: SchedulerConfig, policy: FormsBatches, kv: KvManager, occupancy: Occupancy,
                 itl: HistogramBuffer, local: tuple[AttentionKind, int] | None = None) -> None:
        self.config = config
        self.policy = policy
        self.local = local  # the model's sliding or chunked attention (kind, span): decodes see less in those layers
        self.kv = kv
        self.occupancy = occupancy
        self.itl = itl  # receives every gap between two output tokens of a request
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.on_demand = config.kv_allocation == "on_demand"
        self.preempted: list[Request] = []  # preempted while forming the last batch
        self.kv_blocked = 0  # batches formed while the head of the queue waited for KV blocks
        self.needs_block: list[Request] = []  # in admission order
        self.context = 0
        self.in_step = False  # every decoding request got its last token at `last_end`
        self.last_end = 0.0  # when this slot's previous batch ended
        self.tick = 0  # lockstep batches so far
        self.gaps = array("d")  # gaps[i]: the inter-token gap of lockstep tick gap_offset + i + 1
        self.gap_offset = 0
        self.due: dict[int, list[Request]] = {}  # tick -> decodes with an event at that tick (stale ones skipped)
        self.admissions = 0

    def next_batch(self, now: float) -> Batch | None:
        """The next batch as the slot's batch policy forms it (sim/batching.py), admitting waiting requests into
        `running`; None if there is nothing to do."""
        if self.preempted:
            self.preempted = []
        return self.policy.form(self, now)

    def complete(self, batch: Batch, now: float) -> list[Request]:
        """The batch ran until `now`: prefill chunks are computed, every request that caught up samples a
        token. Returns the requests that finished (their blocks freed, out of `running`)."""
        in_step = batch.every_decode and self.in_step
        decode = batch.decode
        if in_step:  # one tick for every decode: no request is touched unless its event is due
            self.tick += 1
        else:
            self._write_last_tokens()
        finished = []
        caught_up = []  # newer than every decode: they need blocks after the decodes, in admission order
        for request, tokens in batch.prefill:
            request.computed += tokens
            if request.computed == request.prompt + request.generated:
                request.generated += 1
                if request.first_token_s < 0:
                    request.first_token_s = now
                else:  # the token after a recompute
                    self._gap(request, now - request.last_token_s)
                request.last_token_s = now
                request.decoding = True
                request.since_tick = self.tick
                request.due_tick = -1  # any entry in `due` from before a preemption is stale
                self.context += request.prompt + request.generated
                if request.generated == request.output:
                    finished.append(request)
                elif request.generated > request.room:
                    caught_up.append(request)
                else:
                    self.reschedule(request)
        if in_step:  # and one gap
            gap = now - self.last_end
            self.itl.append_many(gap, len(decode))
            self.gaps.append(gap)
            due = self.due.pop(self.tick, None)
            if due:
                self._events(due, finished)
            if len(self.gaps) > GAP_LOG_LIMIT:
                self._trim_gaps()
        else:  # the same tokens, each request with its own gap and its own events
            needs_block = self.needs_block
            for request in decode:
                self._gap(request, now - request.last_token_s)
                request.last_token_s = now
                request.generated += 1
                if request.generated == request.output:
                    finished.append(request)
                elif request.generated > request.room:
                    request.due_tick = -1
                    needs_block.append(request)
                else:
                    self.reschedule(request)
        if caught_up:
            self.needs_block += caught_up
        self.in_step = batch.every_decode  # every decoding request's last token is now
        self.last_end = now
        self.context += len(decode)
        if finished:
            self.occupancy.running -= len(finished)
            for request in finished:
                request.decoding = False
                self.context -= request.prompt + request.output
                self.kv.free(request)
            self.running = [request for request in self.running if request.kv_blocks]
        return finished

    def generated(self, request: Request) -> int:
        """A decoding request's output tokens so far, without syncing it."""
        return request.generated + self.tick - request.since_tick

    def synced(self, request: Request) -> Request:
        """Bring a decoding request's `generated` and `max_itl_s` up to the slot's tick."""
        behind = self.tick - request.since_tick
        if behind > 0:
            request.generated += behind
            start = request.since_tick - self.gap_offset
            longest = max(self.gaps[start:start + behind])
            if longest > request.max_itl_s:
                request.max_itl_s = longest
            request.since_tick = self.tick
        return request

    def reschedule(self, request: Request) -> None:
        """File a decoding request under the tick of its next event (last token, or a new block); its counts
        are as of its `since_tick`, so it need not be synced."""
        base = request.generated
        due = request.since_tick + min(request.output - base, request.room - base + 1)
        request.due_tick = due
        bucket = self.due.get(due)
        if bucket is None:
            self.due[due] = [request]
        else:
            bucket.append(request)

    def _events(self, due: list[Request], finished: list[Request]) -> None:
        """Decodes whose event is this tick: they finish, or need a block (in running order)."""
        tick = self.tick
        live = [request for request in due if request.due_tick == tick and request.decoding]
        if len(live) > 1:  # a stale entry can match again when a request is refiled under the same tick
            live = sorted(set(live), key=_by_seq)
        for request in live:
            if self.generated(request) == request.output:
                finished.append(self.synced(request))
            else:  # a new block: no need to sync it
                self.needs_block.append(request)

    def advance(self, steps: int, gaps: np.ndarray) -> list[Request]:
        """`steps` lockstep batches of every decode, none finishing (a fast-forward span): the ticks and
        gaps they add, and the decodes whose block events fell inside, in running order."""
        start = self.tick
        self.gaps.frombytes(np.ascontiguousarray(gaps, dtype=np.float64).tobytes())
        self.tick += steps
        due: list[Request] = []
        for tick in range(start + 1, self.tick + 1):
            bucket = self.due.pop(tick, None)
            if bucket:
                due += [request for request in bucket if request.due_tick == tick and request.decoding]
        return sorted(set(due), key=_by_seq)

    def _trim_gaps(self) -> None:
        """Drop the lockstep gaps no decoding request still needs (memory stays bounded on long runs)."""
        oldest = min((r.since_tick for r in self.running if r.decoding), default=self.tick)
        drop = oldest - self.gap_offset
        if drop > 0:
            del self.gaps[:drop]
            self.gap_offset = oldest

    def _gap(self, request: Request, gap: float) -> None:
        self.itl.append(gap)
        if gap > request.max_itl_s:
            request.max_itl_s = gap

    def _write_last_tokens(self) -> None:
        """Leaving lockstep: every decoding request is synced and its last token came at `last_end`."""
        if self.in_step:
            for request in self.running:
                if request.decoding:
                    self.synced(request)
                    request.last_token_s = self.last_end
            self.in_step = False

    # -- KV blocks ----------------------------------------------------------------------------------
    def admit(self, tokens: int, now: float) -> Request | None:
        """Admit the head of the queue if a batch place and the KV blocks for it are free."""
        if not self.waiting or len(self.running) >= self.config.max_num_seqs:
            return None
        request = self.waiting[0]
        if not self.kv.allocate(request, tokens if self.on_demand else request.prompt + request.output):
            self.kv_blocked += 1
            return None
        self.waiting.popleft()
        self.running.append(request)
        request.seq = self.admissions
        self.admissions += 1
        occupancy = self.occupancy
        occupancy.running += 1
        if occupancy.running > occupancy.peak:
            occupancy.peak = occupancy.running
        if request.first_scheduled_s < 0:
            request.first_scheduled_s = now
        return request

    def room_for(self, request: Request, tokens: int) -> bool:
        """Hold blocks for `tokens` tokens of a running request, preempting the most recently admitted
        running requests until they fit; False if `request` itself had to go."""
        if not self.on_demand:
            return True
        while not self.kv.allocate(request, tokens):
            victim = self.running.pop()
            self.occupancy.running -= 1
            self.kv.free(victim)
            victim.due_tick = -1
            if victim.decoding:
                self.synced(victim)
                self.context -= victim.prompt + victim.generated
                if self.in_step:
                    victim.last_token_s = self.last_end
            victim.computed = 0
            victim.decoding = False
            victim.preemptions += 1
            self.waiting.appendleft(victim)
            self.preempted.append(victim)
            if victim is request:
                return False
        return True

    def grow_decodes(self) -> None:
        """Give each decode that needs one its next block, preempting from the newest when none is left."""
        for request in self.needs_block:
            if not request.decoding:
                continue
            if not self.room_for(request, request.prompt + self.generated(request)):
                break  # it was preempted, and every newer request before it
            self.reschedule(request)
        self.needs_block = []

    def local_context(self, decode: list[Request]) -> int:
        """Σ over `decode` of the positions a sliding or chunked layer lets each new token see (0 without such
        layers): one pass over the decodes, only for models that have them."""
        if self.local is None:
            return 0
        kind, span = self.local
        return sum(local_positions(request.prompt + self.generated(request), kind, span) for request in decode)


def batch_of(decode: list[Request], context: int, prefill: list[tuple[Request, int]], every_decode: bool,
             local: int = 0, attention: tuple[AttentionKind, int] | None = None) -> Batch:
    """`context`: Σ (prompt + generated) over `decode`, the positions their new tokens attend to (`local`: in a
    sliding or chunked layer); `every_decode`: no decoding request of the slot is left out; `attention`: the
    model's sliding or chunked attention, which the chunks' local sums are taken for (`BatchShape.of`)."""
    if not prefill:
        return Batch(prefill, decode, BatchShape((), len(decode), context, local), len(decode), every_decode)
    sampling = 0
    for request, tokens in prefill:
        if request.computed + tokens == request.prompt + request.generated:
            sampling += 1
    chunks = tuple([(tokens, request.computed) for request, tokens in prefill])
    shape = BatchShape.of(chunks, len(decode), context, local, attention)
    return Batch(prefill, decode, shape, len(decode) + sampling, every_decode)


def _by_seq(request: Request) -> int:
    return request.seq
