"""Continuous batching for one scheduler (one slot of a replica): which requests run in the next batch,
and where their KV-cache blocks come from.

Policies (`policy`):
- `chunked` (vLLM V1, Sarathi-Serve): running requests first, in the order they were admitted (a
  decode takes one token, an unfinished prefill the rest of its prompt up to the budget), then new
  prompts, chunked to fill `max_batched_tokens`; decodes never stall behind a whole prompt.
- `prefill_first` (vLLM V0 without chunked prefill): when waiting requests can be admitted, the next
  batch prefills them whole and the running decodes wait for it.

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

from collections import deque
from dataclasses import dataclass
from typing import Literal

from splitsim.models.ops import BatchShape

Policy = Literal["chunked", "prefill_first"]
KvAllocation = Literal["on_demand", "reserve"]


class Request:
    """One request's lengths and progress, owned by the engine while the request is in the system."""

    __slots__ = ("id", "arrival_s", "prompt", "output", "computed", "generated", "decoding", "kv_blocks",
                 "replica", "preemptions", "first_scheduled_s", "first_token_s", "last_token_s", "max_itl_s")

    def __init__(self, request_id: int, arrival_s: float, prompt: int, output: int) -> None:
        self.id = request_id
        self.arrival_s = arrival_s
        self.prompt = prompt
        self.output = output
        self.computed = 0  # tokens whose KV is in the cache
        self.generated = 0  # output tokens sampled so far
        self.decoding = False  # the next step computes one token: the last one sampled
        self.kv_blocks = 0
        self.replica = -1
        self.preemptions = 0
        self.first_scheduled_s = -1.0
        self.first_token_s = -1.0
        self.last_token_s = -1.0
        self.max_itl_s = float("nan")


@dataclass(slots=True)
class Batch:
    prefill: list[tuple[Request, int]]  # (request, tokens it computes now): prompts and recomputes
    decode: list[Request]
    shape: BatchShape
    num_logits: int  # sequences that sample a token at the end of this batch


class KvPool:
    """A replica's KV cache, in blocks of `block` tokens, shared by its slots."""

    __slots__ = ("free", "block")

    def __init__(self, blocks: int, block: int) -> None:
        self.free = blocks
        self.block = block

    def hold(self, request: Request, tokens: int) -> bool:
        """Make `request` hold blocks for `tokens` tokens; False, taking nothing, if too few are free."""
        need = -(-tokens // self.block) - request.kv_blocks
        if need > self.free:
            return False
        if need > 0:
            self.free -= need
            request.kv_blocks += need
        return True

    def release(self, request: Request) -> None:
        self.free += request.kv_blocks
        request.kv_blocks = 0


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The resolved scheduler and KV-allocation choices (see `sim.defaults`)."""

    policy: Policy
    max_num_seqs: int
    max_batched_tokens: int
    kv_allocation: KvAllocation


class Scheduler:
    """One slot's queues: `waiting` (FCFS; preempted requests at the front) and `running` (admission order)."""

    __slots__ = ("config", "kv", "waiting", "running", "on_demand", "preempted", "kv_blocked")

    def __init__(self, config: SchedulerConfig, kv: KvPool) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.on_demand = config.kv_allocation == "on_demand"
        self.preempted: list[Request] = []  # preempted while forming the last batch
        self.kv_blocked = 0  # batches formed while the head of the queue waited for KV blocks

    def next_batch(self, now: float) -> Batch | None:
        """The next batch, admitting waiting requests into `running`; None if there is nothing to do."""
        self.preempted = []
        if self.config.policy == "chunked":
            return self._chunked(now)
        return self._prefill_first(now)

    # -- KV blocks ----------------------------------------------------------------------------------
    def _admit(self, tokens: int, now: float) -> Request | None:
        """Admit the head of the queue if a batch place and the KV blocks for it are free."""
        if not self.waiting or len(self.running) >= self.config.max_num_seqs:
            return None
        request = self.waiting[0]
        if not self.kv.hold(request, tokens if self.on_demand else request.prompt + request.output):
            self.kv_blocked += 1
            return None
        self.waiting.popleft()
        self.running.append(request)
        if request.first_scheduled_s < 0:
            request.first_scheduled_s = now
        return request

    def _room_for(self, request: Request, tokens: int) -> bool:
        """Hold blocks for `tokens` tokens of a running request, preempting the most recently admitted
        running requests until they fit; False if `request` itself had to go."""
        if not self.on_demand:
            return True
        while not self.kv.hold(request, tokens):
            victim = self.running.pop()
            self.kv.release(victim)
            victim.computed = 0
            victim.decoding = False
            victim.preemptions += 1
            self.waiting.appendleft(victim)
            self.preempted.append(victim)
            if victim is request:
                return False
        return True

    # -- policies -----------------------------------------------------------------------------------
    def _chunked(self, now: float) -> Batch | None:
        budget = self.config.max_batched_tokens
        running = self.running
        # Decodes take one token each, in admission order; they come first in `running` as a rule (a
        # prompt still being chunked is the newest request), so this equals vLLM's single walk.
        decode = [request for request in running if request.decoding]
        if len(decode) > budget:
            del decode[budget:]
        if self.on_demand:
            block = self.kv.block
            for request in decode:  # a decode needs a new block every `block` tokens
                tokens = request.prompt + request.generated
                if request.decoding and tokens > request.kv_blocks * block and not self._room_for(request, tokens):
                    break
        budget -= len(decode)
        prefill: list[tuple[Request, int]] = []
        for request in running:
            if budget <= 0:
                break
            if not request.decoding:
                tokens = min(request.prompt + request.generated - request.computed, budget)
                if not self._room_for(request, request.computed + tokens):
                    break
                prefill.append((request, tokens))
                budget -= tokens
        if self.preempted:
            decode = [request for request in decode if request.decoding]
        while budget > 0 and not self.preempted and self.waiting:
            head = self.waiting[0]
            tokens = min(head.prompt + head.generated, budget)
            if self._admit(tokens, now) is None:
                break
            prefill.append((head, tokens))
            budget -= tokens
        if not decode and not prefill:
            return None
        return _batch(decode, prefill)

    def _prefill_first(self, now: float) -> Batch | None:
        prefill: list[tuple[Request, int]] = []
        total = 0
        while self.waiting:
            head = self.waiting[0]
            tokens = head.prompt + head.generated
            if total + tokens > self.config.max_batched_tokens or self._admit(tokens, now) is None:
                break
            prefill.append((head, tokens))
            total += tokens
        if prefill:
            return _batch([], prefill)
        decode = []
        index = 0
        while index < len(self.running):
            request = self.running[index]
            if not self._room_for(request, request.prompt + request.generated):
                break
            decode.append(request)
            index += 1
        return _batch(decode, []) if decode else None


def _batch(decode: list[Request], prefill: list[tuple[Request, int]]) -> Batch:
    context = 0
    for request in decode:
        context += request.prompt + request.generated
    chunks = tuple((tokens, request.computed) for request, tokens in prefill)
    sampling = sum(1 for request, tokens in prefill if request.computed + tokens == request.prompt + request.generated)
    return Batch(prefill, decode, BatchShape(chunks, len(decode), context), len(decode) + sampling)
