"""The sharded model in real torch.distributed processes (gloo, CPU) gives the logits of a separately
written single-process reference with the same weights, for TP ∈ {1, 2} × PP ∈ {1, 2} and with KV heads
replicated (tp > h_kv)."""

from __future__ import annotations

import pytest
import torch

from splitsim.models.spec import ModelSpec
from splitsim.validate.dist import launch
from splitsim.validate.parallel import TPGroup, head_split, layout_problem, vocab_range
from splitsim.validate.pipeline import stage_layers, teacher_forced_logits
from splitsim.validate.reference import reference_logits
from splitsim.validate.weights import RandomWeights

pytestmark = pytest.mark.slow  # torch: sharded forward passes against the reference

# vocab 127 leaves the last TP rank a padded vocabulary shard; 3 layers split 2 + 1 over two stages
TINY = ModelSpec(name="tiny", hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4, num_kv_heads=2,
                 vocab_size=127, max_position_embeddings=64)
SEED = 11
PROMPT_LEN, DECODE_STEPS, BATCH = 6, 3, 2


def _tokens(spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, spec.vocab_size, (BATCH, PROMPT_LEN + DECODE_STEPS), generator=g)
    return ids[:, :PROMPT_LEN], ids[:, PROMPT_LEN:]


def _expected(spec: ModelSpec) -> list[torch.Tensor]:
    """Reference logits [b, V] of the prompt's last position, then of each fed decode token."""
    prompt, decode = _tokens(spec)
    weights = RandomWeights(spec, SEED, torch.float32).full_model(spec.num_layers)
    logits = reference_logits(spec, weights, spec.num_layers, torch.cat([prompt, decode], dim=1))
    return [logits[:, PROMPT_LEN - 1 + i] for i in range(DECODE_STEPS + 1)]


@pytest.mark.parametrize(("spec", "tp", "pp"), [
    (TINY, 1, 1), (TINY, 2, 1), (TINY, 1, 2), (TINY, 2, 2),
    (TINY, 4, 1),  # 2 KV heads on 4 ranks: each replicated on two
], ids=["tp1-pp1", "tp2-pp1", "tp1-pp2", "tp2-pp2", "tp4-kv-replicated"])
def test_sharded_logits_match_reference(spec: ModelSpec, tp: int, pp: int):
    prompt, decode = _tokens(spec)
    results = launch(teacher_forced_logits, tp * pp, "cpu", spec, spec.num_layers, tp, pp, SEED, prompt, decode,
                     torch.float32)
    got = [r for r in results if r is not None]
    assert len(got) == 1, "exactly one rank (the last stage's TP rank 0) returns logits"
    expected = _expected(spec)
    assert len(got[0]) == len(expected)
    for step, (g, e) in enumerate(zip(got[0], expected)):
        assert g.shape == (BATCH, spec.vocab_size)
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")


def test_the_reference_is_not_trivially_matched():
    """Logits that a wrong model could hit by chance would make the comparison above weak: they differ
    between steps, between sequences, with the seed, and a changed KV head changes them."""
    expected = _expected(TINY)
    assert all((expected[i] - expected[i + 1]).abs().max() > 0.1 for i in range(len(expected) - 1))
    assert (expected[0][0] - expected[0][1]).abs().max() > 0.1
    other = reference_logits(TINY, RandomWeights(TINY, SEED + 1, torch.float32).full_model(3), 3,
                             torch.cat(_tokens(TINY), dim=1))
    assert (other[:, PROMPT_LEN - 1] - expected[0]).abs().max() > 0.1
    weights = RandomWeights(TINY, SEED, torch.float32).full_model(3)
    weights["layers.0.wk"][16:] = weights["layers.0.wk"][:16].clone()  # KV head 1 := KV head 0
    swapped = reference_logits(TINY, weights, 3, torch.cat(_tokens(TINY), dim=1))
    assert (swapped[:, PROMPT_LEN - 1] - expected[0]).abs().max() > 1e-3


def test_reference_is_causal():
    prompt, decode = _tokens(TINY)
    weights = RandomWeights(TINY, SEED, torch.float32).full_model(3)
    ids = torch.cat([prompt, decode], dim=1)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % TINY.vocab_size
    a, b = reference_logits(TINY, weights, 3, ids), reference_logits(TINY, weights, 3, changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-3


def test_shards_are_slices_of_the_full_weights():
    w = RandomWeights(TINY, SEED, torch.float32)
    full_q, full_o = w.full("wq", 1), w.full("wo", 1)
    assert full_q.shape == (64, 64) and w.full("w_down", 1).shape == (64, 96)
    torch.testing.assert_close(w.slice("wq", 1, range(16, 48)), full_q[16:48], rtol=0, atol=0)
    torch.testing.assert_close(w.slice("wo", 1, range(32, 64)), full_o[:, 32:64], rtol=0, atol=0)
    assert not torch.equal(w.full("wq", 0), full_q)
    assert not torch.equal(RandomWeights(TINY, SEED + 1, torch.float32).full("wq", 1), full_q)
    tied = TINY.model_copy(update={"tie_word_embeddings": True})
    t = RandomWeights(tied, SEED, torch.float32)
    assert torch.equal(t.full("lm_head", -1), t.full("embedding", -1))


def test_head_split_replicates_kv_heads_as_vllm_does():
    spec = TINY.model_copy(update={"num_heads": 8, "num_kv_heads": 2, "hidden_size": 128})
    splits = [head_split(spec, TPGroup(rank, 4)) for rank in range(4)]
    assert [list(s.q_heads) for s in splits] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [list(s.kv_heads) for s in splits] == [[0], [0], [1], [1]]  # query heads 0-3 use KV head 0
    assert [list(s.kv_heads) for s in (head_split(spec, TPGroup(r, 2)) for r in range(2))] == [[0], [1]]
    assert [list(s.ffn) for s in splits][1] == list(range(24, 48))


def test_layout_problems_and_vocab_ranges():
    assert layout_problem(TINY, 2) is None and layout_problem(TINY, 4) is None
    assert "attention heads" in (layout_problem(TINY, 3) or "")
    assert "KV heads" in (layout_problem(TINY.model_copy(update={"num_kv_heads": 2, "num_heads": 6}), 3) or "")
    assert [vocab_range(127, TPGroup(r, 2)) for r in range(2)] == [range(0, 64), range(64, 127)]
    assert [list(stage_layers(3, 2, s)) for s in range(2)] == [[0, 1], [2]]  # vLLM: the remainder goes first
