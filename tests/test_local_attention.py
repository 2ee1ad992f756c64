"""Sliding-window and chunked attention (issue 11): a window bounds both the attention work and the KV cache.
Closed forms against loops over positions, config rules as transformers writes them, the batch's local context
against the requests', the KV pool's blocks against a search, and runs where the window shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import scenario_dict
from splitsim import simulate
from splitsim.models import ops
from splitsim.models.ops import BatchShape, Sharding
from splitsim.models.spec import ModelSpec, load_model
from splitsim.scenario import scenario_from_dict
from splitsim.sim.costs import StageCosts
from splitsim.sim.kv_cache import WindowedKvManager, kv_tokens
from splitsim.sim.plan import build_plan
from splitsim.sim.scheduler import Request

BASE = {"architectures": ["MistralForCausalLM"], "hidden_size": 1024, "intermediate_size": 2048,
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 32000,
        "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}


def _seen(position: int, kind: str, span: int) -> int:
    """Positions the token at `position` (from 0) attends to, counted one by one."""
    if kind == "sliding":
        return sum(1 for p in range(position + 1) if position - p < span)
    return sum(1 for p in range(position + 1) if p // span == position // span)


@pytest.mark.parametrize("kind", ["sliding", "chunked"])
@pytest.mark.parametrize(("new", "cached", "span"), [(1, 0, 8), (5, 0, 8), (20, 0, 8), (3, 6, 8), (7, 30, 8),
                                                      (64, 100, 16), (1, 8, 8), (9, 7, 8)])
def test_prefill_pairs_and_decode_positions_count_what_each_token_sees(kind, new, cached, span):
    by_hand = sum(_seen(p, kind, span) for p in range(cached, cached + new))
    assert ops._prefill_pairs(new, cached, kind, span) == by_hand
    context = cached + new  # a decoding token at position context − 1
    assert ops.local_positions(context, kind, span) == _seen(context - 1, kind, span)


@pytest.mark.parametrize("local", [None, ("sliding", 8), ("chunked", 8), ("sliding", 128), ("chunked", 100)])
def test_a_batch_carries_its_chunks_pair_sums(local):
    """The sums `BatchShape.of` takes when the batch is formed, against a loop over its chunks' tokens one by one."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        chunks = tuple((int(rng.integers(1, 300)), int(rng.integers(0, 1000))) for _ in range(rng.integers(1, 5)))
        shape = BatchShape.of(chunks, 3, 900, 24, local)
        full_pairs = sum(p + 1 for new, cached in chunks for p in range(cached, cached + new))
        assert (shape.prefill, shape.num_decode, shape.decode_context, shape.decode_context_local) == (
            chunks, 3, 900, 24)
        assert shape.prefill_tokens == sum(new for new, _ in chunks) and shape.num_tokens == 3 + shape.prefill_tokens
        assert shape.prefill_cached == sum(cached for _, cached in chunks)
        assert shape.prefill_pairs == full_pairs
        if local is None:
            assert shape.local_pairs == shape.local_cached == 0
            continue
        kind, span = local
        assert shape.local_pairs == sum(_seen(p, kind, span) for new, cached in chunks
                                        for p in range(cached, cached + new))
        # the cached positions whose K/V a local layer reads (models/ops.py: the last `span` of them in a window,
        # those of the chunk the first new token is in), counted one by one
        assert shape.local_cached == sum(cached - p <= span if kind == "sliding" else p // span == cached // span
                                         for _, cached in chunks for p in range(cached))


@pytest.mark.parametrize(("name", "tp", "kv"), [("llama-3-70b", 1, "bf16"), ("llama-3-70b", 8, "fp8"),
                                                ("deepseek-v3", 8, "bf16"), ("gpt-oss-20b", 2, "bf16"),
                                                ("llama-4-scout", 4, "bf16")])
def test_prefill_attention_from_the_sums_is_the_chunk_loop_bit_for_bit(name, tp, kv):
    """Prefill attention priced from the batch's integer sums gives the FLOPs and bytes that summing the chunks in
    floats gave, to the bit, in full and local layers; past 2^53 it sums the chunks."""
    model = load_model(name)
    sharding = Sharding(tp, "bf16", kv, "bf16")
    priced = ops.PrefillAttention.of(model, sharding)
    kinds = ["full"] + ([model.local_attention[0]] if model.local_attention else [])
    rng = np.random.default_rng(11)
    for _ in range(300):
        chunks = tuple((int(rng.integers(1, 9000)), int(rng.integers(0, 200_000))) for _ in range(rng.integers(1, 9)))
        shape = BatchShape.of(chunks, local=model.local_attention)
        for kind in kinds:
            loop = ops._prefill_by_chunk(model, shape, sharding, kind)
            assert priced.exact(shape, kind) == loop, (chunks, kind)
            assert ops.attention(model, shape, sharding, kind)[0].flops == loop[0]
    huge = BatchShape.of(((1 << 20, 1 << 40), (3, 5)), local=model.local_attention)
    for kind in kinds:
        if kind == "full":
            assert priced.exact(huge, kind) is None  # 2^53 or more: not exact as one float, so by chunk
        assert priced.work(model, huge, sharding, kind) == ops._prefill_by_chunk(model, huge, sharding, kind)


def test_a_batch_with_chunks_takes_its_sums():
    with pytest.raises(ValueError, match="BatchShape.of"):
        BatchShape(prefill=((10, 0),))
    model = load_model("gpt-oss-20b")
    priced = ops.PrefillAttention.of(model, Sharding(1, "bf16", "bf16", "bf16"))
    with pytest.raises(ValueError, match="local sums"):  # formed without the model's window
        priced.exact(BatchShape.of(((10, 0),)), "sliding")


def test_config_rules_decide_which_layers_slide():
    mistral = ModelSpec.from_hf_config(BASE | {"sliding_window": 4096}, "m")
    assert mistral.layer_attention == ("sliding",) * 4 and mistral.sliding_window == 4096
    assert ModelSpec.from_hf_config(BASE | {"sliding_window": None}, "m").local_attention is None
    gemma2 = ModelSpec.from_hf_config(BASE | {"architectures": ["Gemma2ForCausalLM"], "sliding_window": 4096}, "g")
    assert gemma2.layer_attention == ("sliding", "full", "sliding", "full")  # transformers: not layer_idx % 2
    gemma3 = ModelSpec.from_hf_config(BASE | {"architectures": ["Gemma3ForCausalLM"], "sliding_window": 512,
                                              "sliding_window_pattern": 2}, "g")
    assert gemma3.layer_attention == ("sliding", "full", "sliding", "full")  # every 2nd layer global
    qwen = BASE | {"architectures": ["Qwen2ForCausalLM"], "sliding_window": 4096, "max_window_layers": 2}
    assert ModelSpec.from_hf_config(qwen, "q").local_attention is None  # use_sliding_window false by default
    assert ModelSpec.from_hf_config(qwen | {"use_sliding_window": True}, "q").layer_attention == (
        "full", "full", "sliding", "sliding")
    typed = BASE | {"sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"] * 2}
    assert ModelSpec.from_hf_config(typed, "t").layer_types == ("dense/sliding", "dense") * 2
    with pytest.raises(ValueError, match="layer_types = .*for each of the 4 layers"):
        ModelSpec.from_hf_config(typed | {"layer_types": ["sliding_attention"]}, "t")
    with pytest.raises(ValueError, match="lacks sliding_window"):
        ModelSpec.from_hf_config(typed | {"sliding_window": None}, "t")
    with pytest.raises(ValueError, match="layer_types = "):  # not a name at all
        ModelSpec.from_hf_config(typed | {"layer_types": [["x"]] * 4}, "t")
    with pytest.raises(ValueError, match="distinct layers"):  # a spec given inline must not repeat a layer
        ModelSpec.model_validate(mistral.model_dump() | {"local_layers": (0, 0, 1)})
    scout = json.loads((Path(__file__).parents[1] / "models" / "catalog" / "llama-4-scout" / "config.json").read_text())
    text = {k: v for k, v in scout["text_config"].items() if k != "num_local_experts"}
    with pytest.raises(ValueError, match="lacks num_local_experts"):
        ModelSpec.from_hf_config(scout | {"text_config": text}, "l")


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """A Mistral-like model with a 256-position window on every other layer."""
    path = tmp_path_factory.mktemp("m") / "config.json"
    path.write_text(json.dumps(BASE | {"sliding_window": 256,
                                       "layer_types": ["sliding_attention", "full_attention"] * 2}))
    return str(path)


def test_a_window_bounds_decode_attention(windowed):
    """A sliding layer's decode costs the same for contexts of 300 and 3,000 (both beyond 256 positions); a full
    layer's grows with the context."""
    plan = build_plan(scenario_from_dict(scenario_dict(model=windowed))).pool
    cost = StageCosts.of(plan, 0, 0)
    short = BatchShape(num_decode=4, decode_context=4 * 300, decode_context_local=4 * 256)
    long = BatchShape(num_decode=4, decode_context=4 * 3000, decode_context_local=4 * 256)
    assert cost.attention_times(short, "dense/sliding") == cost.attention_times(long, "dense/sliding")
    assert cost.attention_times(long, "dense")[1] > cost.attention_times(short, "dense")[1]
    model = load_model(windowed)
    decode = ops.attention(model, long, Sharding(1, "bf16", "bf16", "bf16"), "sliding")[1]
    assert decode.flops == 2 * 8 * (128 + 128) * 4 * 256  # 8 heads of 128, 256 positions each


def test_each_batch_carries_what_its_decodes_see(windowed):
    """Six equal requests prefilled together then decoding in step: each batch of n decodes at context c each
    (the scheduler's own Σ context, n·c) sees n·min(c, 256) positions in a sliding layer."""
    from splitsim.sim import batching

    seen: list[tuple[int, int, int]] = []
    original = batching.batch_of

    def spy(decode, context, prefill, every_decode, local=0, attention=None):
        batch = original(decode, context, prefill, every_decode, local, attention)
        if decode:
            seen.append((batch.shape.decode_context_local, context, len(decode)))
        return batch

    scenario = scenario_from_dict(scenario_dict(model=windowed, workload={
        "num_requests": 6, "rate": 0, "prompt_tokens": 200, "output_tokens": 120},
        scheduler={"policy": "prefill_first"}, sim={"fast_forward": False}))
    batching.batch_of = spy
    try:
        simulate(scenario)
    finally:
        batching.batch_of = original
    assert len(seen) == 119 and all(n == 6 and context % 6 == 0 for _, context, n in seen)
    assert [local for local, _, _ in seen] == [6 * min(context // 6, 256) for _, context, _ in seen]
    assert seen[0][1] == 6 * 201 and seen[-1][1] == 6 * 319  # the window binds for the last 63 steps


def test_the_kv_pool_holds_the_window_only_on_local_layers():
    """2 full and 2 local layers, a window of 100 positions: t tokens hold (2t + 2·min(t, 100))/4 tokens of
    every layer; the room a request's blocks leave is the most tokens they hold (searched here)."""
    pool = WindowedKvManager(1000, 16, ((2, 2),), 100)
    for tokens in (1, 50, 100, 101, 150, 1000, 5000):
        assert kv_tokens(tokens, 2, 2, 100) == -(-(2 * tokens + 2 * min(tokens, 100)) // 4)
    for blocks in range(1, 60):
        most = max(t for t in range(0, 20000) if kv_tokens(t, 2, 2, 100) <= blocks * 16)
        assert pool._tokens_in(blocks) == most
    request = Request(0, 0.0, 400, 100)
    assert pool.allocate(request, 400) and request.kv_blocks == -(-kv_tokens(400, 2, 2, 100) // 16)
    assert request.room == pool._tokens_in(request.kv_blocks) - 400
    everything_local = WindowedKvManager(10, 16, ((0, 4),), 100)
    fresh = Request(1, 0.0, 400, 100)
    assert everything_local.allocate(fresh, 10**6) and fresh.kv_blocks == 7  # 100 positions, whatever the length
    assert fresh.room > 10**9  # it never needs another block
    at_a_block_edge = WindowedKvManager(10, 16, ((0, 4),), 32)  # a span of whole blocks: holding it is enough
    edge = Request(2, 0.0, 500, 10)
    assert at_a_block_edge.allocate(edge, 500) and edge.kv_blocks == 2 and edge.room > 10**9


def test_each_pipeline_stage_holds_its_own_layers():
    """Two stages, one of full layers only, one of local ones: a block is 16 tokens on both, and the full stage
    needs every token — a long request takes as many blocks as without windows."""
    pool = WindowedKvManager(1000, 16, ((2, 0), (0, 2)), 100)
    request = Request(0, 0.0, 4000, 10)
    assert pool.allocate(request, 4000) and request.kv_blocks == 250 and request.room == 0


def test_a_windowed_model_holds_more_long_requests(windowed, tmp_path):
    full = tmp_path / "config.json"
    full.write_text(json.dumps(BASE))
    plans = [build_plan(scenario_from_dict(scenario_dict(model=m))).pool for m in (windowed, str(full))]
    assert plans[0].kv_cache_tokens == plans[1].kv_cache_tokens  # the same bytes per token on every layer
    assert plans[0].max_concurrency(8000) > 1.9 * plans[1].max_concurrency(8000)  # half the layers keep 271


def test_stage_and_layer_agree_and_the_fast_forward_folds_steps(windowed):
    def run(granularity):
        return simulate(scenario_from_dict(scenario_dict(
            model=windowed, engine="vllm", workload={"num_requests": 12, "rate": 20.0, "prompt_tokens": 600,
                                                     "output_tokens": 40},
            scheduler={"policy": "chunked", "max_batched_tokens": 512}, sim={"granularity": granularity})))

    stage, layer = run("stage"), run("layer")
    np.testing.assert_allclose(stage.requests["finish_s"], layer.requests["finish_s"], rtol=1e-9)
    assert stage.meta["fast_forward"]["steps_skipped"] > 0  # tests/test_fast_forward.py holds it exact


def test_the_advisors_bound_prices_local_layers_as_the_engine_does():
    """The bound must not be slower than the engine (else it prunes layouts that could win): at a context of
    8,001 a sliding layer of gpt-oss sees 128 positions, and the bound's decode step counts just that."""
    from splitsim.sim.bounds import _decode_step_s, _fewest_seen

    plan = build_plan(scenario_from_dict(scenario_dict(model="gpt-oss-20b"))).pool
    cost = StageCosts.of(plan, 0, 0)
    engine = sum(cost.stage_time(BatchShape(num_decode=64, decode_context=64 * 8001,
                                            decode_context_local=64 * 128), 64))
    everything_full = sum(cost.stage_time(BatchShape(num_decode=64, decode_context=64 * 8001,
                                                     decode_context_local=64 * 8001), 64))
    seen = _fewest_seen(plan, 8000, 100)
    assert seen == 128 and _decode_step_s(cost, 64, 8001, seen) == pytest.approx(engine, rel=1e-12)
    assert engine < 0.9 * everything_full


def test_the_bound_takes_a_chunks_fewest_positions():
    """A chunked layer's view falls back to one position where a chunk begins: a decode crossing position 8192
    sees as little as 1, one inside a chunk at least what its first token sees."""
    from splitsim.sim.bounds import _fewest_seen

    plan = build_plan(scenario_from_dict(scenario_dict(model="llama-4-scout", cluster="h100-nvlink-node",
                                                       parallel={"tp": 8}, precision={"weights": "fp8"}))).pool
    assert _fewest_seen(plan, 8000, 500) == 1  # positions 8001…8500 cross 8192
    assert _fewest_seen(plan, 8200, 500) == 8201 - 8192  # inside the second chunk
