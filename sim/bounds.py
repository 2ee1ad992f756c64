"""What a layout can do at best, from the cost model alone: the advisor skips a candidate whose best is worse
than a result it has already simulated.

Decode steps set the limits. A stage takes at least t_s(b) on a micro-batch of b decodes, each at its
shortest context (the shortest prompt plus one token): a step's time never falls as its batch gains tokens
(prefill chunks) or context. So, per replica:
- decode tokens a second are at most max_b b / t_s(b) on every stage s: over any mix of micro-batches, tokens
  over busy time is a mediant of the b / t_s(b);
- a request's time per output token is at least Σ_s t_s(b) of the micro-batch it rides in, so under a TPOT
  or ITL limit L (a percentile of the steady state, where batches hold steady) only b with Σ_s t_s(b) ≤ L
  count;
- each request's first token comes from its prefill: output tokens are at most OSL/(OSL − 1) times the
  decode tokens (OSL the shortest output);
- a request's E2E is at least OSL − 1 of the quickest such rounds.
Every b from 1 to the most a micro-batch holds is timed (StageCosts.decode_stage_times): a step's time is not
monotone in b (a GEMM of few rows fills its tiles poorly, hardware/gpu.py), so no grid of sizes would bound
the ones between. Hand-offs, prefill work and queueing are left out: each only adds time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from splitsim.models.ops import BatchShape, local_positions
from splitsim.sim.costs import StageCosts
from splitsim.sim.plan import Pool


@dataclass(frozen=True)
class Bound:
    tokens_per_s_per_gpu: float  # output tokens/s per GPU no run exceeds (under the TPOT/ITL limit, if any)
    step_s: float  # the quickest decode step a request can take through every stage (any micro-batch size)
    decode_steps: int  # the fewest decode steps of a request

    @property
    def e2e_s(self) -> float:
        """No request finishes sooner."""
        return self.decode_steps * self.step_s

    def limits(self, objective: str, output_tokens: int) -> float:
        """The best score the advisor's objective can give this layout (higher is better)."""
        match objective:
            case "latency":
                return -self.e2e_s
            case "goodput":  # requests/s per GPU: output tokens over each request's (at least OSL) tokens
                return self.tokens_per_s_per_gpu / output_tokens
        return self.tokens_per_s_per_gpu


def decode_bound(pool: Pool, prompt_tokens: int, output_tokens: int, step_limit_s: float = math.inf) -> Bound:
    """The layout's limits for requests of at least `prompt_tokens` and `output_tokens` tokens, with every
    request's time per output token at most `step_limit_s`."""
    costs = [StageCosts.of(pool, 0, s) for s in range(pool.pp)]
    context = prompt_tokens + 1
    sched = pool.scheduler
    kv_seqs = pool.kv_blocks_per_slot * pool.block_size // pool.kv_tokens_needed(context)
    largest = max(1, min(sched.max_num_seqs, sched.max_batched_tokens, kv_seqs))
    sizes = np.arange(1, largest + 1)
    seen = _fewest_seen(pool, prompt_tokens, output_tokens)
    stage_s = np.array([[_decode_step_s(cost, b, context, seen) for cost in costs]  # [size, stage]
                        for b in range(1, largest + 1)])
    round_s, slowest_s = stage_s.sum(axis=1), stage_s.max(axis=1)
    meets = round_s <= step_limit_s
    decode_rate = float((sizes[meets] / slowest_s[meets]).max()) if meets.any() else 0.0
    if output_tokens <= 1:  # no decode steps: prefill alone, which this bound does not price
        return Bound(math.inf, float(round_s.min()), 0)
    per_gpu = decode_rate * output_tokens / (output_tokens - 1) / (pool.tp * pool.pp)
    return Bound(per_gpu, float(round_s.min()), output_tokens - 1)


def _fewest_seen(pool: Pool, prompt_tokens: int, output_tokens: int) -> int:
    """The fewest positions a sliding or chunked layer shows a decoding token of such a request (0 without such
    layers): a window's view only grows with the context, a chunk's falls back to 1 where a chunk begins."""
    local = pool.model.local_attention
    if local is None:
        return 0
    kind, span = local
    first, last = prompt_tokens + 1, prompt_tokens + max(1, output_tokens)
    if kind == "chunked" and (first - 1) // span != (last - 1) // span:  # a chunk begins within the decode
        return 1
    return local_positions(first, kind, span)


def _decode_step_s(cost: StageCosts, num_decode: int, context: int, seen: int = 0) -> float:
    """A decode step of `num_decode` sequences at `context` positions each (`seen` in a local layer)."""
    if cost.model.local_attention is not None:  # local layers see fewer positions: priced as the engine does
        shape = BatchShape(num_decode=num_decode, decode_context=num_decode * context,
                           decode_context_local=num_decode * seen)
        compute_s, comm_s = cost.stage_time(shape, num_decode)
        return compute_s + comm_s
    compute, comm = cost.decode_stage_times(num_decode, np.array([num_decode * context]))
    return float(compute[0]) + comm
