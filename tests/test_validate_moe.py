"""The expert-parallel MoE block in real torch.distributed processes (gloo, CPU) gives, on every rank's own
tokens, the output of a separately written single-process reference with the same weights, at EP 1, 2 and 4;
and the reference itself matches a hand-written dense mixture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from splitsim.models.spec import MoeSpec
from splitsim.validate.dist import launch
from splitsim.validate.moe import EPGroup, MoeBlock, MoeWeights, ep_moe_outputs, expert_range, reference_moe, shard_moe
from splitsim.validate.timing import OpRecorder, PerfCounterTimer

pytestmark = pytest.mark.slow  # torch: expert-parallel ranks against the reference

HIDDEN = 32
MOE = MoeSpec(num_experts=8, top_k=2, intermediate_size=48)
SEED = 13
MARGIN = 1e-3  # between a token's k-th and (k+1)-th router logit: float32 and float64 routing then agree
EP_OPS = ["router", "moe_dispatch", "experts_gate_up", "experts_act", "experts_down", "moe_combine"]


def _weights(moe: MoeSpec = MOE) -> MoeWeights:
    return MoeWeights.random(HIDDEN, moe, SEED)


def _pool() -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate tokens (unit-variance, as after the post-attention norm) whose top-k choice is clear, and the
    experts each chooses."""
    x = torch.randn(400, HIDDEN, generator=torch.Generator().manual_seed(5))
    logits = x.double() @ _weights().router.double().T
    top = logits.topk(MOE.top_k + 1, dim=-1)
    clear = top.values[:, -2] - top.values[:, -1] > MARGIN
    return x[clear], top.indices[clear, :MOE.top_k]


def _tokens(counts: tuple[int, ...], only: dict[int, range]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Different tokens for each rank, counts[r] of them; those of a rank in `only` choose only experts in
    only[r]. Returns each rank's tokens and their chosen experts."""
    pool, chosen = _pool()
    free = list(range(len(pool)))
    tokens, experts = [], []
    for rank, n in enumerate(counts):
        allowed = only.get(rank, range(MOE.num_experts))
        picked = [i for i in free if all(int(e) in allowed for e in chosen[i])][:n]
        assert len(picked) == n, "the pool is too small for this case"
        free = [i for i in free if i not in picked]
        tokens.append(pool[picked])
        experts.append(chosen[picked])
    return tokens, experts


@pytest.mark.parametrize(("counts", "only"), [
    ((6,), {}),
    ((5, 3), {1: range(4, 8)}),  # rank 1's tokens stay on its own experts: it sends nothing to rank 0
    ((5, 3, 0, 7), {1: range(0, 4)}),  # rank 1 sends nothing to ranks 2 and 3; rank 2 has no tokens at all
    ((4, 2), {0: range(0, 4), 1: range(0, 4)}),  # rank 1's experts get no token: it receives nothing
], ids=["ep1", "ep2", "ep4-uneven-with-an-empty-rank", "ep2-idle-experts"])
def test_expert_parallel_output_matches_reference(counts: tuple[int, ...], only: dict[int, range]):
    ep = len(counts)
    tokens, experts = _tokens(counts, only)
    if ep > 1:  # the case's premise: some rank with tokens sends none of them to some rank
        traffic = [torch.bincount(e.flatten() // (MOE.num_experts // ep), minlength=ep).tolist() for e in experts]
        assert any(counts[r] and 0 in traffic[r] for r in range(ep))
    results = launch(ep_moe_outputs, ep, "cpu", HIDDEN, MOE, SEED, tokens, torch.float32)
    for rank, (out, ops) in enumerate(results):
        assert out.shape == (counts[rank], HIDDEN) and out.dtype == torch.float32
        assert ops == (EP_OPS if ep > 1 else [op for op in EP_OPS if op not in ("moe_dispatch", "moe_combine")])
    got = torch.cat([out for out, _ in results])
    expected = reference_moe(torch.cat(tokens), _weights(), MOE.top_k)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_one_rank_runs_no_collective_and_keeps_the_batch_shape():
    """At ep = 1 the block runs with no process group at all (any collective would raise), on [b, s, h]."""
    assert not torch.distributed.is_initialized()
    weights = _weights()
    block = shard_moe(weights, 3, MOE.top_k, EPGroup(0, 1))
    x, _ = _pool()
    recorder = OpRecorder(PerfCounterTimer())
    with torch.inference_mode():
        out = block(x[:12].view(3, 4, HIDDEN), recorder)
    assert out.shape == (3, 4, HIDDEN)
    torch.testing.assert_close(out.view(12, HIDDEN).double(), reference_moe(x[:12], weights, MOE.top_k),
                               rtol=1e-5, atol=1e-5)
    assert [(op, layer) for op, layer, _ in recorder.collect()] == [
        ("router", 3), ("experts_gate_up", 3), ("experts_act", 3), ("experts_down", 3)]


def test_reference_is_the_dense_mixture_with_every_expert_and_renormalises_the_top_k():
    """With top_k = E every expert runs on every token and the weights are the softmax itself: the reference
    equals Σ_e softmax_e · expert_e(x), computed densely. With top_k = 2 it is the two chosen experts' outputs
    weighted p_i / (p_1 + p_2), which differs from the dense mixture."""
    dense_moe = MOE.model_copy(update={"top_k": MOE.num_experts})
    weights = _weights(dense_moe)
    x = torch.randn(9, HIDDEN, generator=torch.Generator().manual_seed(8)).double()
    router, gate_up, down = weights.router.double(), weights.gate_up.double(), weights.down.double()
    f = MOE.intermediate_size
    gate = torch.einsum("th,efh->etf", x, gate_up[:, :f])
    up = torch.einsum("th,efh->etf", x, gate_up[:, f:])
    each = torch.einsum("etf,ehf->eth", F.silu(gate) * up, down)  # every expert on every token
    probs = torch.softmax(x @ router.T, dim=-1)
    dense = torch.einsum("te,eth->th", probs, each)
    torch.testing.assert_close(reference_moe(x, weights, dense_moe.num_experts), dense, rtol=1e-12, atol=1e-12)

    top2 = reference_moe(x, weights, 2)
    p, e = probs.topk(2, dim=-1)
    by_hand = torch.stack([(p[t, 0] * each[e[t, 0], t] + p[t, 1] * each[e[t, 1], t]) / p[t].sum()
                           for t in range(len(x))])
    torch.testing.assert_close(top2, by_hand, rtol=1e-12, atol=1e-12)
    assert (top2 - dense).abs().max() > 1e-2


def test_experts_are_contiguous_slices_of_the_same_seeded_weights():
    assert [expert_range(8, 4, r) for r in range(4)] == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    with pytest.raises(ValueError, match="do not split evenly"):
        expert_range(8, 3, 0)
    full, again = _weights(), _weights()
    assert all(torch.equal(a, b) for a, b in zip((full.router, full.gate_up, full.down),
                                                  (again.router, again.gate_up, again.down)))
    assert not torch.equal(MoeWeights.random(HIDDEN, MOE, SEED + 1).router, full.router)
    part = full.experts(range(4, 6))
    assert torch.equal(part.router, full.router) and torch.equal(part.down, full.down[4:6])
    assert part.gate_up.shape == (2, 2 * MOE.intermediate_size, HIDDEN)
    with pytest.raises(ValueError, match="holds 2 experts"):
        MoeBlock(0, full.experts(range(2, 3)), MOE.num_experts, MOE.top_k, EPGroup(1, 4))
