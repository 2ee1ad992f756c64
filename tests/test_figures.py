"""No hardware figure that cannot be real is accepted (issue 7).

Every shipped preset and every profile `splitsim calibrate` writes (CPU fits included: slow loopback links,
latencies of milliseconds, fixed costs fitted to 0) loads; NaN, infinity, zero and negative figures are
refused, and so is a bare number outside the plausible range of its kind, with the readable forms that
would fit in the message; readable strings inside the range work. Through the CLI each refusal is one line
on stderr naming the field, exit code 2, and nothing written.
"""

from __future__ import annotations

import copy
import math
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from helpers import REPO, catalog_yaml, error_line, scenario_dict, tiny_model_path
from splitsim.cli import main
from splitsim.hardware.catalog import load_cluster, load_gpu, preset_names, resolve_cluster
from splitsim.hardware.cluster import ClusterSpec
from splitsim.hardware.fabric import (
    AllToAll,
    CustomAllReduce,
    NetworkFabric,
    NvSwitchFabric,
    PcieFabric,
    SharedMemoryFabric,
)
from splitsim.hardware.gpu import Efficiency, GpuSpec
from splitsim.hardware.profile import PROFILE_SCHEMA, HardwareProfile, LinkFit, apply_profile, load_profile
from splitsim.hardware.units import PLAUSIBLE, check_figure, readable
from splitsim.scenario import scenario_from_dict
from splitsim.sim.plan import build_plan
from splitsim.validate import measurements

US, MS, GB = 1e-6, 1e-3, 1e9

# The profile `splitsim calibrate` wrote on this project's 2-core CPU machine from
# `splitsim validate run --model llama-3-8b --layers 2 --tp 2 --pp 1 --batch 1 4 --prompt 64 256 --decode 4
# --device cpu` (docs/validate-cpu.md), figures as written: fixed costs fitted to (nearly) 0, a ring step of
# 321 µs, gloo over loopback at 1.2 GB/s.
CPU_FIT: dict[str, Any] = {
    "schema": PROFILE_SCHEMA, "name": "cpu", "gpu": "cpu-core",
    "efficiency": {"compute": 0.08110363207743745, "tile_m": 128, "tile_n": 64,
                   "wave_exponent": 0.20129049725682094, "m_half": 0.8044122748917962,
                   "memory": 0.03769859131377015, "attention": 0.0011002730945889176,
                   "elementwise": 0.014819919485693646, "elementwise_launch_s": 0.00015791902094955152,
                   "launch_s": 1.8469638031256157e-23, "source": "splitsim calibrate on cpu-local",
                   "assumed": False},
    "intra_node": {"collective_launch_s": 2.8548269842417355e-17, "latency_s": 0.00032149248265798177,
                   "bw_bytes_per_s": 1229441408.9390323, "p2p_latency_s": 8.067468177357742e-05,
                   "p2p_bw_bytes_per_s": 4564235545.321322},
    "inter_node": None,
    "fitted_on": ["cpu-fit sha256:8dde58419892c2d6"],
    "errors": {"gemm": {"rows": 12, "median": 0.0607, "max": 0.4745, "held_out": True}},
}




# ----------------------------------------------------------------------------- what must keep loading

@pytest.mark.parametrize("name", preset_names("clusters"))
def test_every_cluster_preset_loads(name):
    assert load_cluster(name).num_gpus > 0


@pytest.mark.parametrize("name", preset_names("gpus"))
def test_every_gpu_preset_loads(name):
    assert load_gpu(name).bf16_flops_per_s > 0


_FABRIC_MODELS: dict[str, type[BaseModel]] = {
    "nvswitch": NvSwitchFabric, "pcie": PcieFabric, "shared-memory": SharedMemoryFabric,
    "infiniband": NetworkFabric, "ethernet": NetworkFabric,
}


@pytest.mark.parametrize("name", preset_names("fabrics"))
def test_every_fabric_preset_loads(name):
    raw = catalog_yaml("fabrics", name)
    assert _FABRIC_MODELS[raw["kind"]].model_validate(raw).name == name


def _write_profile(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_cpu_profile_calibrate_wrote_here_loads_and_drives_cpu_local(tmp_path):
    profile = load_profile(_write_profile(tmp_path / "cpu.yaml", CPU_FIT))
    assert profile.efficiency.launch_s == pytest.approx(1.85e-23)  # a fixed cost fitted to ~0 is kept
    cluster = apply_profile(load_cluster("cpu-local"), profile)
    assert cluster.intra_node.latency_s == pytest.approx(321.5 * US, rel=1e-3)
    plan = build_plan(scenario_from_dict(scenario_dict(model=tiny_model_path(tmp_path), cluster="cpu-local",
                                                       hardware_profile=str(tmp_path / "cpu.yaml")))).pool
    assert plan.cluster.intra_node.bw_efficiency == pytest.approx(1.229e9 / 307.2e9, rel=1e-3)


def _cpu_rows(rng: np.random.Generator, t0: float, alpha: float, bw: float, p2p_alpha: float, p2p_bw: float,
              collectives: tuple[str, ...], group_sizes: tuple[int, ...]) -> pd.DataFrame:
    """Micro rows a CPU `validate run` could write: GEMMs on one AMX core, gloo collectives and send/recv."""
    gpu = load_gpu("cpu-core")
    rows = [{"kind": "micro", "op": "gemm", "m": m, "n": n, "k": k, "seconds": gpu.gemm_time_s(m, n, k, weight_bytes=2)}
            for m in (1, 2, 4, 8, 16, 32, 64, 128, 256) for n, k in ((1024, 512), (512, 1024), (3072, 1024))]
    sizes = np.geomspace(1e3, 1.6e7, 16)
    for op in collectives:
        phases = 2 if op == "allreduce" else 1
        for p in group_sizes:
            rows += [{"kind": "micro", "op": op, "nbytes": s, "group_size": p,
                      "seconds": t0 + phases * (p - 1) * (alpha + s / p / bw)} for s in sizes]
    rows += [{"kind": "micro", "op": "sendrecv", "nbytes": s, "group_size": 2, "seconds": p2p_alpha + s / p2p_bw}
             for s in sizes]
    table = pd.DataFrame(rows).reindex(columns=measurements.COLUMNS)
    table["seconds"] *= np.exp(rng.normal(0.0, 0.02, len(table)))
    table["repeats"] = 5
    return table


@pytest.mark.parametrize(("case", "figures", "collectives", "group_sizes"), [
    ("slow loopback, millisecond steps", (0.0, 2 * MS, 0.15 * GB, 1 * MS, 0.2 * GB), ("allreduce", "allgather"),
     (2, 4, 8)),
    ("one ring step count: α written as 0", (80 * US, 30 * US, 2 * GB, 40 * US, 3 * GB), ("allreduce",), (4,)),
])
def test_profiles_calibrate_writes_from_slow_cpu_runs_load(tmp_path, capsys, case, figures, collectives,
                                                           group_sizes):
    folder, out = tmp_path / "run", tmp_path / "profile.yaml"
    measurements.write(folder, _cpu_rows(np.random.default_rng(3), *figures, collectives, group_sizes),
                       {"model": "none", "device": "cpu", "dtype": "bf16"})
    assert main(["calibrate", str(folder), "--out", str(out)]) == 0, capsys.readouterr().err
    link = load_profile(out).intra_node
    assert link is not None
    assert link.bw_bytes_per_s < 5 * GB
    if len(group_sizes) == 1:
        assert link.latency_s == 0.0  # α cannot be told from t₀: written as 0, and the profile loads
    build_plan(scenario_from_dict(scenario_dict(model=tiny_model_path(tmp_path), cluster="cpu-local",
                                                hardware_profile=str(out))))


@pytest.mark.parametrize(("kind", "text", "expected"), [
    ("memory", "80 GiB", 80 * 2**30), ("memory", "8 MB", 8e6), ("memory", "16 TB", 16e12),
    ("memory_bandwidth", "17 GB/s", 17e9), ("memory_bandwidth", "19.6 TB/s", 19.6e12),
    ("link_bandwidth", "1 Gb/s", 125e6), ("link_bandwidth", "200 Gb/s", 25e9), ("link_bandwidth", "1.8 TB/s", 1.8e12),
    ("flops", "38.4 GFLOPS", 38.4e9), ("flops", "4.5 PFLOPS", 4.5e15),
    ("latency", "0.22 us", 0.22e-6), ("latency", "50 ns", 50e-9), ("latency", "5 ms", 5e-3),
    ("fixed_cost", "0 us", 0.0), ("fixed_cost", 0, 0.0), ("fixed_cost", "28.07 us", 28.07e-6),
    ("link_bandwidth", 25e9, 25e9),  # a bare number inside the range is taken as SI
])
def test_readable_and_si_figures_inside_the_range_work(kind, text, expected):
    assert check_figure(text, kind) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------- what is refused

_BASES: dict[str, tuple[type[BaseModel], Any]] = {
    "gpu": (GpuSpec, lambda: catalog_yaml("gpus", "h100-sxm")),
    "nvswitch": (NvSwitchFabric, lambda: catalog_yaml("fabrics", "nvlink4-nvswitch")),
    "pcie": (PcieFabric, lambda: catalog_yaml("fabrics", "pcie-gen4-2socket")),
    "shared-memory": (SharedMemoryFabric, lambda: catalog_yaml("fabrics", "loopback-gloo")),
    "network": (NetworkFabric, lambda: catalog_yaml("fabrics", "ib-ndr-rail")),
    "link-fit": (LinkFit, lambda: copy.deepcopy(CPU_FIT["intra_node"])),
    "profile": (HardwareProfile, lambda: copy.deepcopy(CPU_FIT)),
    "cluster": (ClusterSpec, lambda: resolve_cluster("h100-ib-2node")),
    "custom": (CustomAllReduce, lambda: catalog_yaml("fabrics", "nvlink4-nvswitch")["custom_allreduce"]),
    "alltoall": (AllToAll, lambda: catalog_yaml("fabrics", "pcie-gen4-2socket")["alltoall"]),
}

# Every figure with a unit, by the kind of its plausible range.
FIGURES = [
    ("gpu", "memory_bytes", "memory"), ("gpu", "memory_bw_bytes_per_s", "memory_bandwidth"),
    ("gpu", "bf16_flops_per_s", "flops"), ("gpu", "fp8_flops_per_s", "flops"), ("gpu", "fp4_flops_per_s", "flops"),
    ("gpu", "efficiency.launch_s", "fixed_cost"), ("gpu", "efficiency.elementwise_launch_s", "fixed_cost"),
    ("nvswitch", "link_bw_bytes_per_s", "link_bandwidth"), ("nvswitch", "latency_s", "latency"),
    ("nvswitch", "p2p_latency_s", "latency"), ("nvswitch", "nvls_latency_s", "latency"),
    ("nvswitch", "collective_launch_s", "fixed_cost"),
    ("pcie", "link_bw_bytes_per_s", "link_bandwidth"), ("pcie", "host_bridge_bw_bytes_per_s", "link_bandwidth"),
    ("pcie", "cross_switch_bw_bytes_per_s", "link_bandwidth"), ("pcie", "cross_switch_latency_s", "latency"),
    ("pcie", "latency_s", "latency"), ("pcie", "p2p_latency_s", "latency"),
    ("pcie", "collective_launch_s", "fixed_cost"),
    ("shared-memory", "link_bw_bytes_per_s", "link_bandwidth"), ("shared-memory", "latency_s", "latency"),
    ("shared-memory", "p2p_latency_s", "latency"), ("shared-memory", "collective_launch_s", "fixed_cost"),
    ("network", "nic_bw_bytes_per_s", "link_bandwidth"), ("network", "latency_s", "latency"),
    ("network", "p2p_latency_s", "latency"),
    ("link-fit", "bw_bytes_per_s", "link_bandwidth"), ("link-fit", "p2p_bw_bytes_per_s", "link_bandwidth"),
    ("link-fit", "latency_s", "fixed_cost"), ("link-fit", "p2p_latency_s", "fixed_cost"),
    ("link-fit", "collective_launch_s", "fixed_cost"), ("link-fit", "nvls_latency_s", "fixed_cost"),
    ("link-fit", "nvls_bw_bytes_per_s", "link_bandwidth"),
] + [("custom", f"{regime}_latency_s", "latency") for regime in ("one_shot", "two_shot", "symm_mem")] + [
    ("custom", f"{regime}_bw_bytes_per_s", "link_bandwidth") for regime in ("one_shot", "two_shot", "symm_mem")] + [
    ("alltoall", "collective_launch_s", "fixed_cost"), ("alltoall", "latency_s", "fixed_cost"),
    ("alltoall", "bw_bytes_per_s", "link_bandwidth")]
# Dimensionless figures: efficiencies in (0, 1]; the wave exponent in [0, 1]; m½ ≥ 0 tokens.
FRACTIONS = [("gpu", f"efficiency.{f}") for f in ("compute", "memory", "attention", "elementwise")] + [
    (base, f) for base in ("nvswitch", "pcie", "shared-memory", "network")
    for f in ("bw_efficiency", "p2p_bw_efficiency")
] + [("nvswitch", "nvls_bw_efficiency")]
ZERO_OK = [("gpu", "efficiency.wave_exponent"), ("gpu", "efficiency.m_half")]
# Median held-out errors by op kind (the run's error bars), and per-group-size buffer limits.
ERRORS = [("gpu", "efficiency.held_out_errors")] + [(base, "held_out_errors")
                                                   for base in ("nvswitch", "pcie", "shared-memory", "network")]
BUFFERS = [("custom", "max_bytes"), ("custom", "symm_mem_max_bytes")]
BANDWIDTHS_BY_GROUP = [("link-fit", "bw_by_group_bytes_per_s"), ("alltoall", "bw_by_group_bytes_per_s")]
COUNTS = [("gpu", "num_sms"), ("gpu", "efficiency.tile_m"), ("gpu", "efficiency.tile_n"),
          ("pcie", "gpus_per_switch"), ("pcie", "gpus_per_socket"), ("network", "nics_per_node"),
          ("cluster", "num_nodes"), ("cluster", "gpus_per_node")]

# A bare number that lost its unit, and the readable forms the message must offer.
SLIPS = {
    "memory": (80, ["'80 GB' or '80 GiB'"]),
    "memory_bandwidth": (3350, ["did you mean '3350 GB/s'?"]),
    "link_bandwidth": (200, ["did you mean '200 Gb/s' or '200 GB/s'?"]),
    "flops": (989, ["did you mean '989 TFLOPS'?"]),
    "latency": (10, ["10 s is above the longest plausible latency, 100 ms", "did you mean '10 us'"]),
    "fixed_cost": (10, ["10 s is above the longest plausible fixed cost, 100 ms", "did you mean '10 us'"]),
}


def _with(base: str, path: str, value: Any) -> dict[str, Any]:
    data = _BASES[base][1]()
    node = data
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return data


def _refusal(base: str, path: str, value: Any) -> str:
    model = _BASES[base][0]
    with pytest.raises(ValidationError) as info:
        model.model_validate(_with(base, path, value))
    first = info.value.errors()[0]
    loc = [part for part in first["loc"] if not str(part).startswith("function-")]  # a `| None` branch
    assert loc[-1] == path.split(".")[-1], first  # the field itself is blamed
    return str(first["msg"])


def _numeric(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    return any(_numeric(arg) for arg in typing.get_args(annotation) if arg is not type(None))


@pytest.mark.parametrize("model", [GpuSpec, Efficiency, NvSwitchFabric, PcieFabric, SharedMemoryFabric,
                                   NetworkFabric, ClusterSpec, LinkFit, HardwareProfile, CustomAllReduce, AllToAll],
                         ids=lambda m: m.__name__)
def test_every_numeric_field_is_covered_here(model):
    """A numeric field added to a hardware spec must be given a kind (and these tests) before it ships.

    (The profile's `errors` are reports of the fit, not figures: nothing simulated reads them.)
    """
    covered = set()
    kinds = FRACTIONS + ZERO_OK + COUNTS + ERRORS + BUFFERS + BANDWIDTHS_BY_GROUP
    for base, path in [(b, p) for b, p, _ in FIGURES] + kinds:
        *parents, leaf = path.split(".")
        covered.add((Efficiency if parents else _BASES[base][0], leaf))
    for name, field in model.model_fields.items():
        if _numeric(field.annotation):
            assert (model, name) in covered, f"{model.__name__}.{name} has no kind in tests/test_figures.py"


@pytest.mark.parametrize(("base", "path", "kind"), FIGURES, ids=[f"{b}.{p}" for b, p, _ in FIGURES])
def test_a_figure_that_cannot_be_real_is_refused(base, path, kind):
    spec = PLAUSIBLE[kind]
    bad: list[Any] = [math.nan, math.inf, -math.inf, -1, "-5 us" if spec.quantity == "seconds" else -1e9,
                      True, "fast", 10**400]
    if spec.low > 0:
        bad.append(0)
    for value in bad:
        message = _refusal(base, path, value)
        assert "valid:" in message, (value, message)  # and says what would be valid
    value, fragments = SLIPS[kind]
    message = _refusal(base, path, value)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(("kind", "text", "fragment"), [
    ("memory", "64 TB", "above the largest plausible memory, 16 TB"),
    ("memory", "512 kB", "below the smallest plausible memory, 1 MB"),
    ("memory_bandwidth", "200 TB/s", "above the fastest plausible memory bandwidth, 100 TB/s"),
    ("link_bandwidth", "5 PB/s", "5000 TB/s is above the fastest plausible link bandwidth, 4 TB/s (NVLink 6"),
    ("link_bandwidth", "10 Mb/s", "1.25 MB/s is below the slowest plausible link bandwidth, 100 MB/s"),
    ("flops", "1 GFLOPS", "below the slowest plausible compute peak, 10 GFLOPS"),
    ("latency", "1 ns", "1 ns is below the shortest plausible latency, 50 ns"),
    ("latency", "2 s", "2 s is above the longest plausible latency, 100 ms"),
])
def test_a_readable_figure_outside_the_range_is_refused_without_guessing_a_unit(kind, text, fragment):
    with pytest.raises(ValueError, match="plausible") as info:
        check_figure(text, kind)
    assert fragment in str(info.value)
    assert "did you mean" not in str(info.value)  # its unit was written: nothing was lost


@pytest.mark.parametrize(("base", "path"), FRACTIONS, ids=[f"{b}.{p}" for b, p in FRACTIONS])
def test_an_efficiency_outside_0_to_1_is_refused(base, path):
    for value in (math.nan, math.inf, 0, -0.5, 1.5, True, "75%"):
        assert "more than 0 and at most 1" in _refusal(base, path, value)
    assert _BASES[base][0].model_validate(_with(base, path, 0.0011))  # the CPU fit's attention η


@pytest.mark.parametrize(("base", "path"), ERRORS, ids=[f"{b}.{p}" for b, p in ERRORS])
def test_a_held_out_error_is_a_number_from_0_to_100(base, path):
    assert _BASES[base][0].model_validate(_with(base, path, {"gemm bf16": 0.0, "allreduce": 1.5}))
    for value in (math.nan, math.inf, -0.1, 101, True, "5%", None):
        assert "not a median relative error (valid: 0 to 100" in _refusal(base, path, {"gemm": value})


@pytest.mark.parametrize(("base", "path"), BANDWIDTHS_BY_GROUP, ids=[p for _, p in BANDWIDTHS_BY_GROUP])
def test_a_ring_bandwidth_per_group_size_is_a_plausible_link_rate(base, path):
    model = _BASES[base][0]
    assert getattr(model.model_validate(_with(base, path, {2: "20 GB/s", 8: 1.2e9})), path) == {2: 20e9, 8: 1.2e9}
    for value in ({2: -1}, {2: "8 us"}, {2: 10}, {"two": "20 GB/s"}, {2: math.nan}):
        with pytest.raises(ValidationError):
            model.model_validate(_with(base, path, value))


@pytest.mark.parametrize(("base", "path"), BUFFERS, ids=[p for _, p in BUFFERS])
def test_a_buffer_limit_is_a_plausible_size_per_group_size(base, path):
    model = _BASES[base][0]
    assert getattr(model.model_validate(_with(base, path, {2: "8 MiB", 8: 262144})), path) == {2: 8 * 2**20,
                                                                                                8: 262144.0}
    for value in ({2: -1}, {2: "8 us"}, {2: 10}, {"two": "8 MiB"}, {2: math.nan}):
        with pytest.raises(ValidationError):
            model.model_validate(_with(base, path, value))


@pytest.mark.parametrize(("base", "path"), ZERO_OK, ids=[p for _, p in ZERO_OK])
def test_zero_is_a_real_value_for_the_wave_exponent_and_m_half(base, path):
    assert _BASES[base][0].model_validate(_with(base, path, 0.0))
    for value in (math.nan, math.inf, -0.1):
        _refusal(base, path, value)


@pytest.mark.parametrize(("base", "path"), COUNTS, ids=[p for _, p in COUNTS])
def test_a_count_is_a_positive_integer_of_plausible_size(base, path):
    for value in (0, -1, 2.5, True, "8", 10**9):
        _refusal(base, path, value)


def test_nvls_needs_its_latency():
    data = _with("nvswitch", "nvls", True)
    del data["nvls_latency_s"]
    with pytest.raises(ValidationError, match="nvls_latency_s"):
        NvSwitchFabric.model_validate(data)


# ------------------------------------------------------------------------------------ through the CLI

CLI_CASES = [
    ("gpu.memory_bytes", 80, ["cluster.gpu.memory_bytes = 80", "did you mean '80 GB' or '80 GiB'?"]),
    ("gpu.memory_bw_bytes_per_s", 3350, ["cluster.gpu.memory_bw_bytes_per_s = 3350", "'3350 GB/s'"]),
    ("gpu.bf16_flops_per_s", 989, ["cluster.gpu.bf16_flops_per_s = 989", "did you mean '989 TFLOPS'?"]),
    ("inter_node.nic_bw_bytes_per_s", 200,
     ["cluster.inter_node.nic_bw_bytes_per_s = 200", "200 B/s is below the slowest plausible link bandwidth",
      "did you mean '200 Gb/s' or '200 GB/s'?"]),
    ("inter_node.latency_s", 10, ["cluster.inter_node.latency_s = 10", "did you mean '10 us'"]),
    ("intra_node.link_bw_bytes_per_s", math.inf, ["cluster.intra_node", "link_bw_bytes_per_s = inf",
                                                  "not a finite number"]),
    ("intra_node.latency_s", "-5 us", ["cluster.intra_node", "latency_s = '-5 us'", "must be positive"]),
    ("gpu.memory_bytes", 0, ["cluster.gpu.memory_bytes = 0", "must be positive"]),
    ("gpu.efficiency.launch_s", 10, ["cluster.gpu.efficiency.launch_s = 10", "did you mean '10 us'"]),
    ("gpu.efficiency.compute", math.nan, ["cluster.gpu.efficiency.compute = nan", "more than 0 and at most 1"]),
    ("inter_node.bw_efficiency", 0, ["cluster.inter_node.bw_efficiency = 0", "more than 0 and at most 1"]),
    ("gpus_per_node", 10**9, ["cluster.gpus_per_node = 1000000000", "1024"]),
]


@pytest.mark.parametrize(("path", "value", "expected"), CLI_CASES, ids=[f"{c[0]}={c[1]}" for c in CLI_CASES])
def test_a_cluster_figure_that_cannot_be_real_is_one_line_and_exit_2(tmp_path, capsys, path, value, expected):
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(scenario_dict(cluster=_with("cluster", path, value))))
    out = tmp_path / "out"
    err = error_line(capsys, ["run", str(scenario), "--out", str(out), "-q"])
    for fragment in expected:
        assert fragment in err, err
    assert not out.exists()


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("intra_node.bw_bytes_per_s", 2, ["intra_node.bw_bytes_per_s = 2",
                                      "did you mean '2 Gb/s' or '2 GB/s'?"]),
    ("intra_node.latency_s", 30, ["intra_node.latency_s = 30", "did you mean '30 us'"]),
    ("intra_node.p2p_latency_s", -1e-6, ["intra_node.p2p_latency_s", "must be 0 or more"]),
    ("efficiency.memory", math.inf, ["efficiency.memory = inf", "more than 0 and at most 1"]),
])
def test_a_profile_figure_that_cannot_be_real_is_one_line_and_exit_2(tmp_path, capsys, path, value, expected):
    profile = _write_profile(tmp_path / "cpu.yaml", _with("profile", path, value))
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(scenario_dict(model=tiny_model_path(tmp_path), cluster="cpu-local",
                                                     hardware_profile=str(profile))))
    out = tmp_path / "out"
    err = error_line(capsys, ["run", str(scenario), "--out", str(out), "-q"])
    for fragment in ["hardware_profile", *expected]:
        assert fragment in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------ the docs table

def test_the_docs_table_states_the_ranges_the_code_enforces():
    text = (REPO / "docs" / "inputs.md").read_text()
    for kind, spec in PLAUSIBLE.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{kind}` |")), None)
        assert row is not None, f"docs/inputs.md has no row for {kind}"
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        low = readable(spec.low, spec.quantity) if spec.low else "0"
        assert (cells[2], cells[3]) == (low, readable(spec.high, spec.quantity)), kind


@pytest.mark.parametrize("name", preset_names("gpus"))
def test_every_gpu_preset_sits_well_inside_its_ranges(name):
    """The presets are real devices: each is inside its ranges with room (the bounds are not fitted to them)."""
    gpu = load_gpu(name)
    for spec, value in ((PLAUSIBLE["memory"], gpu.memory_bytes),
                        (PLAUSIBLE["memory_bandwidth"], gpu.memory_bw_bytes_per_s),
                        (PLAUSIBLE["flops"], gpu.bf16_flops_per_s)):
        assert spec.low * 2 <= value <= spec.high / 2, (spec.what, value)
