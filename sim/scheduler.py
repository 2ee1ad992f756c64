"""Continuous batching, one policy per flag (vLLM's two schedulers, Sarathi-Serve's chunking).

- Whole-prompt prefill (vLLM's default scheduler before chunked prefill): when waiting requests can be
  admitted, the next batch prefills them whole and the running decodes wait for it.
- Chunked prefill (Sarathi-Serve, vLLM with chunked prefill): every batch takes the running decodes
  first, then fills the token budget with chunks of prompts, so decodes never stall behind a prompt.

A request reserves KV cache for its prompt and its output, in whole blocks, when it is admitted, and
waits in FCFS order while the cache is full.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from splitsim.models.ops import BatchShape


class Request:
    """One request's lengths and timeline; `prefilled` and `generated` count tokens done so far."""

    __slots__ = ("id", "arrival_s", "prompt", "output", "prefilled", "generated",
                 "first_token_s", "finish_s", "kv_tokens", "replica")

    def __init__(self, request_id: int, arrival_s: float, prompt: int, output: int) -> None:
        self.id = request_id
        self.arrival_s = arrival_s
        self.prompt = prompt
        self.output = output
        self.prefilled = 0
        self.generated = 0
        self.first_token_s = -1.0
        self.finish_s = -1.0
        self.kv_tokens = 0
        self.replica = -1


@dataclass(slots=True)
class Batch:
    prefill: list[tuple[Request, int]]  # (request, prompt tokens it processes now)
    decode: list[Request]
    shape: BatchShape
    num_logits: int  # sequences that sample a token at the end of this batch


class KvPool:
    """A replica's KV-cache capacity in tokens, handed out in whole blocks."""

    __slots__ = ("free", "block")

    def __init__(self, tokens: int, block: int) -> None:
        self.free = tokens
        self.block = block

    def reserve(self, request: Request) -> bool:
        need = -(-(request.prompt + request.output) // self.block) * self.block
        if need > self.free:
            return False
        self.free -= need
        request.kv_tokens = need
        return True

    def release(self, request: Request) -> None:
        self.free += request.kv_tokens
        request.kv_tokens = 0


def form_batch(running: list[Request], waiting: deque[Request], kv: KvPool, max_num_seqs: int,
               max_batched_tokens: int, chunked_prefill: bool) -> Batch | None:
    """The next batch of one slot, admitting waiting requests into `running`; None if nothing to do."""
    if chunked_prefill:
        return _chunked(running, waiting, kv, max_num_seqs, max_batched_tokens)
    return _whole_prompts(running, waiting, kv, max_num_seqs, max_batched_tokens)


def _admit(running: list[Request], waiting: deque[Request], kv: KvPool, max_num_seqs: int) -> Request | None:
    if not waiting or len(running) >= max_num_seqs or not kv.reserve(waiting[0]):
        return None
    request = waiting.popleft()
    running.append(request)
    return request


def _decode_batch(decode: list[Request], prefill: list[tuple[Request, int]]) -> Batch:
    context = 0
    for request in decode:
        context += request.prompt + request.generated
    chunks = tuple((tokens, request.prefilled) for request, tokens in prefill)
    finishing = sum(1 for request, tokens in prefill if request.prefilled + tokens == request.prompt)
    return Batch(prefill, decode, BatchShape(chunks, len(decode), context), len(decode) + finishing)


def _whole_prompts(running: list[Request], waiting: deque[Request], kv: KvPool, max_num_seqs: int,
                   max_batched_tokens: int) -> Batch | None:
    prefill: list[tuple[Request, int]] = []
    tokens = 0
    while waiting and tokens + waiting[0].prompt <= max_batched_tokens:
        request = _admit(running, waiting, kv, max_num_seqs)
        if request is None:
            break
        prefill.append((request, request.prompt))
        tokens += request.prompt
    if prefill:
        return _decode_batch([], prefill)
    if running:
        return _decode_batch(list(running), [])
    return None


def _chunked(running: list[Request], waiting: deque[Request], kv: KvPool, max_num_seqs: int,
             budget: int) -> Batch | None:
    decode = [r for r in running if r.prefilled == r.prompt][:budget]
    budget -= len(decode)
    prefill: list[tuple[Request, int]] = []
    for request in running:
        if budget <= 0:
            break
        if request.prefilled < request.prompt:
            chunk = min(request.prompt - request.prefilled, budget)
            prefill.append((request, chunk))
            budget -= chunk
    while budget > 0:
        admitted = _admit(running, waiting, kv, max_num_seqs)
        if admitted is None:
            break
        chunk = min(admitted.prompt, budget)
        prefill.append((admitted, chunk))
        budget -= chunk
    if not decode and not prefill:
        return None
    return _decode_batch(decode, prefill)
