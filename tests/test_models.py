"""Model shapes against published parameter counts and hand-derived FLOPs and bytes."""

import json

import pytest

from splitsim.models.ops import BatchShape, Sharding, layer_ops
from splitsim.models.spec import ModelSpec, load_model


@pytest.mark.parametrize(("name", "billions"), [
    ("llama-3-8b", 8.03), ("llama-3-70b", 70.55), ("llama-3.1-405b", 405.85),
])
def test_parameter_counts_match_the_published_sizes(name, billions):
    # Meta's model cards: 8.03B, 70.55B and 405.85B parameters (safetensors totals on the Hub).
    assert load_model(name).num_params / 1e9 == pytest.approx(billions, abs=0.01)


def test_kv_bytes_per_token_and_replicated_heads():
    model = load_model("llama-3-70b")  # 80 layers, 8 KV heads of 128
    assert model.kv_bytes_per_token("bf16") == 2 * 80 * 8 * 128 * 2
    assert model.kv_bytes_per_token("fp8", tp=4) == 2 * 80 * 2 * 128 * 1
    # TP16 > 8 KV heads: every rank keeps one (replicated) head, as vLLM does.
    assert model.kv_bytes_per_token("bf16", tp=16) == 2 * 80 * 1 * 128 * 2


def test_config_json_from_a_path_or_folder(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 512, "intermediate_size": 1024,
              "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
              "vocab_size": 1000, "torch_dtype": "float16"}
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for ref in (str(folder), str(folder / "config.json")):
        model = load_model(ref)
        assert (model.name, model.head_dim, model.default_weight_dtype) == ("tiny", 64, "fp16")


def test_unmodelled_experts_and_unknown_models_are_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"architectures": ["Glm4MoeForCausalLM"], "num_local_experts": 128}))
    with pytest.raises(ValueError, match="Glm4MoeForCausalLM is not supported"):
        load_model(str(path))
    with pytest.raises(ValueError, match="llama-3-70b"):
        load_model("llama-9")


def test_layer_ops_flops_and_bytes_by_hand():
    model = ModelSpec(name="m", hidden_size=1024, intermediate_size=4096, num_layers=2, num_heads=16,
                      num_kv_heads=4, vocab_size=1000, max_position_embeddings=4096)
    tp, d = 2, 64
    batch = BatchShape.of(((100, 20),), num_decode=3, decode_context=300)
    ops = {op.name: op for op in layer_ops(model, batch, Sharding(tp, "fp8", "bf16", "bf16"))
           if op.name != "attention"}
    tokens = 103
    assert [op.name for op in layer_ops(model, batch, Sharding(tp, "bf16", "bf16", "bf16"))] == [
        "input_norm", "qkv", "rope", "attention", "attention", "o_proj", "attn_allreduce", "post_norm", "gate_up",
        "act", "down", "mlp_allreduce"]
    # Fused add + RMSNorm on the full hidden size (replicated under TP): read x and residual, write both.
    assert ops["input_norm"].nbytes == 4 * tokens * 1024 * 2 + 1024 * 2
    assert ops["rope"].nbytes == 2 * tokens * (8 + 2) * d * 2  # this rank's Q and K, read and written
    assert ops["act"].nbytes == 3 * tokens * 2048 * 2  # SiLU(gate)·up over the rank's FFN slice
    # QKV: 8 query heads and 2 KV heads per rank → n = (8 + 2·2)·64 = 768, k = 1024.
    assert ops["qkv"].flops == 2 * tokens * 768 * 1024
    assert ops["qkv"].nbytes == (tokens * 1024 + tokens * 768) * 2 + 1024 * 768 * 1  # fp8 weights
    assert ops["gate_up"].flops == 2 * tokens * (2 * 2048) * 1024
    assert ops["down"].flops == 2 * tokens * 1024 * 2048
    assert ops["attn_allreduce"].nbytes == tokens * 1024 * 2
    prefill, decode = [op for op in layer_ops(model, batch, Sharding(tp, "bf16", "bf16", "bf16"))
                       if op.name == "attention"]
    # Causal prefill of 100 tokens after 20 cached: Σ_i (20 + i + 1) = 100·20 + 100·101/2 positions.
    assert prefill.flops == 4 * 8 * d * (100 * 20 + 100 * 101 / 2)
    assert decode.flops == 4 * 8 * d * 300
    # Decode reads K and V of 300 positions, writes K and V of 3 new ones (2 heads of 64, bf16).
    assert decode.nbytes == (300 + 3) * 2 * 2 * 64 * 2 + 2 * 3 * 8 * 64 * 2
