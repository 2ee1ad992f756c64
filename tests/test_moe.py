"""Mixture-of-experts models (issue 11): shapes from their config.json, parameter counts against the published
figures, the experts a batch reaches, their runs split by TP or spread by EP, and the moe section's settings
(attention data-parallel: tests/test_attention_dp.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import scenario_dict
from splitsim.models import ops
from splitsim.models.ops import Sharding
from splitsim.models.spec import ModelSpec, load_model
from splitsim.scenario import scenario_from_dict
from splitsim.sim.plan import build_plan


def _mixtral_params(c: dict) -> tuple[float, float]:
    """(total, active) parameters of a Mixtral config, written out: per layer QKV and O, a router of h×E,
    E SwiGLU experts of 3·h·ffn (k of them active), two RMSNorms; embedding, LM head and the final norm."""
    h, ffn, d = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    attention = h * c["num_attention_heads"] * d * 2 + h * c["num_key_value_heads"] * d * 2
    per_layer = attention + h * c["num_local_experts"] + 2 * h
    outside = 2 * c["vocab_size"] * h + h
    layers = c["num_hidden_layers"]
    return (layers * (per_layer + c["num_local_experts"] * 3 * h * ffn) + outside,
            layers * (per_layer + c["num_experts_per_tok"] * 3 * h * ffn) + outside)


def _qwen3_moe_params(c: dict) -> tuple[float, float]:
    """The same for Qwen3-MoE, with its own head_dim and the per-head q/k RMSNorms (2·d a layer)."""
    h, ffn, d = c["hidden_size"], c["moe_intermediate_size"], c["head_dim"]
    attention = h * c["num_attention_heads"] * d * 2 + h * c["num_key_value_heads"] * d * 2 + 2 * d
    per_layer = attention + h * c["num_experts"] + 2 * h
    outside = 2 * c["vocab_size"] * h + h
    layers = c["num_hidden_layers"]
    return (layers * (per_layer + c["num_experts"] * 3 * h * ffn) + outside,
            layers * (per_layer + c["num_experts_per_tok"] * 3 * h * ffn) + outside)


@pytest.mark.parametrize(("name", "formula", "total", "active"), [
    ("mixtral-8x7b", _mixtral_params, 46.7e9, 12.9e9),  # Mistral AI's Mixtral announcement
    ("qwen3-235b-a22b", _qwen3_moe_params, 235e9, 22e9),  # the Qwen3 model card
    ("qwen3-30b-a3b", _qwen3_moe_params, None, None),  # its card's "3.3B activated" is rounded (3.35B)
])
def test_total_and_active_parameters_match_the_published_figures(name, formula, total, active):
    import json
    from importlib import resources

    config = json.loads((resources.files("splitsim.models") / "catalog" / name / "config.json").read_text())
    total_by_hand, active_by_hand = formula(config)
    if total is not None:
        assert total_by_hand == pytest.approx(total, rel=0.01) and active_by_hand == pytest.approx(active, rel=0.01)
    model = load_model(name)
    # splitsim leaves out Qwen3's q/k norms (256 parameters a layer): nothing else differs
    assert model.num_params == pytest.approx(total_by_hand, rel=1e-6)
    assert model.num_active_params == pytest.approx(active_by_hand, rel=1e-5)


def test_the_experts_a_batch_reaches_follow_the_closed_form():
    """E·(1 − (1 − k/E)^T) against routing drawn at random (seeded): T tokens each pick k distinct experts."""
    rng = np.random.default_rng(0)
    for experts, k, tokens in ((8, 2, 1), (8, 2, 5), (128, 8, 1), (128, 8, 16), (128, 8, 256)):
        drawn = [len({e for _ in range(tokens) for e in rng.choice(experts, k, replace=False)}) for _ in range(400)]
        assert ops.expected_experts(experts, k, tokens) == pytest.approx(np.mean(drawn), rel=0.02)


def test_decode_reads_the_reached_experts_weights_from_active_toward_total():
    """At batch 1 a decode step's expert GEMMs read k experts' weights; with the batch they approach all E."""
    model = load_model("qwen3-235b-a22b")
    moe = model.moe
    sharding = Sharding(1, "bf16", "bf16", "bf16")
    per_expert = 3 * model.hidden_size * moe.intermediate_size * 2  # bf16 gate, up and down of one expert

    def expert_weight_bytes(tokens: int) -> float:
        graph = {op.name: op for op in ops.layer_graph(model, "moe", tokens, sharding)}
        return sum(op.groups * op.k * op.n * op.weight_bytes for name, op in graph.items()
                   if name.startswith("experts_") and op.kind == "gemm")

    assert expert_weight_bytes(1) == pytest.approx(moe.top_k * per_expert)
    previous = 0.0
    for tokens in (1, 4, 16, 64, 256, 2048):
        reads = expert_weight_bytes(tokens)
        assert reads == pytest.approx(ops.expected_experts(moe.num_experts, moe.top_k, tokens) * per_expert)
        assert previous < reads <= moe.num_experts * per_expert
        previous = reads
    assert previous > 0.99 * moe.num_experts * per_expert


def test_config_fields_decide_which_layers_are_sparse_and_other_experts_are_refused():
    base = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
            "vocab_size": 1000, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 128}
    kinds = ModelSpec.from_hf_config(base | {"mlp_only_layers": [0], "decoder_sparse_step": 2}, "q").layer_kinds
    assert kinds == ("dense", "moe", "dense", "moe", "dense", "moe")  # transformers' Qwen3MoeDecoderLayer rule
    mixed = ModelSpec.from_hf_config(base | {"mlp_only_layers": [0]}, "q")
    assert mixed.num_params - load_dense_like(base).num_params == 5 * (
        256 * 8 + 8 * 3 * 256 * 128 - 3 * 256 * 512)  # five sparse layers in place of dense ones
    with pytest.raises(ValueError, match="num_experts_per_tok=9 is more than the 8 experts"):
        ModelSpec.from_hf_config(base | {"num_experts_per_tok": 9}, "q")
    deepseek = base | {"architectures": ["DeepseekV3ForCausalLM"], "n_routed_experts": 256, "n_group": 3}
    with pytest.raises(ValueError, match="n_group=3, topk_group=1: the 256 experts must split into n_group groups"):
        ModelSpec.from_hf_config(deepseek, "d")
    with pytest.raises(ValueError, match="num_experts_per_tok=8 is more than the experts of topk_group=1 groups"):
        ModelSpec.from_hf_config(deepseek | {"n_group": 64, "num_experts_per_tok": 8}, "d")
    with pytest.raises(ValueError, match="Glm4MoeForCausalLM is not supported"):
        ModelSpec.from_hf_config(base | {"architectures": ["Glm4MoeForCausalLM"]}, "g")
    without = {k: v for k, v in base.items() if k != "num_experts"}
    with pytest.raises(ValueError, match="lacks num_experts"):  # not read as a dense model
        ModelSpec.from_hf_config(without, "q")
    odd = ModelSpec.from_hf_config(base | {"moe_intermediate_size": 50}, "q")  # 50 does not split 4 ways
    assert "intermediate size 50 does not split over 4 ranks" in odd.tp_problem(4)
    assert odd.tp_problem(4, ep=4) is None  # whole experts on each GPU


def load_dense_like(config: dict) -> ModelSpec:
    """The same shapes with every layer dense."""
    return ModelSpec.from_hf_config({k: v for k, v in config.items() if "expert" not in k}
                                    | {"architectures": ["Qwen3ForCausalLM"]}, "dense")


def test_stage_and_layer_mode_agree_on_a_mixture_of_experts():
    from splitsim.api import simulate

    workload = {"num_requests": 8, "rate": 40.0, "prompt_tokens": {"dist": "uniform", "low": 20, "high": 300},
                "output_tokens": {"dist": "uniform", "low": 1, "high": 10}}
    runs = {}
    for granularity in ("stage", "layer"):
        data = scenario_dict(model="mixtral-8x7b", parallel={"tp": 2, "pp": 2}, workload=workload,
                             sim={"granularity": granularity})
        runs[granularity] = simulate(scenario_from_dict(data)).requests
    for column in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(runs["layer"][column], runs["stage"][column], rtol=1e-9)


def test_the_experts_run_as_one_grouped_kernel():
    """A grouped GEMM of g experts with m tokens each, on a GPU without grouped-GEMM figures: one launch, the
    experts' tiles filling the waves together, each paying its own m's small-m efficiency (hardware/gpu.py's
    dense GEMM model, written out here; tests/test_aiconfigurator.py holds the fitted grouped figures)."""
    import math

    from splitsim.hardware.catalog import load_gpu

    fitted = load_gpu("h100-sxm")
    gpu = fitted.model_copy(update={"efficiency": fitted.efficiency.model_copy(update={"grouped_gemm": {}})})
    eff = gpu.efficiency
    eta_peak, tile_m, tile_n, gamma, m_half = eff.gemm_shape("bf16")
    m, n, k, groups = 6, 384, 4096, 127.5
    tiles = math.ceil(groups * math.ceil(m / tile_m) * math.ceil(n / tile_n))
    waves = math.ceil(tiles / gpu.num_sms)
    wave = groups * m * n / (waves * gpu.num_sms * tile_m * tile_n)
    eta = eta_peak * wave ** gamma * m / (m + m_half)
    compute = groups * 2 * m * n * k / (gpu.bf16_flops_per_s * eta)
    memory = groups * ((m * k + m * n) * 2 + k * n * 2) / (gpu.memory_bw_bytes_per_s * eff.memory)
    grouped = gpu.gemm_time_s(m, n, k, weight_bytes=2.0, groups=groups)
    assert grouped == pytest.approx(max(compute, memory) + eff.launch_s, rel=1e-12)
    assert grouped < groups * gpu.gemm_time_s(m, n, k, weight_bytes=2.0)  # one launch, shared waves


def test_the_expected_maximum_of_normals_matches_the_order_statistics_tables():
    """E[max of n standard normals]: 1/√π for 2; 1.0294, 1.4236, 1.7660 for 4, 8, 16 (Harter's tables)."""
    import math

    for n, expected in ((2, 1 / math.sqrt(math.pi)), (4, 1.0294), (8, 1.4236), (16, 1.7660)):
        assert ops._max_of_normals(n) == pytest.approx(expected, abs=2e-4)


@pytest.mark.parametrize(("experts", "k", "ranks", "tokens"), [(128, 8, 8, 16), (128, 8, 8, 256), (8, 2, 2, 64),
                                                               (256, 8, 16, 512)])
def test_the_busiest_expert_rank_is_estimated_as_random_routing_loads_it(experts, k, ranks, tokens):
    """The deterministic estimate against loads drawn at random (seeded): within 6 %."""
    rng = np.random.default_rng(1)
    per_rank = experts // ranks
    ratios = []
    for _ in range(300):
        chosen = np.array([rng.choice(experts, k, replace=False) for _ in range(tokens)]).ravel()
        loads = np.bincount(chosen // per_rank, minlength=ranks)
        ratios.append(loads.max() / loads.mean())
    assert ops.expert_load(experts, k, ranks, tokens) == pytest.approx(np.mean(ratios), rel=0.06)
    assert ops.expert_load(experts, k, 1, tokens) == 1.0


def test_expert_parallelism_over_the_tp_group_gives_each_gpu_whole_experts():
    """ep = tp = 8 on Qwen3-235B: the same bytes per GPU as experts split by TP, but 16 whole experts each;
    a rank runs the reached experts among its own on the busiest rank's share of the routed tokens."""
    model = load_model("qwen3-235b-a22b")
    moe = model.moe
    assert model.layer_params_per_rank(8, "moe", ep=8) == model.layer_params_per_rank(8, "moe")
    tokens = 64
    split = {op.name: op for op in ops.layer_graph(model, "moe", tokens, Sharding(8, "bf16", "bf16", "bf16"))}
    whole = {op.name: op for op in ops.layer_graph(model, "moe", tokens, Sharding(8, "bf16", "bf16", "bf16", ep=8))}
    assert split["experts_gate_up"].n == 2 * moe.intermediate_size // 8
    assert whole["experts_gate_up"].n == 2 * moe.intermediate_size
    routed = int(np.ceil(tokens * moe.top_k / 8 * ops.expert_load(moe.num_experts, moe.top_k, 8, tokens)))
    local = moe.num_experts // 8  # the busiest rank's routed tokens reach this many of its 16 experts
    reached = local * (1 - (1 - 1 / local) ** routed)
    assert whole["experts_gate_up"].groups == pytest.approx(reached)
    assert whole["experts_gate_up"].m == -(-routed // round(reached))
    assert "mlp_allreduce" in whole  # the tokens were on every rank: the outputs are summed as under TP
    # one token of Mixtral over EP8 (an expert a GPU): the busiest GPU reads one whole expert's weights
    mixtral = load_model("mixtral-8x7b")
    one = {op.name: op for op in ops.layer_graph(mixtral, "moe", 1, Sharding(8, "bf16", "bf16", "bf16", ep=8))}
    assert one["experts_gate_up"].groups == pytest.approx(1.0) and one["experts_gate_up"].m == 1
    assert one["experts_gate_up"].n == 2 * mixtral.moe.intermediate_size


@pytest.mark.parametrize(("changes", "words"), [
    ({"parallel": {"tp": 2, "ep": 2}}, "llama-3-8b has no experts (valid: 1)"),
    ({"model": "mixtral-8x7b", "parallel": {"tp": 4, "ep": 3}}, "divisor of tp × dp = 4 GPUs (valid: 1, 2, 4)"),
    ({"model": "mixtral-8x7b", "parallel": {"tp": 1, "dp": 4, "ep": 4, "pp": 2}}, "(valid: pp = 1, or ep dividing tp)"),
    ({"model": "qwen3-30b-a3b", "cluster": "h100-ib-2node", "parallel": {"tp": 1, "dp": 12, "ep": 4}},
     "12 GPUs would sit 4 and 8 to a node; an all-to-all needs as many on each"),
    ({"model": "qwen3-30b-a3b", "cluster": "h100-ib-2node", "parallel": {"tp": 1, "dp": 10, "ep": 2}},
     "expert intermediate size 768 does not split 5 ways (valid: 1)"),
])
def test_expert_parallelism_that_is_not_modelled_is_refused_in_one_line(tmp_path, capsys, changes, words):
    import yaml

    from helpers import error_line

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario_dict(**changes)))
    err = error_line(capsys, ["run", str(path), "--out", str(tmp_path / "out"), "-q"])
    assert err.startswith("splitsim: error: parallel.") and words in err, err
    assert not (tmp_path / "out").exists()


def test_every_config_the_aiconfigurator_package_ships_loads_or_is_refused_in_one_line():
    """aiconfigurator-core's model_configs/ (89 model configs beside 28 quantisation sidecars) as a plan-only
    corpus, when it is installed: each loads, with sane shapes and a layer graph for each kind, or is refused
    with a ValueError naming the file."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or spec.origin is None:
        pytest.skip("aiconfigurator-core is not installed (pip install 'splitsim[aiconfigurator]')")
    files = sorted(p for p in (Path(spec.origin).parent / "model_configs").glob("*_config.json")
                   if not p.name.endswith("_hf_quant_config.json"))
    loaded = 0
    for path in files:
        try:
            model = ModelSpec.from_hf_config(json.loads(path.read_text()), path.stem, str(path))
        except ValueError as err:
            assert str(err).startswith(str(path)) and "\n" not in str(err), err
            continue
        loaded += 1
        assert 0 < model.num_active_params <= model.num_params and len(model.layer_kinds) == model.num_layers
        tp = max(t for t in model.valid_tp() if t <= 8)
        for kind in set(model.layer_kinds):
            graph = ops.layer_graph(model, kind, 16, Sharding(tp, "bf16", "bf16", "bf16"))
            assert ops.ATTENTION in graph and all(op.flops >= 0 and op.nbytes >= 0 for op in graph)
    assert len(files) >= 80 and loaded >= 15  # 117 files, 28 of them quantisation sidecars; Llama 3.1, Mixtral,
    # Qwen3 dense and MoE among those that load


def _deepseek_v3_params(c: dict) -> tuple[float, float]:
    """(total, active) parameters of a DeepSeek-V3 config, written out from its modeling code's modules: MLA
    (q_a [h×q_lora], its norm, q_b [q_lora × heads·(nope+rope)], kv_a [h × (kv_lora + rope)], its norm,
    kv_b [kv_lora × heads·(nope + v)], o [heads·v × h]), two norms a layer; the first first_k_dense_replace
    layers a dense SwiGLU of intermediate_size, the rest a router of h × E and E routed experts (k active) plus the
    shared expert(s) of moe_intermediate_size; embedding, LM head, final norm. The MTP layer is not counted."""
    h, heads = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    attention = (h * c["q_lora_rank"] + c["q_lora_rank"] + c["q_lora_rank"] * heads * qk
                 + h * (c["kv_lora_rank"] + c["qk_rope_head_dim"]) + c["kv_lora_rank"]
                 + c["kv_lora_rank"] * heads * (c["qk_nope_head_dim"] + c["v_head_dim"])
                 + heads * c["v_head_dim"] * h + 2 * h)
    expert = 3 * h * c["moe_intermediate_size"]
    dense = c["first_k_dense_replace"]
    sparse = c["num_hidden_layers"] - dense
    outside = 2 * c["vocab_size"] * h + h
    common = c["num_hidden_layers"] * attention + dense * 3 * h * c["intermediate_size"] + outside
    router = h * c["n_routed_experts"]
    return (common + sparse * (router + (c["n_routed_experts"] + c["n_shared_experts"]) * expert),
            common + sparse * (router + (c["num_experts_per_tok"] + c["n_shared_experts"]) * expert))


def test_deepseek_v3_parameters_layers_and_latent_kv_cache():
    import json
    from importlib import resources

    config = json.loads((resources.files("splitsim.models") / "catalog" / "deepseek-v3" / "config.json").read_text())
    total, active = _deepseek_v3_params(config)
    assert total == pytest.approx(671e9, rel=0.01)  # DeepSeek-V3 technical report: 671B, 37B activated
    # The report's 37B is rounded: counting as Mistral counts Mixtral's 12.9B (embedding and head included) gives
    # 37.55B, 1.5 % above it; without the input embedding (a token reads one row of it) 36.6B, 1.0 % below.
    assert active == pytest.approx(37e9, rel=0.016)
    model = load_model("deepseek-v3")
    assert model.num_params == pytest.approx(total, rel=1e-9)  # the router's bias (E a layer) left out of both
    assert model.num_active_params == pytest.approx(active, rel=1e-9)
    assert model.layer_kinds == ("dense",) * 3 + ("moe",) * 58
    assert model.default_weight_dtype == "fp8"  # its quantization_config: block-scaled e4m3
    # MLA caches 512 latent + 64 RoPE values per token per layer, whole on every TP rank; num_key_value_heads
    # (128) means nothing for it
    for tp in (1, 8, 16):
        assert model.kv_bytes_per_token("bf16", tp) == 61 * 576 * 2
    assert model.kv_bytes_per_token("fp8", 8, num_layers=30) == 30 * 576


def test_mla_attention_reads_the_latent_in_decode_and_whole_heads_in_prefill():
    """Decode attends every head to the cached latent: FLOPs 2·h_q·(576 + 512) per position, the latent read
    once (576 values) however many heads; prefill runs on decompressed heads (q/k 192, v 128)."""
    model = load_model("deepseek-v3")
    sharding = Sharding(8, "fp8", "bf16", "fp8")
    prefill, decode = ops.attention(model, ops.BatchShape.of(((10, 0),), num_decode=2, decode_context=1000),
                                    sharding)
    heads = 128 // 8
    assert decode.flops == 2 * heads * (576 + 512) * 1000
    assert decode.nbytes == 2 * heads * (576 + 512) * 2 + (1000 + 2) * 576 * 2
    assert prefill.flops == 2 * heads * (192 + 128) * (10 * 11 / 2)
    names = [op.name for op in ops.layer_graph(model, "moe", 4, sharding)]
    assert names[:8] == ["input_norm", "q_a_proj", "q_a_norm", "q_b_proj", "kv_a_proj", "kv_a_norm", "kv_b_proj",
                         "rope"]
    assert {"shared_gate_up", "shared_down", "experts_gate_up"} <= set(names)


def test_deepseek_config_defaults_and_refusals_name_the_field():
    import json
    from importlib import resources

    config = json.loads((resources.files("splitsim.models") / "catalog" / "deepseek-v3" / "config.json").read_text())
    nulls = ModelSpec.from_hf_config(config | {"n_shared_experts": None, "first_k_dense_replace": None}, "d")
    assert nulls.moe.shared_experts == 0 and nulls.layer_kinds == ("moe",) * 61  # null reads as absent
    without = {k: v for k, v in config.items() if k != "qk_rope_head_dim"}
    with pytest.raises(ValueError, match="lacks qk_rope_head_dim \\(multi-head latent attention\\)"):
        ModelSpec.from_hf_config(without, "d")
    with pytest.raises(ValueError, match="torch_dtype = 'float7'"):  # checked though the weights are fp8
        ModelSpec.from_hf_config(config | {"torch_dtype": "float7"}, "d")
    with pytest.raises(ValueError, match="n_shared_experts = -1: need a whole number"):
        ModelSpec.from_hf_config(config | {"n_shared_experts": -1}, "d")


def test_a_hot_expert_loads_its_rank_and_eplb_copies_even_it_out():
    """moe.imbalance I: the hottest expert's rank carries it and E/ep − 1 mean experts, (I + E/ep − 1)/(E/ep) of
    the mean rank's tokens; EPLB's redundant copies leave only random routing's spread, and cost weights."""
    model = load_model("qwen3-30b-a3b")  # 128 experts, top 8
    tokens, ep = 512, 8
    base = Sharding(8, "bf16", "bf16", "bf16", ep=ep)
    hot = Sharding(8, "bf16", "bf16", "bf16", ep=ep, expert_imbalance=4.0)
    copies = Sharding(8, "bf16", "bf16", "bf16", ep=ep, expert_imbalance=4.0, redundant_experts=16)

    def routed(sharding):
        graph = {op.name: op for op in ops.layer_graph(model, "moe", tokens, sharding)}
        return graph["experts_act"].nbytes / (3 * model.moe.intermediate_size * 2)  # rows through SiLU-and-mul

    mean = tokens * 8 / ep
    assert routed(hot) == math.ceil(mean * (4.0 + 15) / 16)
    assert routed(base) == routed(copies) == math.ceil(mean * ops.expert_load(128, 8, ep, tokens))
    assert routed(hot) > routed(base)
    plain = scenario_dict(model="qwen3-30b-a3b", parallel={"tp": 8, "ep": 8})
    with_copies = scenario_dict(model="qwen3-30b-a3b", parallel={"tp": 8, "ep": 8}, moe={"redundant_experts": 16})
    extra = (build_plan(scenario_from_dict(with_copies)).pool.weights_bytes_per_gpu
             - build_plan(scenario_from_dict(plain)).pool.weights_bytes_per_gpu)
    assert extra == 48 * 2 * 3 * model.hidden_size * model.moe.intermediate_size * 2  # 48 layers, 2 copies a GPU


@pytest.mark.parametrize(("changes", "words"), [
    ({"model": "qwen3-30b-a3b", "parallel": {"tp": 8}, "moe": {"redundant_experts": 8}},
     "moe.redundant_experts = 8: EPLB spreads the 128 experts and their copies evenly over parallel.ep = 1 ranks"),
    ({"model": "qwen3-30b-a3b", "parallel": {"tp": 8, "ep": 8}, "moe": {"redundant_experts": 4}},
     "(valid: 0, or with ep > 1 a count making experts + copies a multiple of ep)"),
    ({"model": "qwen3-30b-a3b", "parallel": {"tp": 8, "ep": 8}, "moe": {"imbalance": 17}},
     "moe.imbalance = 17: an expert gets at most every token, 128/8 = 16 times the mean (valid: 1 to 16)"),
    ({"model": "qwen3-30b-a3b", "moe": {"imbalance": 0.5}}, "moe.imbalance"),
])
def test_moe_settings_that_cannot_hold_are_refused_in_one_line(tmp_path, capsys, changes, words):
    import yaml

    from helpers import error_line

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario_dict(**changes)))
    err = error_line(capsys, ["run", str(path), "--out", str(tmp_path / "out"), "-q"])
    assert err.startswith("splitsim: error: moe.") and words in err, err


def test_the_summary_names_the_experts_and_an_overridden_checkpoint_precision():
    from splitsim import simulate

    summary = simulate(scenario_from_dict(scenario_dict(
        model="qwen3-30b-a3b", parallel={"tp": 1, "dp": 8, "ep": 8}, precision={"weights": "fp8"},
        moe={"redundant_experts": 8}))).summary
    described = summary["scenario"]
    assert described["precision"]["weights"] == "fp8" and described["precision"]["checkpoint_weights"] == "bf16"
    assert described["moe"] == {"experts": 128, "top_k": 8, "shared_experts": 0, "imbalance": None,
                                "redundant_experts": 8, "attention_data_parallel": True}
    dense = simulate(scenario_from_dict(scenario_dict())).summary["scenario"]
    assert "moe" not in dense and "checkpoint_weights" not in dense["precision"]


def _gpt_oss_params(c: dict) -> tuple[float, float]:
    """(total, active) parameters of a gpt-oss config as OpenAI counts them (model card: 116.83B / 5.13B for
    120b): per layer Q, K, V, O with biases, a sink logit per head, two norms, a router of h × E with its bias,
    E experts of gate/up (h × 2·ffn, bias 2·ffn) and down (ffn × h, bias h), k of them active; embedding, head and
    final norm in the total; the active count leaves out the input embedding (a token reads one row of it)."""
    h, heads, kv, d = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    ffn, experts = c["intermediate_size"], c["num_local_experts"]
    attention = h * heads * d + heads * d + 2 * (h * kv * d + kv * d) + heads * d * h + h + heads + 2 * h
    router = h * experts + experts
    expert = h * 2 * ffn + 2 * ffn + ffn * h + h
    layers = c["num_hidden_layers"]
    embedding = c["vocab_size"] * h
    total = layers * (attention + router + experts * expert) + 2 * embedding + h
    active = layers * (attention + router + c["experts_per_token"] * expert) + embedding + h
    return total, active


def test_gpt_oss_parameters_layers_and_mxfp4_experts():
    import json
    from importlib import resources

    config = json.loads((resources.files("splitsim.models") / "catalog" / "gpt-oss-120b" / "config.json").read_text())
    total, active = _gpt_oss_params(config)
    assert total == pytest.approx(116.8e9, rel=0.01) and active == pytest.approx(5.1e9, rel=0.01)
    model = load_model("gpt-oss-120b")
    # splitsim leaves out the biases and sinks (0.03 %) and counts the input embedding among the active (+0.58B)
    assert model.num_params == pytest.approx(total, rel=5e-4)
    assert model.num_active_params - model.embedding_params == pytest.approx(active, rel=5e-3)
    assert model.layer_types == ("moe/sliding", "moe") * 18 and model.sliding_window == 128
    assert model.expert_weight_dtype == "fp4" and model.default_weight_dtype == "bf16"
    # one H100 holds it (as vLLM serves it): experts at half a byte a weight, the rest in bf16
    plan = build_plan(scenario_from_dict(scenario_dict(model="gpt-oss-120b"))).pool
    h, ffn = model.hidden_size, model.moe.intermediate_size
    experts = 36 * 128 * 3 * h * ffn
    assert plan.weights_bytes_per_gpu == pytest.approx(experts * 0.5 + (model.num_params - experts) * 2, rel=1e-12)
    assert plan.weights_bytes_per_gpu / 2**30 == pytest.approx(57.4, abs=0.1)
    overridden = build_plan(scenario_from_dict(scenario_dict(model="gpt-oss-20b", precision={"weights": "fp8"}))).pool
    assert overridden.sharding.expert_weights is None  # an explicit precision.weights covers the experts too


def test_the_summary_says_the_experts_format_and_when_precision_weights_replaced_it():
    from splitsim import simulate

    quantised = simulate(scenario_from_dict(scenario_dict(model="gpt-oss-20b"))).summary["scenario"]["precision"]
    assert quantised["weights"] == "bf16" and quantised["experts"] == "fp4" and "checkpoint_experts" not in quantised
    replaced = simulate(scenario_from_dict(scenario_dict(model="gpt-oss-20b", precision={"weights": "fp8"}))
                        ).summary["scenario"]["precision"]
    assert "experts" not in replaced and replaced["checkpoint_experts"] == "fp4"
    assert replaced["checkpoint_weights"] == "bf16"


def _llama4_params(c: dict) -> tuple[float, float]:
    """(total, active) parameters of a Llama 4 language model from its text_config: per layer Q, K, V, O, two
    norms; on its MoE layers (every interleave_moe_layer_step-th, from step − 1) a router of h × E, E experts and
    one shared expert of intermediate_size (k routed active), on the others a dense MLP of intermediate_size_mlp;
    embedding, head and final norm. Q/K norms are weightless (L2) in Llama 4."""
    t = c["text_config"]
    h, heads, kv, d = t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
    attention = h * heads * d * 2 + h * kv * d * 2 + 2 * h
    expert = 3 * h * t["intermediate_size"]
    layers, step = t["num_hidden_layers"], t["interleave_moe_layer_step"]
    sparse = len(range(step - 1, layers, step))
    dense_mlp = 3 * h * t["intermediate_size_mlp"]
    outside = 2 * t["vocab_size"] * h + h
    common = layers * attention + (layers - sparse) * dense_mlp + sparse * h * t["num_local_experts"] + outside
    return (common + sparse * (t["num_local_experts"] + 1) * expert,
            common + sparse * (t["num_experts_per_tok"] + 1) * expert)


@pytest.mark.parametrize(("name", "total", "active"), [
    ("llama-4-scout", None, 17e9),  # Meta's 109B total counts the vision encoder; the language model is 107.8B
    ("llama-4-maverick", 400e9, 17e9),
])
def test_llama4_from_its_text_config_with_chunked_attention(name, total, active):
    import json
    from importlib import resources

    config = json.loads((resources.files("splitsim.models") / "catalog" / name / "config.json").read_text())
    total_by_hand, active_by_hand = _llama4_params(config)
    if total is not None:
        assert total_by_hand == pytest.approx(total, rel=0.01)
    assert active_by_hand == pytest.approx(active, rel=0.015)
    model = load_model(name)
    assert model.num_params == pytest.approx(total_by_hand, rel=1e-9)
    assert model.num_active_params == pytest.approx(active_by_hand, rel=1e-9)
    # three of four layers attend within their chunk of 8192 positions; every fourth globally (without RoPE)
    assert model.attention_chunk == 8192
    assert model.layer_attention == ("chunked", "chunked", "chunked", "full") * 12
    step = config["text_config"]["interleave_moe_layer_step"]
    assert model.layer_kinds == tuple("moe" if (i + 1) % step == 0 else "dense" for i in range(48))
    assert model.moe.shared_experts == 1 and model.intermediate_size == config["text_config"]["intermediate_size_mlp"]


def test_a_flat_llama4_text_config_reads_as_the_nested_one():
    import json
    from importlib import resources

    nested = json.loads((resources.files("splitsim.models") / "catalog" / "llama-4-maverick" / "config.json")
                        .read_text())
    flat = nested["text_config"] | {"architectures": ["Llama4ForCausalLM"]}
    assert ModelSpec.from_hf_config(flat, "m").num_params == load_model("llama-4-maverick").num_params


def test_the_dispatch_goes_in_fp8_when_the_experts_compute_in_a_low_format():
    """gpt-oss on a GPU with fp4 tensor cores: its attention computes in bf16, its experts in fp4, and the
    dispatch carries what the experts take (1 byte a value and a scale per 128)."""
    model = load_model("gpt-oss-20b")
    plain = Sharding(1, "bf16", "bf16", "bf16", ep=8, dp_attention=8)
    low = Sharding(1, "bf16", "bf16", "bf16", ep=8, dp_attention=8, expert_weights="fp4", expert_compute="fp4")

    def dispatch(sharding):
        return next(op for op in ops.layer_graph(model, "moe", 64, sharding) if op.name == "moe_dispatch").nbytes

    assert dispatch(low) / dispatch(plain) == pytest.approx((1 + 4 / 128) / 2)
