"""Property-based fuzzing of every input a run reads, as a careless or hostile user would write it.

For each kind of input — the scenario at every level, each file a scenario names (cluster, GPU and fabric
YAML, hardware profile, model config.json, request trace) and the command-line flags — a valid base is
broken one way at a time (a field replaced by an absurd value, an unknown key, the text cut, bytes that are
not UTF-8, a line repeated, garbage appended) and `splitsim run` is called in-process. Whatever the input,
the run either succeeds (the change happened to be valid) or ends with exit code 2 and one line on stderr
naming the file or the field, no traceback and nothing written. An unexpected exception fails the test with
its traceback: there is no blanket handler to hide it.

Hypothesis runs under the `ci` profile (tests/conftest.py): derandomised, no deadline, fixed example counts.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import catalog_yaml, scenario_dict, tiny_model_path
from splitsim.cli import main
from splitsim.validate import measurements

pytestmark = pytest.mark.slow  # the fuzz suite: 1,632 cases, minutes of CPU

BASE_SCENARIO = scenario_dict(workload={"num_requests": 3, "rate": 0, "prompt_tokens": 32, "output_tokens": 4},
                              parallel={"ep": 1}, sim={"contention": False},
                              moe={"imbalance": None, "redundant_experts": 0})  # every key a scenario may hold

# Values no field should take silently, and a few that are valid somewhere.
ABSURD = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([-1, 0, 1, 3, 10**7 + 1, 2**63, 10**30]),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.5, 0.0, 1e-308, 1e308]),
    st.text(max_size=12), st.sampled_from(["inf", "nan", "-0", "1e999", "80 GB", "5 us", "x" * 500]),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a nested mapping, mappings themselves included."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            found.append((*prefix, key))
            found += _paths(value, (*prefix, key))
    return found


def _mutated(base: dict, data: st.DataObject) -> tuple[dict, tuple]:
    """`base` with one field replaced by an absurd value, or an unknown key added somewhere."""
    tree = copy.deepcopy(base)
    paths = _paths(tree)
    path = data.draw(st.sampled_from(paths))
    node = tree
    for key in path[:-1]:
        node = node[key]
    if data.draw(st.booleans()) or not paths:
        node[path[-1]] = data.draw(ABSURD)
    else:
        node[data.draw(st.sampled_from(["speed", "tpp", "fp9", "Name"]))] = 1
        path = path[:-1] + ("(unknown)",)
    return tree, path


def _corrupted(text: str, data: st.DataObject) -> bytes:
    """The file's text broken at the byte level."""
    raw = text.encode()
    at = data.draw(st.integers(0, len(raw)))
    match data.draw(st.sampled_from(["cut", "bytes", "repeat line", "append", "replace"])):
        case "cut":
            return raw[:at]
        case "bytes":
            return raw[:at] + data.draw(st.binary(min_size=1, max_size=6)) + raw[at:]
        case "repeat line":
            lines = raw.splitlines(keepends=True) or [b""]
            i = data.draw(st.integers(0, len(lines) - 1))
            return b"".join(lines[:i + 1] + lines[i:])
        case "append":
            return raw + data.draw(st.text(max_size=20)).encode()
        case _:
            return data.draw(st.text(max_size=30)).encode()


def _run(tmp_path: Path, scenario: Path, *flags: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    try:
        code = main(["run", str(scenario), "--out", str(out), "-q", "--no-plot", *flags])
    except SystemExit as stop:  # argparse ends bad flags with sys.exit(2), as the installed command would
        code = int(stop.code or 0)
    return code, out


def _check(capsys, code: int, out: Path, names: tuple[str, ...]) -> None:
    """Success (`out` written, stderr empty), or exit 2 with one line naming one of `names`, no traceback,
    nothing written."""
    err = capsys.readouterr().err
    event(f"exit {code}")  # --hypothesis-show-statistics tells how many runs were accepted and refused
    if code == 0:
        assert out.exists() and err == "", err
        return
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert any(name in err for name in names), (names, err)
    assert not out.exists()


def _base_scenario(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh folder holding the valid base scenario as s.yaml."""
    folder = _fresh(tmp_path)
    scenario = folder / "s.yaml"
    scenario.write_text(yaml.safe_dump(BASE_SCENARIO))
    return folder, scenario


def _fresh(tmp_path: Path) -> Path:
    """A clean folder per example (pytest's tmp_path is shared by every example of one test)."""
    folder = tmp_path / f"ex{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    return folder


@FUZZ
@given(data=st.data())
def test_any_scenario_field_is_accepted_or_refused_in_one_line(tmp_path, capsys, data):
    folder = _fresh(tmp_path)
    tree, path = _mutated(BASE_SCENARIO, data)
    scenario = folder / "s.yaml"
    scenario.write_text(yaml.safe_dump(tree))
    code, out = _run(folder, scenario)
    _check(capsys, code, out, (str(path[0]), "s.yaml", "workload", "memory", "result"))


@FUZZ
@given(data=st.data())
def test_any_field_of_an_attention_dp_scenario_is_accepted_or_refused_in_one_line(tmp_path, capsys, data):
    """A mixture of experts spread over four replicas (lockstep steps, dummy batches, all-to-alls)."""
    folder = _fresh(tmp_path)
    model = folder / "config.json"
    model.write_text(json.dumps(FILES["moe model"][1]()))
    base = {**BASE_SCENARIO, "model": str(model), "parallel": {"tp": 1, "pp": 1, "dp": 4, "ep": 4, "order": "tp-pp-dp"},
            "moe": {"imbalance": 1.5, "redundant_experts": 4}}
    tree, path = _mutated(base, data)
    scenario = folder / "s.yaml"
    scenario.write_text(yaml.safe_dump(tree))
    code, out = _run(folder, scenario)
    _check(capsys, code, out, (str(path[0]), "s.yaml", "workload", "memory", "result"))


@FUZZ
@given(data=st.data())
def test_any_broken_scenario_text_is_refused_in_one_line(tmp_path, capsys, data):
    folder = _fresh(tmp_path)
    scenario = folder / "s.yaml"
    scenario.write_bytes(_corrupted(yaml.safe_dump(BASE_SCENARIO), data))
    code, out = _run(folder, scenario)
    _check(capsys, code, out, ("s.yaml", "scenario", "model", "cluster", "workload", "parallel", "name",
                               "scheduler", "sim", "precision", "memory"))


def _profile() -> dict:
    gpu = catalog_yaml("gpus", "h100-sxm")
    return {"schema": "splitsim.hardware-profile/1", "name": "p", "gpu": "h100-sxm",
            "efficiency": gpu["efficiency"], "fitted_on": ["fuzz"]}


TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
               "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}
# kind -> (file name, the valid mapping, how the scenario names the file)
FILES = {
    "cluster": ("cluster.yaml", lambda: {"name": "c", "gpu": "h100-sxm", "gpus_per_node": 8,
                                         "intra_node": "nvlink4-nvswitch"}, "cluster"),
    "gpu": ("gpu.yaml", lambda: catalog_yaml("gpus", "h100-sxm"), "gpu"),
    "fabric": ("fabric.yaml", lambda: catalog_yaml("fabrics", "nvlink4-nvswitch"), "fabric"),
    "profile": ("profile.yaml", _profile, "hardware_profile"),
    "model": ("config.json", lambda: dict(TINY_CONFIG), "model"),
    "moe model": ("config.json", lambda: TINY_CONFIG | {"architectures": ["Qwen3MoeForCausalLM"], "head_dim": 64,
                                                         "num_experts": 4, "num_experts_per_tok": 2,
                                                         "moe_intermediate_size": 128, "mlp_only_layers": [0],
                                                         "decoder_sparse_step": 1}, "model"),
    # sliding windows on every other layer, as gpt-oss writes them (layer_types), and MXFP4 experts
    "windowed moe model": ("config.json", lambda: TINY_CONFIG | {
        "architectures": ["GptOssForCausalLM"], "head_dim": 64, "num_local_experts": 4, "experts_per_token": 2,
        "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"],
        "quantization_config": {"quant_method": "mxfp4"}}, "model"),
    # a PCIe tree (switches, sockets, a ring rate per level, NCCL's all-to-all per group size) and a profile
    # that fits one rate per group size
    "pcie fabric": ("fabric.yaml", lambda: catalog_yaml("fabrics", "pcie-gen4-2socket"), "fabric"),
    "pcie profile": ("profile.yaml", lambda: catalog_yaml("profiles", "l40s-vllm"), "hardware_profile"),
}


def _scenario_naming(folder: Path, kind: str, file: Path) -> Path:
    data = copy.deepcopy(BASE_SCENARIO)
    match kind:
        case "cluster":
            data["cluster"] = str(file)
        case "gpu":
            data["cluster"] = {"name": "c", "gpu": str(file), "gpus_per_node": 8, "intra_node": "nvlink4-nvswitch"}
        case "fabric":
            data["cluster"] = {"name": "c", "gpu": "h100-sxm", "gpus_per_node": 8, "intra_node": str(file)}
        case "pcie fabric":
            data["cluster"] = {"name": "c", "gpu": "l40s", "gpus_per_node": 8, "intra_node": str(file)}
        case "profile":
            data["hardware_profile"] = str(file)
        case "pcie profile":
            data["hardware_profile"], data["cluster"] = str(file), "l40s-pcie-p2p-node"
        case "model" | "windowed moe model":
            data["model"] = str(file)
        case "moe model":  # its experts over two replicas, attention data-parallel
            data["model"], data["parallel"] = str(file), {"tp": 1, "pp": 1, "dp": 2, "ep": 2}
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@FUZZ
@pytest.mark.parametrize("kind", list(FILES))
@given(data=st.data())
def test_any_named_file_broken_any_way_is_refused_in_one_line_naming_it(tmp_path, capsys, kind, data):
    folder = _fresh(tmp_path)
    name, valid, _ = FILES[kind]
    file = folder / name
    dump = (lambda d: json.dumps(d, allow_nan=True)) if name.endswith(".json") else yaml.safe_dump
    if data.draw(st.booleans()):
        tree, _ = _mutated(valid(), data)
        file.write_text(dump(tree))
    else:
        file.write_bytes(_corrupted(dump(valid()), data))
    code, out = _run(folder, _scenario_naming(folder, kind, file))
    # A file that reads well can still describe a model or a GPU the layout cannot hold: then the check that
    # fails names what it checked (memory, parallel, workload) rather than the file.
    _check(capsys, code, out, (name, str(file), "memory:", "parallel", "workload:"))


@FUZZ
@given(data=st.data())
def test_any_broken_trace_is_refused_in_one_line_naming_it(tmp_path, capsys, data):
    folder = _fresh(tmp_path)
    rows = "arrival_s,prompt_tokens,output_tokens\n0,32,4\n0.5,64,2\n1.5,16,8\n"
    if data.draw(st.booleans()):  # a cell replaced by an absurd value
        cells = [line.split(",") for line in rows.splitlines()]
        r, c = data.draw(st.integers(0, len(cells) - 1)), data.draw(st.integers(0, 2))
        cells[r][c] = str(data.draw(ABSURD)).replace("\n", " ")
        raw = ("\n".join(",".join(row) for row in cells) + "\n").encode()
    else:
        raw = _corrupted(rows, data)
    trace = folder / "t.csv"
    trace.write_bytes(raw)
    scenario = folder / "s.yaml"
    scenario.write_text(yaml.safe_dump({**BASE_SCENARIO, "workload": {"trace": "t.csv"}}))
    code, out = _run(folder, scenario)
    _check(capsys, code, out, ("t.csv", "workload"))


FLAG_VALUES = st.one_of(st.text(max_size=10), st.sampled_from(["nan", "inf", "-1", "0", "1e999", "", "-", "--"]))


@FUZZ
@given(data=st.data())
def test_any_command_line_flag_is_accepted_or_refused_in_one_line(tmp_path, capsys, data):
    folder, scenario = _base_scenario(tmp_path)
    flag = data.draw(st.sampled_from(["--trace-window", "--trace-start", "--slo", "--set"]))
    value = data.draw(FLAG_VALUES)
    if flag == "--set":
        value = f"{data.draw(st.sampled_from([p for p in _paths(BASE_SCENARIO)]))[0]}={value}"
    code, out = _run(folder, scenario, flag, value)
    _check(capsys, code, out, (flag, flag.lstrip("-").replace("-", "_"), value.split("=")[0] or "--",
                               "scenario", "workload", "model", "cluster", "parallel", "scheduler", "sim",
                               "precision", "memory", "name", "s.yaml"))


COST_FLAGS = {"--cluster": st.sampled_from(["h100-nvlink-node", "nope", "", "/", "x" * 300]),
              "--gpus": FLAG_VALUES | st.sampled_from(["2", "8", "9"]),
              "--bytes": FLAG_VALUES | st.sampled_from(["1e6", "1e400", "-5"]),
              "--gpu": st.sampled_from(["h100-sxm", "a100-sxm", "nope", ""]),
              "--m": FLAG_VALUES | st.sampled_from(["64", "1e3"]), "--n": st.sampled_from(["64", "0", "x"]),
              "--k": st.sampled_from(["64", "-1"]), "--dtype": st.sampled_from(["bf16", "fp8", "fp4"]),
              "--impl": st.sampled_from(["custom", "nccl", "mpi", ""]),
              "--engine": st.sampled_from(["vllm", "sglang", "trtllm", "ideal", "tgi", ""])}


@FUZZ
@given(data=st.data())
def test_any_cost_command_is_answered_or_refused_in_one_line(capsys, data):
    """`splitsim cost` with any subset of its flags, any values: an answer, or exit 2 and one line."""
    op = data.draw(st.sampled_from(["allreduce", "allgather", "alltoall", "sendrecv", "gemm", "bogus"]))
    argv = ["cost", op]
    for flag in data.draw(st.lists(st.sampled_from(list(COST_FLAGS)), unique=True, max_size=5)):
        argv += [flag, data.draw(COST_FLAGS[flag])]
    try:
        code = main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    event(f"exit {code}")
    if code == 0:
        assert "µs" in out and err == ""
    else:
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


# ------------------------------------------------------------------ calibrate and validate compare

def _measurements(folder: Path) -> None:
    """A small valid measurements folder: what `validate run` writes for a planted CPU (tests/test_calibrate)."""
    from test_calibrate import CONFIG, _runner_rows

    measurements.write(folder, _runner_rows(3, [1, 4, 16, 64], np.geomspace(1e3, 1e6, 6)), CONFIG)


def _broken_measurements(folder: Path, data: st.DataObject) -> str:
    """A measurements folder broken one way; returns the name of the file that was broken."""
    _measurements(folder)
    name = data.draw(st.sampled_from([measurements.CONFIG, measurements.TABLE]))
    file = folder / name
    if name == measurements.CONFIG and data.draw(st.booleans()):
        tree, _ = _mutated(json.loads(file.read_text()), data)
        file.write_text(json.dumps(tree, allow_nan=True))
    elif name == measurements.TABLE:
        _broken_table(file, data)
    else:
        file.write_bytes(_corrupted(file.read_text(), data))
    return name


def _broken_table(file: Path, data: st.DataObject) -> None:
    """A CSV with one cell replaced by an absurd value, or its bytes broken."""
    if data.draw(st.booleans()):
        table = pd.read_csv(file, dtype=str, keep_default_na=False)
        row, column = data.draw(st.integers(0, len(table) - 1)), data.draw(st.sampled_from(list(table.columns)))
        table.loc[row, column] = str(data.draw(ABSURD))
        table.to_csv(file, index=False)
    else:
        file.write_bytes(_corrupted(file.read_text(), data))


def _exit(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


@FUZZ
@given(data=st.data())
def test_any_broken_measurements_folder_is_calibrated_or_refused_in_one_line(tmp_path, capsys, data):
    folder = _fresh(tmp_path)
    broken = _broken_measurements(folder / "run", data)
    out = folder / "profile.yaml"
    code = _exit(["calibrate", str(folder / "run"), "--out", str(out)])
    _check(capsys, code, out, (broken, str(folder / "run")))


@FUZZ
@given(data=st.data())
def test_any_broken_comparison_input_is_compared_or_refused_in_one_line(tmp_path, capsys, data):
    """`validate compare` with a broken measurements folder or a broken profile: comparison.csv, or one line."""
    folder = _fresh(tmp_path)
    run = folder / "run"
    profile = folder / "profile.yaml"
    valid = {**_profile(), "gpu": "cpu-core", "efficiency": catalog_yaml("gpus", "cpu-core")["efficiency"],
             "fitted_on": ["elsewhere sha256:0000000000000000"]}
    if data.draw(st.booleans()):
        broken = _broken_measurements(run, data)
        profile.write_text(yaml.safe_dump(valid))
    else:
        _measurements(run)
        broken = profile.name
        if data.draw(st.booleans()):
            profile.write_text(yaml.safe_dump(_mutated(valid, data)[0]))
        else:
            profile.write_bytes(_corrupted(yaml.safe_dump(valid), data))
    code = _exit(["validate", "compare", str(run), "--profile", str(profile)])
    _check(capsys, code, run / "comparison.csv", (broken, str(run)))
    assert code == 0 or not (run / "comparison.png").exists()


def _vidur_folder(root: Path) -> list[Path]:
    """A small Vidur profiling tree (two models' mlp.csv, an all_reduce.csv) with plausible H100 times."""
    tokens = [1, 8, 32, 128, 512, 2048]
    files = []
    for model, (hidden, ffn) in {"org/a": (4096, 11008), "org/b": (5120, 13824)}.items():
        rows = pd.DataFrame({"n_head": 32, "n_kv_head": 32, "n_embd": hidden, "n_expanded_embd": ffn,
                             "use_gated_mlp": True, "num_tokens": tokens, "num_tensor_parallel_workers": 1})
        for op, width in (("attn_pre_proj", 3 * hidden), ("attn_post_proj", hidden), ("mlp_up_proj", 2 * ffn),
                          ("mlp_down_proj", hidden)):
            rows[f"time_stats.{op}.median"] = [0.005 + 2 * m * width * hidden / 6e14 * 1e3 for m in tokens]
        files.append(root / "compute" / "h100" / model / "mlp.csv")
        files[-1].parent.mkdir(parents=True)
        rows.to_csv(files[-1], index=False)
    sizes = [2048 * 4**i for i in range(8)]
    network = pd.DataFrame({"num_workers": 2, "devices_per_node": 2, "size": sizes,
                            "time_stats.all_reduce.median": [0.02 + s / 1e8 for s in sizes]})
    files.append(root / "network" / "h100_dgx" / "all_reduce.csv")
    files[-1].parent.mkdir(parents=True)
    network.to_csv(files[-1], index=False)
    return files


@FUZZ
@given(data=st.data())
def test_any_broken_vidur_folder_is_calibrated_or_refused_in_one_line(tmp_path, capsys, data):
    folder = _fresh(tmp_path)
    _broken_table(data.draw(st.sampled_from(_vidur_folder(folder / "vidur"))), data)
    out = folder / "profile.yaml"
    code = _exit(["calibrate", str(folder / "vidur"), "--gpu", "h100", "--network", "h100_dgx", "--out", str(out)])
    _check(capsys, code, out, (str(folder / "vidur"),))


RUN_FLAGS = {"--tp": "1", "--pp": "1", "--batch": "1", "--prompt": "8", "--decode": "1", "--layers": "1",
             "--warmup": "0", "--repeats": "1", "--dtype": "bf16", "--device": "cpu", "--cluster": "cpu-local",
             "--seed": "0"}


@settings(FUZZ, max_examples=max(1, settings.default.max_examples // 3))  # a run that succeeds spawns torch
@given(data=st.data())
def test_any_validate_run_flag_is_measured_or_refused_in_one_line(tmp_path, capsys, data):
    pytest.importorskip("torch")
    folder = _fresh(tmp_path)
    flags = dict(RUN_FLAGS, **{"--model": tiny_model_path(folder)})
    flag = data.draw(st.sampled_from(list(flags)))
    flags[flag] = data.draw(FLAG_VALUES | st.sampled_from(["2", "3", "4096", "1e9", "h100-nvlink-node", "fp16"]))
    out = folder / "measured"
    code = _exit(["validate", "run", *[part for pair in flags.items() for part in pair], "--no-micro",
                  "--out", str(out)])
    _check(capsys, code, out / measurements.TABLE, (flag, flag.lstrip("-"), "--"))
    assert code == 0 or not out.exists()


def _tiny_trace(folder: Path) -> str:
    path = folder / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0,16,8\n0.5,24,4\n")
    return str(path)


ADVISE_FLAGS = {"--gpus": "1", "--isl": "16", "--osl": "8", "--max-num-seqs": "4", "--precision": "bf16",
                "--kv-cache": "bf16", "--objective": "throughput_per_gpu", "--seed": "0", "--jobs": "1"}


@FUZZ
@given(data=st.data())
def test_any_advise_flag_is_answered_or_refused_in_one_line(tmp_path, capsys, data):
    folder = _fresh(tmp_path)
    flags = dict(ADVISE_FLAGS)
    flag = data.draw(st.sampled_from([*flags, "--rate", "--concurrency", "--num-requests", "--model", "--cluster",
                                      "--trace", "--overlong"]))
    flags[flag] = data.draw(FLAG_VALUES | st.sampled_from(["2", "fp8", "bf16,fp8", "latency", "nope", "4,4", "skip",
                                                           _tiny_trace(folder)]))
    if flag == "--trace":
        del flags["--isl"], flags["--osl"]
    flags.setdefault("--model", "llama-3-8b")
    flags.setdefault("--cluster", "h100-nvlink-node")
    out = folder / "advice"
    code = _exit(["advise", *[part for pair in flags.items() for part in pair], "-q", "--out", str(out)])
    _check(capsys, code, out / "advice.json", (flag, flag.lstrip("-"), "--"))
    assert code == 0 or not out.exists()


@FUZZ
@given(data=st.data())
def test_any_sweep_grid_is_swept_or_refused_in_one_line(tmp_path, capsys, data):
    folder, scenario = _base_scenario(tmp_path)
    key = data.draw(st.sampled_from([".".join(map(str, p)) for p in _paths(BASE_SCENARIO)] + ["nope", ""]))
    values = data.draw(FLAG_VALUES | st.sampled_from(["1,2", "[1, 2]", "[", "[]", "{a: 1}", "inf,nan"]))
    out = folder / "sweep"
    code = _exit(["sweep", str(scenario), "--grid", f"{key}={values}", "--jobs", "1", "--out", str(out)])
    _check(capsys, code, out / "sweep.csv", ("--grid", "s.yaml", "scenario"))
    assert code == 0 or not out.exists()


RAY_ADDRESSES = (st.text(max_size=10).filter(lambda v: ":" not in v and v != "auto")  # no lookup of a random host
                 | st.sampled_from(["127.0.0.1:1", "ray://127.0.0.1:1", "localhost:1", ":1", "127.0.0.1:", "1.2:x"]))


@settings(FUZZ, max_examples=max(1, settings.default.max_examples // 3))
@given(data=st.data())
def test_any_ray_address_but_a_running_cluster_is_refused_in_one_line(tmp_path, capsys, data):
    """`--ray auto` starts a local instance (tests/test_ray.py); any other address must answer, or the
    command says so in one line, at once."""
    folder, scenario = _base_scenario(tmp_path)
    address = data.draw(RAY_ADDRESSES)
    out = folder / "out"
    command = data.draw(st.sampled_from([
        ["advise", "--model", "llama-3-8b", "--cluster", "h100-nvlink-node", "--gpus", "1", "-q"],
        ["sweep", str(scenario), "--grid", "sim.seed=0,1", "-q"]]))
    code = _exit([*command, "--ray", address, "--out", str(out)])
    _check(capsys, code, out / "never", ("--ray",))
    assert code == 2 and not out.exists()


AICONFIGURATOR = Path(__file__).resolve().parent / "data" / "aiconfigurator" / "excerpt"


@settings(FUZZ, max_examples=max(1, settings.default.max_examples // 3))  # a success fits the excerpt (~1 s)
@given(data=st.data())
def test_any_aiconfigurator_request_is_fitted_or_refused_in_one_line(tmp_path, capsys, data):
    pytest.importorskip("pyarrow")
    folder = _fresh(tmp_path)
    flags = {"--aiconfigurator": "h100_sxm", "--tables": str(AICONFIGURATOR)}
    flag = data.draw(st.sampled_from(["--aiconfigurator", "--framework", "--version", "--tables"]))
    flags[flag] = data.draw(FLAG_VALUES | st.sampled_from(["h100_sxm", "l40s", "vllm", "trtllm", "0.24.0", "2.30.0",
                                                           str(folder), "1.0"]))
    out = folder / "p.yaml"
    code = _exit(["calibrate", *[part for pair in flags.items() for part in pair], "--out", str(out), "--json"])
    _check(capsys, code, out, (flag, flag.lstrip("-"), "--", "aiconfigurator"))
    assert code == 0 or not out.exists()


CLUSTER_KEYS = ["cluster.base", "cluster.name", "cluster.num_nodes", "cluster.gpus_per_node", "cluster.gpu",
                "cluster.gpu.memory_bytes", "cluster.gpu.efficiency.compute", "cluster.intra_node",
                "cluster.intra_node.p2p", "cluster.intra_node.bw_efficiency", "cluster.intra_node.kind",
                "cluster.inter_node", "cluster.nope", "cluster.intra_node.custom_allreduce",
                "cluster.intra_node.custom_allreduce.max_bytes",
                "cluster.intra_node.custom_allreduce.one_shot_latency_s",
                "cluster.intra_node.custom_allreduce.symm_mem_max_bytes", "cluster.intra_node.held_out_errors",
                "cluster.gpu.efficiency.held_out_errors", "cluster.intra_node.assumed"]


@settings(FUZZ, max_examples=max(1, settings.default.max_examples // 3))
@given(data=st.data())
def test_any_change_to_a_named_cluster_runs_or_is_refused_in_one_line(tmp_path, capsys, data):
    """`--set cluster.KEY=V` on a scenario naming a preset derives from it (`base:`)."""
    folder, scenario = _base_scenario(tmp_path)
    key = data.draw(st.sampled_from(CLUSTER_KEYS))
    value = data.draw(FLAG_VALUES | st.sampled_from(["true", "h100-sxm", "l40s-pcie-node", "2", "0.5",
                                                     "{p2p: true}", "[1]"]))
    out = folder / "run"
    code = _exit(["run", str(scenario), "--set", f"{key}={value}", "--out", str(out)])
    _check(capsys, code, out / "summary.json", ("cluster", "--set", "s.yaml", "scenario", "workload", "memory",
                                                 "parallel"))
    assert code == 0 or not out.exists()
