"""Bad input: one line naming the field, the value and what is valid; exit code 2; no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import SCENARIOS, error_line
from splitsim import simulate
from splitsim.scenario import load_scenario


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_loads_and_plans(path):
    from splitsim.sim.plan import build_plan

    plan = build_plan(load_scenario(path)).pool
    assert plan.kv_cache_tokens > 0


def test_the_four_contract_scenarios_exist():
    names = {p.name for p in SCENARIOS.glob("*.yaml")}
    assert {"h100-nvlink-70b.yaml", "l40s-pcie-70b.yaml", "h100-2node-ib.yaml",
            "h100-2node-ethernet.yaml"} <= names


def test_set_overrides_parse_yaml_scalars():
    scenario = load_scenario(SCENARIOS / "h100-nvlink-70b.yaml",
                             ["parallel.tp=4", "parallel.dp=2", "workload.rate=0.5",
                              "scheduler.max_num_seqs=32", "precision.kv_cache=fp8"])
    assert (scenario.parallel.tp, scenario.parallel.dp, scenario.workload.rate) == (4, 2, 0.5)
    assert scenario.scheduler.max_num_seqs == 32
    assert scenario.precision.kv_cache == "fp8"


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load((SCENARIOS / "h100-nvlink-70b.yaml").read_text())




CASES = [
    ("malformed YAML", "model: llama-3-70b\ncluster: [unclosed\nparallel: {tp: 8}\n", [], ["line", "YAML"]),
    ("unknown field", {"parallel.tpp": 2}, [], ["parallel.tpp", "unknown field", "tp, pp, dp"]),
    ("unknown field via --set", {}, ["sim.speed=3"], ["sim.speed", "unknown field", "granularity"]),
    ("tp not dividing heads", {}, ["parallel.tp=3"], ["parallel.tp = 3", "64 attention heads", "valid: 1, 2, 4, 8"]),
    ("too many GPUs", {}, ["parallel.dp=2"], ["16 GPUs", "8 GPUs"]),
    ("model does not fit", {"model": "llama-3.1-405b"}, [], ["memory", "GiB", "usable"]),
    ("negative rate", {}, ["workload.rate=-1"], ["workload.rate = -1", "requests/s > 0", "inf"]),
    ("chunked_prefill contradicting policy", {}, ["scheduler.chunked_prefill=false"],
     ["scheduler.chunked_prefill = false", "scheduler.policy = chunked"]),
    ("prompt + output above the token budget", {}, ["scheduler.policy=prefill_first"],
     ["workload", "prompt + output", "max_batched_tokens = 2048", "prefill_first", "policy chunked"]),
    ("prompt above the token budget", {}, ["scheduler.policy=prefill_first", "memory.kv_allocation=reserve"],
     ["workload", "4096", "max_batched_tokens = 2048", "prefill_first", "policy chunked"]),
    ("unknown model", {"model": "gpt-9"}, [], ["model", "gpt-9", "llama-3-70b"]),
    ("unknown cluster", {"cluster": "dgx-z"}, [], ["cluster", "dgx-z", "h100-nvlink-node"]),
    ("bad granularity", {}, ["sim.granularity=token"], ["sim.granularity", "token", "stage", "layer"]),
    ("zero output tokens", {}, ["workload.output_tokens=0"], ["workload.output_tokens = 0", "greater than 0"]),
    ("a distribution with high < low", {}, ["workload.prompt_tokens={dist: uniform, low: 5, high: 2}"],
     ["workload.prompt_tokens", "high=2 must be at least low=5"]),
    ("an unknown distribution", {}, ["workload.output_tokens={dist: zipf}"], ["zipf", "uniform", "lognormal"]),
    ("a boolean TP", {}, ["parallel.tp=true"], ["parallel.tp", "valid integer"]),
    ("a NaN rate", {}, ["workload.rate=.nan"], ["workload.rate", "requests/s > 0"]),
    ("a boolean rate", {}, ["workload.rate=true"], ["workload.rate = True", "not a boolean"]),
    ("a rate that never arrives", {}, ["workload.rate=1e-300"], ["workload", "arrive at", "workload.rate"]),
    ("two load kinds in the file", {"workload.concurrency": 8}, [], ["workload.rate and workload.concurrency"]),
    ("an slo that is not a mapping", {}, ["slo=5"], ["slo = 5: expected a mapping"]),
    ("an unknown slo key", {}, ["slo.ttfx=1"], ["slo.ttfx: unknown key", "ttft_p99"]),
    ("a name leaving runs/", {}, ["name=../../etc"], ["name = '../../etc'", "one plain file name"]),
    ("a trillion requests", {}, ["workload.num_requests=1000000000000"], ["workload.num_requests", "10000000"]),
    ("a token budget no GPU holds", {}, ["scheduler.max_batched_tokens=100000000"],
     ["scheduler.max_batched_tokens = 100000000", "activations", "lower max_batched_tokens"]),
    ("a batch no GPU holds", {}, ["scheduler.max_num_seqs=10000000"], ["max_num_seqs = 10000000", "lower"]),
    ("a block larger than the cache", {}, ["memory.block_size=2000000"], ["memory.block_size = 2000000", "block"]),
    ("an absolute name", {}, ["name=/srv/x"], ["name = '/srv/x'", "one plain file name"]),
    ("an empty name", {}, ["name=''"], ["name = ''", "empty"]),
    ("an over-long relative model path", {}, ["model=" + "x" * 400], ["model", "x" * 40 + "…"]),
    ("a huge wrong value", {}, ["parallel.order=" + "y" * 400], ["parallel.order = 'yyyy", "…", "tp-pp-dp"]),
]


@pytest.mark.parametrize(("case", "change", "sets", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_with_exit_code_2(tmp_path, capsys, case, change, sets, expected):
    if isinstance(change, str):
        path = _write(tmp_path, change)
    else:
        data = _base()
        for key, value in change.items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
        path = _write(tmp_path, data)
    argv = ["run", str(path), "--out", str(tmp_path / "out"), "-q"]
    for item in sets:
        argv += ["--set", item]
    err = error_line(capsys, argv)
    for fragment in expected:
        assert fragment in err
    head = err.removeprefix("splitsim: error: ").split(":")[0]
    assert err.count(f"{head}:") == 1  # the field is named once, not by a wrapper and again by its check
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_checks_run_schema_then_layout_then_memory(tmp_path, capsys):
    # An unknown field and an impossible TP: the schema error wins.
    err = error_line(capsys, ["run", str(SCENARIOS / "h100-nvlink-70b.yaml"), "--set", "parallel.tp=3",
                               "--set", "parallel.foo=1"])
    assert "parallel.foo" in err
    # An impossible TP and a model that does not fit: the layout error wins.
    err = error_line(capsys, ["run", str(SCENARIOS / "h100-nvlink-70b.yaml"), "--set", "parallel.tp=3",
                               "--set", "model=llama-3.1-405b"])
    assert "attention heads" in err


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    bad = _write(tmp_path, "model: [\n")
    script = Path(sys.executable).with_name("splitsim")
    done = subprocess.run([str(script), "run", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_users_can_bring_their_own_gpu_fabric_and_cluster_files(tmp_path):
    from helpers import IDEAL_GPU
    from splitsim.sim.plan import build_plan

    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump({**IDEAL_GPU, "name": "my-gpu"}))
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "name": "my-box", "gpu": str(tmp_path / "gpu.yaml"), "gpus_per_node": 4,
        "intra_node": "pcie-gen4-2socket"}))
    scenario = load_scenario(SCENARIOS / "h100-nvlink-70b.yaml",
                             [f"cluster={tmp_path / 'cluster.yaml'}", "parallel.tp=4"])
    plan = build_plan(scenario).pool
    assert (plan.cluster.name, plan.cluster.gpu.name, plan.cluster.num_gpus) == ("my-box", "my-gpu", 4)


@pytest.mark.parametrize(("cluster", "compute", "fp4_compute"), [
    ("h100-nvlink-node", "fp8", "bf16"), ("a100-nvlink-node", "bf16", "bf16"), ("l40s-pcie-node", "fp8", "bf16"),
    ("b200-nvlink-node", "fp8", "fp4"), ("rtx-pro-6000-pcie-node", "fp8", "fp4")])  # Blackwell computes FP4
def test_fp8_and_fp4_weights_use_their_tensor_cores_only_where_they_exist(cluster, compute, fp4_compute):
    from splitsim.sim.plan import build_plan

    plan = build_plan(load_scenario(SCENARIOS / "h100-nvlink-70b.yaml",
                                    [f"cluster={cluster}", "precision.weights=fp8"])).pool
    assert plan.sharding.compute == compute
    fp4 = build_plan(load_scenario(SCENARIOS / "h100-nvlink-70b.yaml", [f"cluster={cluster}",
                                                                         "precision.weights=fp4"])).pool
    assert fp4.sharding.compute == fp4_compute  # weight-only before Blackwell
    assert fp4.weights_bytes_per_gpu == pytest.approx(plan.weights_bytes_per_gpu / 2)


def test_files_a_scenario_names_are_found_next_to_it(tmp_path):
    import json

    folder = tmp_path / "study"
    (folder / "tiny").mkdir(parents=True)
    (folder / "tiny" / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 512, "intermediate_size": 1024,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000}))
    data = _base()
    data["model"] = "tiny"  # relative to the scenario file, not to the working directory
    (folder / "s.yaml").write_text(yaml.safe_dump(data))
    assert load_scenario(folder / "s.yaml").model == str(folder / "tiny")


@pytest.mark.parametrize("case", ["parent is a file", "name too long"])
def test_an_out_folder_that_cannot_be_made_is_one_line_before_simulating(tmp_path, capsys, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker / "sub" if case == "parent is a file" else tmp_path / ("x" * 300)
    err = error_line(capsys, ["run", str(SCENARIOS / "h100-nvlink-70b.yaml"), "--out", str(out), "-q"])
    assert err.startswith("splitsim: error: --out ")
    assert ("is a file" in err) if case == "parent is a file" else ("300 bytes" in err and "x" * 81 not in err)


def test_a_result_that_cannot_be_real_is_an_error_naming_the_figure():
    """The last line of defence, fed figures no valid input should produce."""
    import pandas as pd

    from splitsim.api import check_result
    from splitsim.errors import ScenarioError

    good = pd.DataFrame({"request_id": [0, 1], "ttft_s": [0.1, 0.2], "e2e_s": [1.0, 2.0]})
    check_result(good, {"a": {"b": 1.0, "c": None}, "d": [1.0, 2]})
    with pytest.raises(ScenarioError, match=r"request 1 has ttft_s = 0\.0"):
        check_result(good.assign(ttft_s=[0.1, 0.0]), {})
    with pytest.raises(ScenarioError, match=r"summary itl_s\.p99 = inf is not finite"):
        check_result(good, {"itl_s": {"p50": 1.0, "p99": float("inf")}})


def test_a_cluster_derives_from_a_preset_with_base():
    """`{base: P, intra_node: {p2p: true}}` is preset P with only that changed (and a name that says so);
    `--set cluster.intra_node.p2p=true` on a scenario naming P gives the same run."""
    from splitsim.hardware.catalog import load_cluster

    preset = load_cluster("l40s-pcie-node").model_dump()
    derived = load_cluster({"base": "l40s-pcie-node", "intra_node": {"p2p": True}}).model_dump()
    assert derived["intra_node"]["p2p"] is True and derived["name"] == "l40s-pcie-node+custom"
    for data in (preset, derived):
        data["intra_node"].pop("p2p"), data.pop("name")
    assert derived == preset
    path = SCENARIOS / "l40s-pcie-70b.yaml"
    small = ["workload.num_requests=4", "workload.output_tokens=8"]  # its contended PCIe walk is slow per batch
    by_set = simulate(load_scenario(path, ["cluster.intra_node.p2p=true", *small])).summary
    inline = simulate(load_scenario(path, ['cluster={base: l40s-pcie-node, intra_node: {p2p: true}}',
                                           *small])).summary
    assert by_set == inline and by_set["scenario"]["cluster"] == "l40s-pcie-node+custom"
    plain = simulate(load_scenario(path, small)).summary
    assert by_set["throughput_tokens_per_s"] != plain["throughput_tokens_per_s"]  # P2P changes the all-reduces


@pytest.mark.parametrize(("override", "words"), [
    ("cluster.base=nope", "unknown cluster 'nope'"),
    ("cluster.base=[1]", "cluster.base = [1]: expected a cluster preset name or YAML path"),
    ("cluster.intra_node.p2p=maybe", "cluster.intra_node.p2p = 'maybe'"),
])
def test_a_bad_derived_cluster_is_one_line(tmp_path, capsys, override, words):
    err = error_line(capsys, ["run", str(SCENARIOS / "l40s-pcie-70b.yaml"), "--set", override, "--out",
                              str(tmp_path / "r")])
    assert words in err and not (tmp_path / "r").exists()
