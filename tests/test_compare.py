"""`splitsim validate compare`: its predictions are what the simulator's engine gives for the same step,
and it refuses measurements a profile was fitted on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import scenario_dict
from splitsim import simulate
from splitsim.cli import main
from splitsim.hardware.catalog import load_gpu
from splitsim.hardware.profile import HardwareProfile, LinkFit
from splitsim.scenario import scenario_from_dict
from splitsim.validate import measurements

TINY = {"name": "tiny", "hidden_size": 256, "intermediate_size": 512, "num_layers": 4, "num_heads": 8,
        "num_kv_heads": 4, "vocab_size": 512, "max_position_embeddings": 2048, "default_weight_dtype": "bf16"}
HF_TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
           "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
           "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}  # TINY truncated to the 2 measured layers


def _row(**fields) -> dict:
    return {column: fields.get(column, np.nan) for column in measurements.COLUMNS}


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    efficiency = load_gpu("cpu-core").efficiency.model_copy(update={"compute": 0.4, "memory": 0.05})
    link = LinkFit(collective_launch_s=40e-6, latency_s=5e-6, bw_bytes_per_s=2e9, p2p_latency_s=30e-6,
                   p2p_bw_bytes_per_s=3e9)
    path = tmp_path / "profile.yaml"
    HardwareProfile(name="planted", gpu="cpu-core", efficiency=efficiency, intra_node=link,
                    fitted_on=["/elsewhere/other-run sha256:0000000000000000"]).write(path)
    return path


@pytest.fixture
def measured(tmp_path: Path) -> Path:
    rows = []
    for tp, pp in [(1, 1), (2, 2)]:
        rows.append(_row(kind="step", op="prefill_step", phase="prefill", tp=tp, pp=pp, batch=1, prompt=64,
                         tokens=64, seconds=0.01, repeats=3))
        rows.append(_row(kind="step", op="decode_step", phase="decode", tp=tp, pp=pp, batch=1, prompt=64,
                         context=65, tokens=1, seconds=0.002, repeats=3))
        rows.append(_row(kind="op", op="qkv", phase="prefill", layer=0, stage=0, rank=0, tp=tp, pp=pp, batch=1,
                         prompt=64, tokens=64, seconds=1e-4, repeats=3))
    folder = tmp_path / "measured"
    measurements.write(folder, pd.DataFrame(rows), {"model": "tiny", "model_spec": TINY, "layers": 2,
                                                    "cluster": "cpu-local", "device": "cpu", "dtype": "bf16"})
    return folder


def test_predicted_steps_are_what_the_engine_simulates(measured, profile_path, tmp_path, capsys):
    assert main(["validate", "compare", str(measured), "--profile", str(profile_path)]) == 0
    table = pd.read_csv(measured / "comparison.csv")
    assert {"kind", "measured_s", "predicted_s", "rel_error"} <= set(table.columns)
    assert (measured / "comparison.png").is_file()
    config = tmp_path / "tiny" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(HF_TINY))
    for tp, pp in [(1, 1), (2, 2)]:
        # One request alone: its TTFT is one prefill step, and with two output tokens e2e − TTFT is one
        # decode step attending prompt + 1 positions; the engine gets there by its own path.
        result = simulate(scenario_from_dict(scenario_dict(
            model=str(config), cluster="cpu-local", hardware_profile=str(profile_path),
            parallel={"tp": tp, "pp": pp},
            workload={"num_requests": 1, "rate": 0, "prompt_tokens": 64, "output_tokens": 2})))
        row = result.requests.iloc[0]
        mine = table[(table["tp"] == tp) & (table["pp"] == pp)].set_index("kind")
        # comparison.csv keeps 9 significant digits
        assert mine.loc["prefill_step", "predicted_s"] == pytest.approx(row["ttft_s"], rel=1e-8)
        assert mine.loc["decode_step", "predicted_s"] == pytest.approx(row["e2e_s"] - row["ttft_s"], rel=1e-8)
        assert mine.loc["decode_step", "rel_error"] == pytest.approx(mine.loc["decode_step", "predicted_s"] / 0.002
                                                                     - 1, rel=1e-7)
    assert "whole steps" in capsys.readouterr().out


def test_compare_refuses_what_the_profile_was_fitted_on(measured, profile_path, tmp_path, capsys):
    from splitsim.hardware.profile import load_profile
    from splitsim.validate.compare import measurement_id

    seen = load_profile(profile_path).model_copy(update={"fitted_on": [measurement_id(measured)]})
    seen.write(tmp_path / "seen.yaml")
    assert main(["validate", "compare", str(measured), "--profile", str(tmp_path / "seen.yaml")]) == 2
    assert "fitted on these measurements" in capsys.readouterr().err


@pytest.mark.parametrize("broken", ["no folder", "no config", "other schema"])
def test_compare_refuses_unreadable_measurements(measured, profile_path, tmp_path, capsys, broken):
    folder = measured
    if broken == "no folder":
        folder = tmp_path / "nothing"
    elif broken == "no config":
        (measured / "config.json").unlink()
    else:
        (measured / "config.json").write_text('{"schema": "other/9"}')
    assert main(["validate", "compare", str(folder), "--profile", str(profile_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err
