"""Calibration from aiconfigurator-core's measured kernel tables (issue 10), on the excerpt in tests/data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import error_line
from splitsim.cli import main
from splitsim.validate import aiconfigurator as aic

pytest.importorskip("pyarrow", reason="the tables are parquet (pip install 'splitsim[test]')")

EXCERPT = Path(__file__).resolve().parent / "data" / "aiconfigurator" / "excerpt"


def test_the_newest_collection_is_chosen_and_a_copy_is_skipped():
    nccl = aic.pick_table(EXCERPT, "h100_sxm", "comm", "nccl")
    assert nccl.version == "2.29.2" and "newest collected" in nccl.reason and "2.30.0 skipped" in nccl.reason
    assert aic.pick_table(EXCERPT, "h100_sxm", "comm", "nccl", "2.30.0").reason == "as asked"
    assert aic.pick_table(EXCERPT, "h100_sxm", "gemm", "vllm").version == "0.24.0"
    assert aic._version_key("1.3.0rc20") > aic._version_key("1.3.0rc11") > aic._version_key("1.2.0")
    assert aic._version_key("0.5.14") > aic._version_key("0.5.9")


def test_held_out_shapes_and_sizes_never_appear_in_the_fit():
    gemm, _ = aic.gemm_rows(aic.pick_table(EXCERPT, "h100_sxm", "gemm", "vllm"), "vllm")
    fitted = set(zip(gemm.loc[gemm["train"], "n"], gemm.loc[gemm["train"], "k"]))
    held = set(zip(gemm.loc[~gemm["train"], "n"], gemm.loc[~gemm["train"], "k"]))
    assert fitted and held and not fitted & held  # whole weight shapes are held out, so no (m, n, k) is shared
    nccl = aic.collective_rows(aic.pick_table(EXCERPT, "h100_sxm", "comm", "nccl"))
    for op, rows in nccl.groupby("op"):  # the rings and the all-to-alls each hold out their own sizes
        assert not set(rows.loc[rows["train"], "nbytes"]) & set(rows.loc[~rows["train"], "nbytes"]), op
        assert rows["train"].any() and (~rows["train"]).any(), op
    assert set(nccl["op"]) == {"allreduce", "allgather", "alltoall"} and set(nccl["group_size"]) == {2, 4, 8}
    raw = pd.read_parquet(aic.pick_table(EXCERPT, "h100_sxm", "comm", "nccl").path / "nccl_perf.parquet")
    raw = raw[(raw["op_name"] == "alltoall") & (raw["nccl_dtype"] == "half")].iloc[0]
    first = nccl[nccl["op"] == "alltoall"].iloc[0]  # what each rank sends to the others: (p−1)/p of its buffer
    assert first["nbytes"] == raw["message_size"] * 2 * (raw["num_gpus"] - 1) / raw["num_gpus"]
    custom = aic.custom_allreduce_rows(aic.pick_table(EXCERPT, "h100_sxm", "comm", "vllm"))
    assert len(custom) and not set(custom.loc[custom["train"], "nbytes"]) & set(custom.loc[~custom["train"], "nbytes"])


def test_weights_the_l2_holds_are_left_out_and_the_launch_comes_from_the_smallest_gemms():
    """The tables time one GEMM over and over: under twice the L2 the weights come from cache. The launch
    cost is the median of the bf16 GEMMs of at most 16 rows and 65,536 weights, read here from the parquet."""
    import pandas as pd

    table = aic.pick_table(EXCERPT, "h100_sxm", "gemm", "vllm")
    rows, launch_s = aic.gemm_rows(table, "vllm", 50e6)
    assert len(rows) and (rows["n"] * rows["k"] * rows["weight_bytes"] >= 100e6).all()
    raw = pd.read_parquet(table.path / "gemm_perf.parquet")
    tiny = raw[(raw["kernel_source"] == "torch.nn.functional.linear") & (raw["m"] <= 16)
               & (raw["n"] * raw["k"] <= 65536)]
    assert len(tiny) >= 3 and launch_s == pytest.approx(tiny["latency"].median() / 1e3, rel=1e-12)


def test_attention_rows_carry_the_work_of_their_shapes():
    """Computed here from the table's columns: causal prefill does 4·h·d·s(s+1)/2 FLOPs per prompt; a decode
    reads K and V of step + 1 positions (2·h_kv·d·2 bytes each) and its query and output."""
    import pandas as pd

    table = aic.pick_table(EXCERPT, "h100_sxm", "attention", "vllm")
    rows = aic.attention_rows(table)
    context = pd.read_parquet(table.path / "context_attention_perf.parquet").iloc[0]
    b, s, h, d = (int(context[c]) for c in ("batch_size", "isl", "num_heads", "head_dim"))
    first = rows[rows["phase"] == "prefill"].iloc[0]
    assert first["flops"] == 4 * h * d * s * (s + 1) / 2 * b
    assert first["seconds"] == context["latency"] / 1e3
    gen = pd.read_parquet(table.path / "generation_attention_perf.parquet").iloc[0]
    b, step, h, kv, d = (int(gen[c]) for c in ("batch_size", "step", "num_heads", "num_key_value_heads", "head_dim"))
    decode = rows[rows["phase"] == "decode"].iloc[0]
    assert decode["nbytes"] == b * (step + 1 + 1) * 2 * kv * d * 2 + 2 * b * h * d * 2  # + the new token's K/V


def test_calibrate_fits_the_tables_and_reports_held_out_errors(tmp_path, capsys):
    out = tmp_path / "h100.yaml"
    assert main(["calibrate", "--aiconfigurator", "h100_sxm", "--tables", str(EXCERPT), "--out", str(out),
                 "--json"]) == 0
    printed = capsys.readouterr().out
    assert "comm/nccl 2.29.2 (newest collected; newer 2.30.0 skipped" in printed
    held_out = json.loads(printed.strip().splitlines()[-1])["held_out"]
    assert {"gemm", "gemm bf16", "gemm fp8", "attention", "allreduce", "allgather", "alltoall"} <= set(held_out)
    assert held_out["alltoall"]["median"] < 0.3
    assert held_out["gemm bf16"]["median"] < 0.1 and held_out["gemm fp8"]["median"] < 0.1  # each dtype its own
    assert held_out["attention prefill"]["median"] < 0.2 and held_out["attention decode"]["median"] < 0.2
    assert held_out["allreduce"]["median"] < 0.25
    assert held_out["allreduce custom"]["median"] < 0.1 and held_out["allreduce custom"]["n"] >= 10
    profile = yaml.safe_load(out.read_text())
    assert profile["gpu"] == "h100-sxm" and profile["schema"] == "splitsim.hardware-profile/2"
    assert set(profile["efficiency"]["gemm_by_dtype"]) == {"fp8"} and profile["efficiency"]["attention_decode"]
    assert profile["fitted_on"][0] == "aiconfigurator-core tables at excerpt/ h100_sxm/gemm/vllm/0.24.0"
    assert 0.3 < profile["efficiency"]["compute"] <= 1.0 and profile["intra_node"]["bw_bytes_per_s"] > 50e9
    custom = profile["intra_node"]["custom_allreduce"]  # with the limits of the H100 fabric preset (vLLM's, sm90)
    assert custom["max_bytes"]["8"] == 256 * 1024 and custom["symm_mem_max_bytes"]["8"] == 64 * 2**20
    assert 3e-6 < custom["one_shot_latency_s"] < 6e-6 and 100e9 < custom["one_shot_bw_bytes_per_s"] < 450e9
    alltoall = profile["intra_node"]["alltoall"]  # NCCL's all-to-all, its own t₀, α and rate
    assert 1e-6 < alltoall["collective_launch_s"] < 30e-6 and 50e9 < alltoall["bw_bytes_per_s"] < 450e9


@pytest.mark.parametrize(("flags", "words"), [
    (["--aiconfigurator", "tpu_v5"], "--aiconfigurator tpu_v5: not a system"),
    (["--aiconfigurator", "h100_sxm", "--version", "9.9"], "--version 9.9: h100_sxm has gemm/vllm tables for 0.24.0"),
    (["--aiconfigurator", "h100_sxm", "--framework", "sglang"], "no gemm tables for sglang"),
    (["--framework", "vllm", "runs/x"], "--framework: only with --aiconfigurator"),
    ([], "give measurement folders, or --aiconfigurator SYSTEM"),
])
def test_bad_aiconfigurator_requests_are_one_line(tmp_path, capsys, flags, words):
    tables = ["--tables", str(EXCERPT)] if "--aiconfigurator" in flags else []
    err = error_line(capsys, ["calibrate", *flags, *tables, "--out", str(tmp_path / "p.yaml")])
    assert words in err
    assert not (tmp_path / "p.yaml").exists()


def test_without_the_package_the_error_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(aic.importlib.util, "find_spec", lambda name: None)
    err = error_line(capsys, ["calibrate", "--aiconfigurator", "h100_sxm", "--out", str(tmp_path / "p.yaml")])
    assert "pip install 'splitsim[aiconfigurator]'" in err
