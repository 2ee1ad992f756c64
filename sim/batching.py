"""How a slot forms its next batch: the batch policies, as values (`BatchPolicy`). A policy owns its batch
formation, whether a fast-forward span's formations would each try to admit the queue's head, and which requests
fit a batch at all.

- `chunked` (vLLM V1, Sarathi-Serve): running requests first, in the order they were admitted (a decode takes one
  token, an unfinished prefill the rest of its prompt up to the budget), then new prompts, chunked to fill
  `max_batched_tokens`; decodes never stall behind a whole prompt.
- `prefill_first` (vLLM V0 without chunked prefill): when waiting requests can be admitted, the next batch
  prefills them whole and the running decodes wait for it.
"""

from __future__ import annotations

from splitsim.errors import ScenarioError
from splitsim.sim.scheduler import Batch, Policy, Request, SchedulerConfig, SlotScheduler, batch_of


class BatchPolicy:
    """One of the closed set of batch policies, picked with `match`."""

    __slots__ = ("name",)

    def __init__(self, name: Policy) -> None:
        self.name = name

    def form(self, slot: SlotScheduler, now: float) -> Batch | None:
        """`slot`'s next batch (None: nothing to run), admitting what fits."""
        match self.name:
            case "chunked":
                return _chunked(slot, now)
            case "prefill_first":
                return _prefill_first(slot, now)
        raise ValueError(f"unknown batch policy {self.name!r}")

    def admits_each_step(self, slot: SlotScheduler, decodes: int) -> bool:
        """Whether each formation of a fast-forward span of `decodes` decodes tries to admit the queue's head (and,
        its blocks wanting, fails: counted in `kv_blocked`). It needs a free batch place; `chunked` tries while the
        budget outlasts the decodes, `prefill_first` when the head's prompt fits the budget whole."""
        if not slot.waiting or len(slot.running) >= slot.config.max_num_seqs:
            return False
        budget = slot.config.max_batched_tokens
        match self.name:
            case "chunked":
                return budget > decodes
            case "prefill_first":
                head = slot.waiting[0]
                return head.prompt + head.generated <= budget
        raise ValueError(f"unknown batch policy {self.name!r}")

    def check_fit(self, config: SchedulerConfig, longest: int, longest_prompt: int) -> None:
        """Without chunking a whole prompt (after a preemption: prompt and output so far) must fit one batch."""
        if self.name != "prefill_first":
            return
        on_demand = config.kv_allocation == "on_demand"
        need = longest if on_demand else longest_prompt
        what = "prompt + output (a preempted request prefills both)" if on_demand else "prompt"
        if need > config.max_batched_tokens:
            raise ScenarioError(
                f"workload: a {what} of {need} tokens exceeds scheduler.max_batched_tokens = "
                f"{config.max_batched_tokens} with scheduler.policy = prefill_first (raise max_batched_tokens "
                f"to at least {need} or use policy chunked)")


def _chunked(slot: SlotScheduler, now: float) -> Batch | None:
    budget = slot.config.max_batched_tokens
    running = slot.running
    # Decodes take one token each, in admission order. At most one request is still prefilling (a prompt
    # being chunked, a recompute), and it is the newest: a request is admitted only when the budget
    # outlasts every earlier prompt, only the last one admitted can be cut short, and preemption takes the
    # newest. So `running` is decodes then that prompt, and vLLM's single walk in admission order is: the
    # decodes, then the prompt, then new prompts.
    if slot.needs_block:
        slot.grow_decodes()
    split = len(running)
    while split and not running[split - 1].decoding:
        split -= 1
    decode = running[:split]
    context = slot.context
    every_decode = split <= budget
    if not every_decode:  # more decodes than tokens: the newest wait
        del decode[budget:]
        context = sum(request.prompt + request.generated for request in decode)
    budget -= len(decode)
    prefill: list[tuple[Request, int]] = []
    if split < len(running) and budget > 0:  # the one prompt still prefilling: only the newest can be
        request = running[split]
        tokens = min(request.prompt + request.generated - request.computed, budget)
        if slot.room_for(request, request.computed + tokens):  # else it was the one preempted
            prefill.append((request, tokens))
            budget -= tokens
    while budget > 0 and not slot.preempted and slot.waiting:
        head = slot.waiting[0]
        tokens = min(head.prompt + head.generated, budget)
        if slot.admit(tokens, now) is None:
            break
        prefill.append((head, tokens))
        budget -= tokens
    if not decode and not prefill:
        return None
    return batch_of(decode, context, prefill, every_decode, slot.local_context(decode), slot.local)

def _prefill_first(slot: SlotScheduler, now: float) -> Batch | None:
    prefill: list[tuple[Request, int]] = []
    total = 0
    while slot.waiting:
        head = slot.waiting[0]
        tokens = head.prompt + head.generated
        if total + tokens > slot.config.max_batched_tokens or slot.admit(tokens, now) is None:
            break
        prefill.append((head, tokens))
        total += tokens
    if prefill:
        return batch_of([], 0, prefill, slot.context == 0, 0, slot.local)  # the decodes wait
    if slot.needs_block:
        slot.grow_decodes()
    decode = list(slot.running)
    return batch_of(decode, slot.context, [], True, slot.local_context(decode)) if decode else None
