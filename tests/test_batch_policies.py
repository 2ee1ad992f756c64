"""Exact traces of the batch policies: a few requests through one slot's scheduler, every batch's composition
written by hand from vLLM's rules (never from running the code).

- `chunked` (vLLM V1 `v1/core/sched/scheduler.py`): running requests first, in admission order (a decode takes
  one token, an unfinished prompt the rest of it up to the budget), then waiting ones FCFS, each taking
  min(its tokens, the budget left), while budget is left and fewer than max_num_seqs run. With `on_demand` KV,
  a running request whose next tokens need a block none is free for preempts the newest running request
  (itself, if it is the newest), and nothing is admitted in that step.
- `prefill_first` (vLLM V0 without chunked prefill): whole prompts FCFS while they fit max_batched_tokens,
  max_num_seqs and the KV cache; a batch with any prompt runs no decode; otherwise every running request
  decodes.

Only `SlotScheduler(config, policy, kv, ...)`, `waiting`, `next_batch`, `complete` and the batch's `prefill` / `decode`
lists are used, so the traces hold however batch formation is housed."""

from __future__ import annotations

from typing import Any

from splitsim.sim.batching import BatchPolicy
from splitsim.sim.kv_cache import PagedKvManager
from splitsim.sim.metrics import HistogramBuffer, LogHistogram
from splitsim.sim.scheduler import Occupancy, Request, SchedulerConfig, SlotScheduler

Step = tuple[tuple[int, ...], tuple[tuple[int, int], ...], tuple[int, ...]]  # decodes, (id, tokens) prefills, done


def trace(policy: Any, max_num_seqs: int, max_batched_tokens: int, kv: tuple[Any, int, int],
          requests: list[tuple[int, int]], arriving: dict[int, list[tuple[int, int]]] | None = None,
          ) -> tuple[list[Step], list[Request]]:
    """Run batches back to back until the slot has nothing to do. `requests`: (prompt, output) waiting at the
    start, ids 0, 1, ...; `arriving[n]`: more that join the queue after the n-th batch (1-based). `kv`:
    (allocation, blocks, block size). Each step is (decode ids, (id, prefill tokens), ids that finished)."""
    allocation, blocks, block = kv
    config = SchedulerConfig(policy, max_num_seqs, max_batched_tokens, allocation)
    scheduler = SlotScheduler(config, BatchPolicy(policy), PagedKvManager(blocks, block), Occupancy(),
                              HistogramBuffer(LogHistogram()))
    everyone: list[Request] = []

    def enqueue(lengths: list[tuple[int, int]], now: float) -> None:
        for prompt, output in lengths:
            everyone.append(Request(len(everyone), now, prompt, output))
            scheduler.waiting.append(everyone[-1])

    enqueue(requests, 0.0)
    steps: list[Step] = []
    while (batch := scheduler.next_batch(float(len(steps)))) is not None:
        assert len(steps) < 50, "runaway"
        done = scheduler.complete(batch, float(len(steps) + 1))
        steps.append((tuple(r.id for r in batch.decode), tuple((r.id, n) for r, n in batch.prefill),
                      tuple(sorted(r.id for r in done))))
        enqueue((arriving or {}).get(len(steps), []), float(len(steps)))
    return steps, everyone


def finished_whole(everyone: list[Request], steps: list[Step]) -> None:
    """Each request finished exactly once, with the tokens it asked for."""
    assert sorted(i for _, _, done in steps for i in done) == [r.id for r in everyone]
    assert all(r.generated == r.output for r in everyone)


def test_chunked_runs_decodes_first_then_chunks_prompts_into_the_budget_and_the_seat_limit():
    """Budget 8 tokens, 3 seats; prompts 5, 6, 3, 2 with outputs 3, 2, 2, 1.
    1. Nothing runs: R0 takes its 5 tokens, R1 the 3 left of its 6.
    2. R0 decodes (1), R1 finishes its prompt (3), R2 fits whole (3); R3 finds the 3 seats taken.
    3. Three decodes; each reaches its output (R0 3, R1 2, R2 2) and leaves.
    4. R3's prompt; its one token is its output."""
    steps, everyone = trace("chunked", 3, 8, ("on_demand", 1000, 16), [(5, 3), (6, 2), (3, 2), (2, 1)])
    assert steps == [
        ((), ((0, 5), (1, 3)), ()),
        ((0,), ((1, 3), (2, 3)), ()),
        ((0, 1, 2), (), (0, 1, 2)),
        ((), ((3, 2),), (3,)),
    ]
    finished_whole(everyone, steps)


def test_prefill_first_runs_whole_prompts_and_the_decodes_wait():
    """Budget 10 tokens, 3 seats; prompts 4, 5, 6 with outputs 3, 2, 2 waiting, and R3 (prompt 3, output 1)
    arriving after the second batch.
    1. R0 (4) and R1 (5) fit; R2's 6 would make 15 > 10.
    2. R2's whole prompt; R0 and R1 wait.
    3. R3 waits for a seat (3 run): every running request decodes; R1 and R2 reach 2 tokens.
    4. R3's prompt (R0 waits); one token, its output.
    5. R0's third token."""
    steps, everyone = trace("prefill_first", 3, 10, ("on_demand", 1000, 16), [(4, 3), (5, 2), (6, 2)],
                            arriving={2: [(3, 1)]})
    assert steps == [
        ((), ((0, 4), (1, 5)), ()),
        ((), ((2, 6),), ()),
        ((0, 1, 2), (), (1, 2)),
        ((), ((3, 3),), (3,)),
        ((0,), (), (0,)),
    ]
    finished_whole(everyone, steps)


def test_chunked_preempts_the_newest_when_a_decode_needs_a_block_and_recomputes_it():
    """5 blocks of 2 tokens, on demand; budget 16, 4 seats; R0 and R1 with prompt 3 and output 4.
    1. Both prompts: 2 blocks each (3 tokens), 1 free. Each samples token 1.
    2. Both decode: 4 tokens each still fit 2 blocks.
    3. R0 (5 tokens) takes the last block; R1 needs a third, none is free, and R1 is the newest: it is preempted
       (its 2 blocks freed) and nothing is admitted this step. R0 decodes alone.
    4. R0 decodes (6 tokens, 3 blocks); R1 now has 3 + 2 = 5 tokens to recompute, 3 blocks, 2 free: it waits.
       R0 reaches 4 tokens and frees its 3 blocks.
    5. R1 recomputes its 5 tokens (prompt and the 2 it had generated), samples its third.
    6. R1 decodes its fourth and leaves."""
    steps, everyone = trace("chunked", 4, 16, ("on_demand", 5, 2), [(3, 4), (3, 4)])
    assert steps == [
        ((), ((0, 3), (1, 3)), ()),
        ((0, 1), (), ()),
        ((0,), (), ()),
        ((0,), (), (0,)),
        ((), ((1, 5),), ()),
        ((1,), (), (1,)),
    ]
    finished_whole(everyone, steps)
    assert [r.preemptions for r in everyone] == [0, 1]


def test_prefill_first_with_reserved_kv_admits_a_request_only_when_its_whole_output_fits():
    """4 blocks of 4 tokens, reserved at admission (prompt + output); budget 32, 8 seats. R0: prompt 6,
    output 2 (8 tokens, 2 blocks); R1: 5 + 4 (3 blocks); R2: 4 + 1 (2 blocks).
    1. R0 takes 2 blocks; R1 needs 3 of the 2 left, so it and R2 behind it wait.
    2. No prompt fits: R0 decodes, finishes and frees its blocks.
    3. R1 takes 3 blocks; R2 needs 2 of the 1 left.
    4-6. R1 decodes its tokens 2, 3, 4 and frees its blocks.
    7. R2's prompt, its one token."""
    steps, everyone = trace("prefill_first", 8, 32, ("reserve", 4, 4), [(6, 2), (5, 4), (4, 1)])
    assert steps == [
        ((), ((0, 6),), ()),
        ((0,), (), (0,)),
        ((), ((1, 5),), ()),
        ((1,), (), ()),
        ((1,), (), ()),
        ((1,), (), (1,)),
        ((), ((2, 4),), (2,)),
    ]
    finished_whole(everyone, steps)
    assert [r.preemptions for r in everyone] == [0, 0, 0]


def test_chunked_admits_nothing_in_a_step_that_preempted_not_even_the_request_it_preempted():
    """5 blocks of 2 tokens, on demand; budget 4, 4 seats. R0: prompt 2, output 3; R1: prompt 8, output 1.
    1. R0's prompt (2 tokens, 1 block), R1's first 2 (1 block).
    2. R0 decodes (3 tokens: 2 blocks); R1 takes the 3 left of the budget (5 tokens: 3 blocks). None free.
    3. R0 decodes (4 tokens still fit 2 blocks); R1's next 3 need a fourth block: R1, the newest, is preempted
       and its 3 blocks freed. Its first 3 tokens would fit them now, but nothing is admitted in a step that
       preempted. R0 reaches 3 tokens and frees 2 blocks.
    4, 5. R1 recomputes its prompt from the start, 4 tokens a step, and samples its one token."""
    steps, everyone = trace("chunked", 4, 4, ("on_demand", 5, 2), [(2, 3), (8, 1)])
    assert steps == [
        ((), ((0, 2), (1, 2)), ()),
        ((0,), ((1, 3),), ()),
        ((0,), (), (0,)),
        ((), ((1, 4),), ()),
        ((), ((1, 4),), (1,)),
    ]
    finished_whole(everyone, steps)
    assert [r.preemptions for r in everyone] == [0, 1]
