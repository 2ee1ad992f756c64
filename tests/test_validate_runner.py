"""`splitsim validate run`: the measurements table of a small sweep, bad options, device selection, and a
launch the way torchrun does it (ranks started with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from splitsim.cli import main
from splitsim.validate import measurements, runner
from splitsim.validate.dist import backend_for, free_port, torch_device, under_torchrun
from splitsim.validate.timing import CudaEventTimer, PerfCounterTimer, timer_for

pytestmark = pytest.mark.slow  # torch: the runner's sweeps and a torchrun-style launch

TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
               "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
               "max_position_embeddings": 512, "torch_dtype": "bfloat16"}
HEAD_DIM = 16
LAYER_OPS = ("input_norm", "qkv", "attention", "o_proj", "post_norm", "gate_up", "act", "down")
TP_OPS = ("attn_allreduce", "mlp_allreduce")
# --layers 2: one stage holds layers 0 and 1; two stages hold one each
STAGE_LAYERS = {1: {0: [0, 1]}, 2: {0: [0], 1: [1]}}
PROMPT, DECODE = 8, 2
ARGS = ["--tp", "1", "2", "--pp", "1", "2", "--layers", "2", "--batch", "1", "2", "--prompt", str(PROMPT),
        "--decode", str(DECODE), "--repeats", "2", "--warmup", "1"]


def _tiny(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    return folder


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small sweep's measurements folder: run once for the module (it is the slow part)."""
    root = tmp_path_factory.mktemp("sweep")
    out = root / "m"
    assert main(["validate", "run", "--model", str(_tiny(root / "tiny")), *ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sweep(sweep_folder: Path) -> tuple[pd.DataFrame, dict]:
    return measurements.read(sweep_folder)


def _ops(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["kind"] == "op"]


def test_every_op_once_per_layer_stage_rank_and_step(sweep):
    rows, _ = sweep
    ops = _ops(rows)
    steps = [("prefill", math.nan)] + [("decode", PROMPT + i + 1) for i in range(DECODE)]
    for tp in (1, 2):
        for pp in (1, 2):
            for batch in (1, 2):
                for phase, context in steps:
                    part = ops[(ops["tp"] == tp) & (ops["pp"] == pp) & (ops["batch"] == batch)
                               & (ops["phase"] == phase)]
                    part = part[part["context"].isna()] if phase == "prefill" else part[part["context"] == context]
                    expected = []
                    for stage, layers in STAGE_LAYERS[pp].items():
                        for rank in range(tp):
                            names = LAYER_OPS + (TP_OPS if tp > 1 else ())
                            expected += [(name, layer, stage, rank) for layer in layers for name in names]
                            if stage == 0:
                                expected += [("embedding", -1, stage, rank)]
                                expected += [("embedding_allreduce", -1, stage, rank)] if tp > 1 else []
                            if stage == pp - 1:
                                expected += [("lm_head", -1, stage, rank)]
                                expected += [("logits_allgather", -1, stage, rank)] if tp > 1 else []
                            if stage < pp - 1:
                                expected += [("handoff", -1, stage, rank)]  # one send per boundary per TP rank
                            if stage > 0 and tp > 1:
                                expected += [("handoff_allgather", -1, stage, rank)]
                    got = sorted(zip(part["op"], part["layer"].astype(int), part["stage"].astype(int),
                                     part["rank"].astype(int)))
                    assert got == sorted(expected), (tp, pp, batch, phase, context)


def test_step_rows_for_every_layout_batch_and_phase(sweep):
    rows, _ = sweep
    steps = rows[rows["kind"] == "step"]
    for tp in (1, 2):
        for pp in (1, 2):
            for batch in (1, 2):
                part = steps[(steps["tp"] == tp) & (steps["pp"] == pp) & (steps["batch"] == batch)
                             & (steps["prompt"] == PROMPT)]
                prefill = part[part["phase"] == "prefill"]
                decode = part[part["phase"] == "decode"]
                assert list(prefill["op"]) == ["prefill_step"] and list(prefill["tokens"]) == [batch * PROMPT]
                assert sorted(decode["context"].astype(int)) == [PROMPT + 1, PROMPT + 2]
                assert set(decode["op"]) == {"decode_step"} and set(decode["tokens"]) == {batch}


def test_times_positive_and_shapes_recorded(sweep):
    rows, _ = sweep
    assert (rows["seconds"] > 0).all() and rows["seconds"].notna().all()
    timed = rows[rows["kind"] != "micro"]
    assert set(timed["repeats"]) == {2}
    ops = _ops(rows)
    qkv = ops[(ops["op"] == "qkv") & (ops["phase"] == "prefill")]
    # Megatron column split: (4 + 2·2) heads · 16 / tp output features of 64 inputs, m = batch · prompt
    assert set(zip(qkv["tp"], qkv["n"], qkv["k"])) == {(1, 128, 64), (2, 64, 64)}
    assert (qkv["m"] == qkv["batch"] * PROMPT).all()
    down = ops[ops["op"] == "down"]
    assert set(zip(down["tp"], down["n"], down["k"])) == {(1, 64, 96), (2, 64, 48)}
    ar = ops[ops["op"] == "attn_allreduce"]
    assert (ar["nbytes"] == ar["tokens"] * 64 * 2).all() and set(ar["group_size"]) == {2}


def test_microbenchmarks_cover_gemms_attention_collectives_and_sendrecv(sweep):
    """Every microbenchmark at every size, once; an all-to-all row counts the bytes a rank sends to the others."""
    rows, _ = sweep
    micro = rows[rows["kind"] == "micro"]
    gemm = micro[micro["op"] == "gemm"]
    for tp in (1, 2):
        shapes = set(zip(gemm[gemm["tp"] == tp]["n"], gemm[gemm["tp"] == tp]["k"]))
        # qkv, o_proj, gate_up, down on one of tp ranks
        assert shapes == {(128 // tp, 64), (64, 64 // tp), (192 // tp, 64), (64, 96 // tp)}
        assert {1, 4, 16, 64, 256, PROMPT, 2 * PROMPT} <= set(gemm[gemm["tp"] == tp]["m"])
    for op in ("allreduce", "allgather"):
        part = micro[micro["op"] == op]
        assert set(part["group_size"]) == {2, 4}
        for size in (2, 4):
            sizes = sorted(part[part["group_size"] == size]["nbytes"])
            assert sizes == [2**10 * 4**i for i in range(8)]  # once each: the sweep measures nothing twice
    alltoall = micro[micro["op"] == "alltoall"]
    assert set(alltoall["group_size"]) == {2, 4}
    for size in (2, 4):  # the same buffers as the all-reduce's, less the slice each rank keeps
        sent = sorted(alltoall[alltoall["group_size"] == size]["nbytes"])
        assert sent == [2**10 * 4**i * (size - 1) // size for i in range(8)]
    assert sorted(micro[micro["op"] == "sendrecv"]["nbytes"]) == [2**10 * 4**i for i in range(8)]
    grouped = micro[micro["op"] == "grouped_gemm"]
    for tp in (1, 2):  # the dense model's stand-in expert, 96 / 4 wide, split over tp: gate/up and down
        f = 24 // tp
        for rank in range(tp):
            part = grouped[(grouped["tp"] == tp) & (grouped["rank"] == rank)]
            keys = sorted(zip(part["n"], part["k"], part["groups"], part["m"]))
            assert keys == sorted((n, k, g, m) for n, k in ((2 * f, 64), (64, f)) for g in (2, 8)
                                  for m in (1, 4, 16, 64, 256))  # once each: the layout (tp, 1) measures them
            assert (part["tokens"] == part["m"] * part["groups"]).all()
    assert not micro[micro["op"] == "attention_prefill"].empty
    decode = micro[micro["op"] == "attention_decode"]
    assert PROMPT + DECODE in set(decode["context"])


def test_the_sweeps_alltoall_rows_calibrate_into_the_profile(sweep_folder, tmp_path):
    """gloo's timings, whatever they are, fit an all-to-all of their own (α told from t₀: groups of 2 and 4),
    judged on held-out sizes, and the profile carries it to the cluster's fabric."""
    from splitsim.hardware import collectives
    from splitsim.hardware.catalog import load_cluster
    from splitsim.hardware.profile import apply_profile, load_profile

    # without the send/recv rows: half a ping-pong between ranks time-sharing two cores fits any bandwidth at all
    # (once 1e23 B/s, beyond what a profile may hold), and that is not what this test is about
    rows, config = measurements.read(sweep_folder)
    folder, out = tmp_path / "collectives", tmp_path / "cpu.yaml"
    measurements.write(folder, rows[rows["op"] != "sendrecv"], {k: v for k, v in config.items() if k != "schema"})
    assert main(["calibrate", str(folder), "--out", str(out)]) == 0
    profile = load_profile(out)
    assert profile.intra_node is not None and profile.intra_node.alltoall is not None
    a2a = profile.intra_node.alltoall
    assert a2a.bw_bytes_per_s > 0 and a2a.collective_launch_s + a2a.latency_s > 0
    assert profile.errors["alltoall"].held_out and profile.errors["alltoall"].rows == 8  # 4 sizes × 2 groups
    cluster = apply_profile(load_cluster("cpu-local"), profile)
    assert cluster.intra_node.alltoall == a2a
    assert collectives.alltoall_s(cluster, [0, 1, 2, 3], 3e6) == pytest.approx(
        a2a.collective_launch_s + 3 * a2a.latency_s + 3e6 / a2a.bw_bytes_per_s, rel=1e-12)


def test_the_sweeps_grouped_gemm_rows_calibrate_into_the_profile(sweep_folder, tmp_path, capsys):
    """The CPU's G matmuls back to back, whatever they take, go through the fused-MoE fit into the profile's
    `grouped_gemm` (or, if they price their rows no better than the dense figures, a note says so), judged as
    `moe bf16` on the held-out rows per expert: m = 4 and 64 of 4 shapes × 2 expert counts. On the sweep's GEMM
    rows alone: gloo's collectives on time-shared cores are another test's business."""
    from splitsim.hardware.profile import load_profile

    rows, config = measurements.read(sweep_folder)
    folder, out = tmp_path / "gemms", tmp_path / "cpu.yaml"
    measurements.write(folder, rows[rows["op"].isin(["gemm", "grouped_gemm"])],
                       {k: v for k, v in config.items() if k != "schema"})
    assert main(["calibrate", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    profile = load_profile(out)
    assert profile.errors["moe bf16"].held_out and profile.errors["moe bf16"].rows == 16
    assert "grouped_gemm rows" in printed
    assert set(profile.efficiency.grouped_gemm) == {"bf16"} or "dense figures kept" in printed


def test_config_records_how_it_was_measured(sweep):
    _, config = sweep
    assert config["model_spec"]["hidden_size"] == 64 and config["layers"] == 2
    assert config["layouts"] == [[1, 1], [1, 2], [2, 1], [2, 2]]
    assert (config["batch"], config["prompt"], config["decode"]) == ([1, 2], [PROMPT], DECODE)
    assert (config["device"], config["backend"], config["timer"], config["threads_per_rank"]) == \
        ("cpu", "gloo", "perf_counter", 1)
    assert (config["cluster"], config["dtype"], config["warmup"], config["repeats"]) == ("cpu-local", "bf16", 1, 2)
    assert config["torch"] == torch.__version__ and config["hostname"] and config["launcher"] == "spawn"
    assert config["seed"] == 0


@pytest.mark.parametrize(("extra", "words"), [
    (["--tp", "3"], ["--tp 3", "attention heads", "valid: 1, 2, 4"]),
    (["--pp", "3", "--layers", "2"], ["--pp 3", "valid: 1 to 2"]),
    (["--layers", "9"], ["--layers 9", "valid: 1 to 4"]),
    (["--prompt", "510", "--decode", "4"], ["514 positions", "max_position_embeddings 512"]),
    (["--device", "cuda"], ["--device cuda", "valid here: cpu"]),
    (["--cluster", "no-such-cluster"], ["--cluster no-such-cluster"]),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, extra, words):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    code = main(["validate", "run", "--model", str(_tiny(tmp_path / "tiny")), *extra, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_weights_that_do_not_fit_are_refused(tmp_path, capsys, monkeypatch):
    # one tiny layer holds (4 + 2·2)·16·64 + 4·16·64 + 3·96·64 + 2·64 = 30 848 parameters; the embedding and
    # LM head 2·128·64 + 64 = 16 448. At 2 bytes and 1.25 headroom: 1 layer 118 kB, 2 layers 195 kB, 3 layers 272 kB.
    monkeypatch.setattr(runner, "_memory_bytes", lambda device: (200e3, "this machine has {gb:.4f} GB available"))
    code = main(["validate", "run", "--model", str(_tiny(tmp_path / "tiny")), "--layers", "4",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--layers 4: tiny at tp=1 pp=1" in err and "0.0002 GB available" in err, err
    assert "valid: --layers 1 to 2" in err, err


def test_layout_above_torchrun_world_is_refused(tmp_path, capsys, monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    code = main(["validate", "run", "--model", str(_tiny(tmp_path / "tiny")), "--tp", "2", "--pp", "2",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--tp 2 --pp 2: needs 4 ranks, torchrun started 2 ranks" in err


def test_device_backend_and_timer_follow_one_option():
    assert (backend_for("cpu"), backend_for("cuda")) == ("gloo", "nccl")
    assert torch_device("cpu", 3) == torch.device("cpu")
    assert torch_device("cuda", 3) == torch.device("cuda", 3)
    assert isinstance(timer_for("cpu"), PerfCounterTimer) and isinstance(timer_for("cuda"), CudaEventTimer)
    assert (timer_for("cpu").kind, timer_for("cuda").kind) == ("perf_counter", "cuda_event")
    with pytest.raises(ValueError, match="valid: cpu, cuda"):
        backend_for("tpu")  # type: ignore[arg-type]
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert under_torchrun(env) and not under_torchrun({k: v for k, v in env.items() if k != "MASTER_PORT"})


def test_torchrun_style_launch(tmp_path):
    """Two ranks started as torchrun starts them, each running the `splitsim` command: the layout with
    tp·pp = WORLD_SIZE runs (the 1-rank one is skipped), rank 0 writes the folder."""
    model, out = _tiny(tmp_path / "tiny"), tmp_path / "m"
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "splitsim", "validate", "run", "--model", str(model), "--tp", "1", "2",
             "--layers", "2", "--batch", "2", "--prompt", "4", "--decode", "1", "--repeats", "1", "--warmup", "0",
             "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=tmp_path))  # not the checkout's root, whose splitsim/ folder would shadow the installed package
    try:  # a limit only against a hang (a rank that never meets the other), so an hour: a loaded machine is slow
        outputs = [p.communicate(timeout=3600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows, config = measurements.read(out)
    assert config["launcher"] == "torchrun" and config["layouts"] == [[2, 1]]
    ops = _ops(rows)
    assert set(ops["rank"].astype(int)) == {0, 1} and set(ops["tp"]) == {2}
    assert len(ops[(ops["op"] == "mlp_allreduce") & (ops["phase"] == "decode")]) == 2 * 2  # 2 layers × 2 ranks
    assert set(rows[rows["kind"] == "micro"]["op"]) >= {"gemm", "allreduce", "allgather", "alltoall", "sendrecv"}


def test_a_second_run_replaces_the_folder_whole(tmp_path, capsys):
    """A run into a folder of an earlier run (say with a comparison.csv `validate compare` wrote) leaves only
    the new run's files, and an --out that is a file is refused before anything is measured."""
    out = tmp_path / "m"
    out.mkdir()
    (out / "comparison.csv").write_text("stale\n")
    argv = ["validate", "run", "--model", str(_tiny(tmp_path / "tiny")), "--layers", "1", "--prompt", "4",
            "--decode", "1", "--repeats", "1", "--warmup", "0", "--no-micro"]
    assert main([*argv, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([measurements.TABLE, measurements.CONFIG])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("m.")] == []  # no staging leftovers
    (tmp_path / "file").write_text("")
    assert main([*argv, "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
