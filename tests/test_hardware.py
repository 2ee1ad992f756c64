"""Roofline and alpha-beta costs against closed forms computed here from the shipped YAML figures."""

import json
import math

import pytest

from helpers import catalog_yaml
from splitsim.cli import main
from splitsim.hardware import collectives
from splitsim.hardware.catalog import load_cluster, load_gpu
from splitsim.hardware.units import parse_quantity as q


def _eff(gpu_name):
    raw = catalog_yaml("gpus", gpu_name)
    return raw, raw["efficiency"]


def test_large_gemm_is_compute_bound_at_the_fitted_efficiency():
    raw, eff = _eff("h100-sxm")
    m = n = k = 8192  # full waves of 256×128 tiles: 32·64 = 2048 tiles on 132 SMs → 16 waves (q < 1)
    tiles = math.ceil(m / eff["tile_m"]) * math.ceil(n / eff["tile_n"])
    waves = math.ceil(tiles / raw["num_sms"])
    quant = m * n / (waves * raw["num_sms"] * eff["tile_m"] * eff["tile_n"])
    eta = eff["compute"] * quant ** eff["wave_exponent"] * m / (m + eff["m_half"])
    expected = 2 * m * n * k / (q(raw["bf16_flops_per_s"], "flops_per_s") * eta) + q(eff["launch_s"], "seconds")
    got = load_gpu("h100-sxm").gemm_time_s(m, n, k, weight_bytes=2)
    assert got == pytest.approx(expected, rel=1e-12)
    # Against a measurement: aiconfigurator-core 0.12.0, h100_sxm/gemm/vllm/0.24.0, torch.nn.functional.linear
    # bf16 8192³: 1.5417 ms (713 TFLOPS, 72 % of 989); within the fit's held-out p90 (15 %).
    assert got == pytest.approx(1.5417e-3, rel=0.15)


def test_decode_gemm_is_memory_bound_and_fp8_halves_weight_bytes():
    raw, eff = _eff("h100-sxm")
    gpu = load_gpu("h100-sxm")
    m, n, k = 8, 8192, 8192
    bw = q(raw["memory_bw_bytes_per_s"], "bytes_per_s") * eff["memory"]
    launch = q(eff["launch_s"], "seconds")
    bf16 = gpu.gemm_time_s(m, n, k, weight_bytes=2)
    fp8 = gpu.gemm_time_s(m, n, k, weight_bytes=1, dtype="fp8")
    assert bf16 == pytest.approx((m * k + m * n) * 2 / bw + k * n * 2 / bw + launch, rel=1e-12)
    # fp8 reads half the weight bytes; the preset prices its compute with the bf16 figures at the fp8 peak
    tiles = math.ceil(m / eff["tile_m"]) * math.ceil(n / eff["tile_n"])
    quant = m * n / (math.ceil(tiles / raw["num_sms"]) * raw["num_sms"] * eff["tile_m"] * eff["tile_n"])
    eta = eff["compute"] * quant ** eff["wave_exponent"] * m / (m + eff["m_half"])
    compute = 2 * m * n * k / (q(raw["fp8_flops_per_s"], "flops_per_s") * eta)
    assert fp8 == pytest.approx(max(compute, (m * k + m * n) * 2 / bw + k * n * 1 / bw) + launch, rel=1e-12)
    # Measured (aiconfigurator-core 0.12.0, h100_sxm/gemm/vllm/0.24.0): 46.2 µs bf16, 29.2 µs fp8 (Cutlass).
    assert bf16 == pytest.approx(46.2e-6, rel=0.15) and fp8 == pytest.approx(29.2e-6, rel=0.15)


def test_fp8_compute_needs_fp8_tensor_cores():
    with pytest.raises(ValueError, match="FP8"):
        load_gpu("a100-sxm").gemm_time_s(4096, 4096, 4096, weight_bytes=1, dtype="fp8")
    with pytest.raises(ValueError, match="FP4"):
        load_gpu("h100-sxm").gemm_time_s(4096, 4096, 4096, weight_bytes=0.5, dtype="fp4")


def test_a_large_fp4_gemm_on_b200_runs_at_its_fp4_peak():
    """Compute-bound: 2mnk / (9 PFLOPS × the fp4 GEMMs' own fitted η_peak), read from the preset YAML."""
    gpu, figures = load_gpu("b200"), catalog_yaml("gpus", "b200")
    m = n = k = 16384
    eta = figures["efficiency"]["gemm_by_dtype"]["fp4"]["compute"]
    seconds = gpu.gemm_time_s(m, n, k, weight_bytes=0.5, dtype="fp4")
    # 16384 rows fill every wave to within a few % whatever the tile, and m½ is far below m
    assert seconds == pytest.approx(2 * m * n * k / (q(figures["fp4_flops_per_s"], "flops_per_s") * eta), rel=0.06)


def test_ring_allreduce_inside_an_a100_node():
    fabric = catalog_yaml("fabrics", "nvlink3-nvswitch")
    cluster = load_cluster("a100-nvlink-node")
    p, size = 8, 64e6
    bw = q(fabric["link_bw_bytes_per_s"], "bytes_per_s") * fabric["bw_efficiency"]
    expected = (q(fabric["collective_launch_s"], "seconds") + 2 * (p - 1) * q(fabric["latency_s"], "seconds")
                + 2 * (p - 1) / p * size / bw)
    assert collectives.allreduce_s(cluster, list(range(p)), size) == pytest.approx(expected, rel=1e-12)


def test_nvls_wins_for_large_messages_on_h100_and_ring_for_small():
    fabric = catalog_yaml("fabrics", "nvlink4-nvswitch")
    cluster = load_cluster("h100-nvlink-node")
    launch = q(fabric["collective_launch_s"], "seconds")
    link = q(fabric["link_bw_bytes_per_s"], "bytes_per_s")
    size = 256e6
    nvls = launch + 2 * q(fabric["nvls_latency_s"], "seconds") + size / (link * fabric["nvls_bw_efficiency"])
    assert collectives.allreduce_s(cluster, list(range(8)), size) == pytest.approx(nvls, rel=1e-12)
    small = 16e3
    ring = launch + 14 * q(fabric["latency_s"], "seconds") + 14 / 8 * small / (link * fabric["bw_efficiency"])
    assert collectives.allreduce_s(cluster, list(range(8)), small) == pytest.approx(ring, rel=1e-12)


def test_hierarchical_allreduce_over_two_ib_nodes():
    nv, ib = catalog_yaml("fabrics", "nvlink4-nvswitch"), catalog_yaml("fabrics", "ib-ndr-rail")
    cluster = load_cluster("h100-ib-2node")
    size, g, n = 32e6, 8, 2
    bw = q(nv["link_bw_bytes_per_s"], "bytes_per_s") * nv["bw_efficiency"]
    alpha = q(nv["latency_s"], "seconds")
    reduce_scatter = (g - 1) * alpha + (g - 1) / g * size / bw
    nic = q(ib["nic_bw_bytes_per_s"], "bytes_per_s") * ib["bw_efficiency"]  # one NIC per GPU: own rail
    inter = 2 * (n - 1) * q(ib["latency_s"], "seconds") + 2 * (n - 1) / n * (size / g) / nic
    expected = q(nv["collective_launch_s"], "seconds") + 2 * reduce_scatter + inter
    assert collectives.allreduce_s(cluster, list(range(16)), size) == pytest.approx(expected, rel=1e-12)


def test_one_nic_per_node_is_shared_by_the_rails():
    ib_time = collectives.allreduce_s(load_cluster("h100-ib-2node"), list(range(16)), 32e6)
    eth_time = collectives.allreduce_s(load_cluster("h100-eth-2node"), list(range(16)), 32e6)
    eth = catalog_yaml("fabrics", "roce-200g-node")
    # The inter-node phase alone: S/g per rail, 8 rails through one 200 Gb/s NIC → S/(NIC rate).
    nic = q(eth["nic_bw_bytes_per_s"], "bytes_per_s") * eth["bw_efficiency"]
    assert eth_time > 32e6 / nic > ib_time


def test_tp_sharded_handoff_over_one_ethernet_nic():
    eth = catalog_yaml("fabrics", "roce-200g-node")
    cluster = load_cluster("h100-eth-2node")
    size = 8e6
    nic = q(eth["nic_bw_bytes_per_s"], "bytes_per_s") * eth["p2p_bw_efficiency"]
    # Eight ranks each send S/8, all through the node's one NIC: α + S / B.
    expected = q(eth["p2p_latency_s"], "seconds") + size / nic
    got = collectives.handoff_send_s(cluster, list(range(8)), list(range(8, 16)), size)
    assert got == pytest.approx(expected, rel=1e-12)


def test_l40s_without_p2p_is_far_slower_than_nvlink():
    pcie = collectives.allreduce_s(load_cluster("l40s-pcie-node"), list(range(8)), 16e6)
    nvlink = collectives.allreduce_s(load_cluster("h100-nvlink-node"), list(range(8)), 16e6)
    assert pcie > 10 * nvlink


def test_shared_links_name_nics_the_host_bridge_and_staged_sockets():
    assert collectives.shared_links(load_cluster("h100-nvlink-node"), [0, 1, 2, 3]) == ()
    assert collectives.shared_links(load_cluster("h100-eth-2node"), [0, 8]) == ("node0/nic0", "node1/nic0")
    assert collectives.shared_links(load_cluster("h100-ib-2node"), [3, 11]) == ("node0/nic3", "node1/nic3")
    staged, p2p = load_cluster("l40s-pcie-node"), load_cluster("l40s-pcie-p2p-node")
    assert collectives.shared_links(staged, [0, 1]) == ("node0/socket0",)  # no P2P: through host memory
    assert collectives.shared_links(p2p, [0, 1]) == ()  # under one switch, peer to peer
    assert collectives.shared_links(p2p, [1, 2]) == ("node0/socket0",)  # across switches: staged
    assert collectives.shared_links(p2p, [3, 4]) == ("node0/host-bridge", "node0/socket0", "node0/socket1")


def test_a_pcie_ring_runs_at_the_widest_level_it_spans():
    """Closed forms from the preset's own figures: pairs under a switch (P2P) at the link's achieved rate,
    rings across switches at the staged rate, across sockets at most the host bridge's."""
    fabric = catalog_yaml("fabrics", "pcie-gen4-2socket")
    t0, alpha = q(fabric["collective_launch_s"], "seconds"), q(fabric["latency_s"], "seconds")
    alpha_x = q(fabric["cross_switch_latency_s"], "seconds")
    pair = q(fabric["link_bw_bytes_per_s"], "bytes_per_s") * fabric["bw_efficiency"]
    staged = q(fabric["cross_switch_bw_bytes_per_s"], "bytes_per_s")
    bridge = min(staged, q(fabric["host_bridge_bw_bytes_per_s"], "bytes_per_s"))
    size = 16e6

    def ring(p: int, a: float, bw: float) -> float:
        return t0 + 2 * (p - 1) * a + 2 * (p - 1) / p * size / bw

    p2p, off = load_cluster("l40s-pcie-p2p-node"), load_cluster("l40s-pcie-node")
    cases = [(p2p, [0, 1], ring(2, alpha, pair)), (p2p, [2, 3], ring(2, alpha, pair)),
             (p2p, [1, 2], ring(2, alpha_x, staged)), (p2p, [0, 1, 2, 3], ring(4, alpha_x, staged)),
             (p2p, list(range(8)), ring(8, alpha_x, bridge)), (off, [0, 1], ring(2, alpha_x, staged)),
             (off, list(range(8)), ring(8, alpha_x, bridge))]
    for cluster, gpus, expected in cases:
        assert collectives.allreduce_s(cluster, gpus, size) == pytest.approx(expected, rel=1e-12), gpus


def test_switches_must_fill_a_socket():
    with pytest.raises(ValueError, match="gpus_per_switch: 3 does not divide gpus_per_socket 4"):
        load_cluster({"base": "l40s-pcie-node", "intra_node": {"gpus_per_switch": 3}})


def test_cost_cli_prints_seconds_as_json(capsys):
    assert main(["cost", "sendrecv", "--cluster", "h100-ib-2node", "--gpus", "16", "--bytes", "1e6",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    seconds = answer["seconds"]
    assert answer["impl"] == "nccl"  # which implementation priced it
    ib = catalog_yaml("fabrics", "ib-ndr-rail")
    nic = q(ib["nic_bw_bytes_per_s"], "bytes_per_s") * ib["p2p_bw_efficiency"]
    assert seconds == pytest.approx(q(ib["p2p_latency_s"], "seconds") + 1e6 / nic, rel=1e-12)
    assert main(["cost", "gemm", "--gpu", "h100-sxm", "--m", "1", "--n", "2", "--k", "3", "--json"]) == 0
    capsys.readouterr()
    assert main(["cost", "alltoall", "--cluster", "h100-nvlink-node", "--gpus", "8", "--bytes", "1e6", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer == {"seconds": collectives.alltoall_s(load_cluster("h100-nvlink-node"), list(range(8)), 1e6),
                      "impl": "nccl", "regime": "nccl"}


def test_cost_cli_refuses_too_many_gpus(capsys):
    assert main(["cost", "allreduce", "--cluster", "h100-nvlink-node", "--gpus", "9", "--bytes", "1"]) == 2
    assert "GPUs" in capsys.readouterr().err


def test_collectives_refuse_groups_uneven_across_nodes():
    cluster = load_cluster("h100-ib-2node")
    for cost in (collectives.allreduce_s, collectives.allgather_s):
        with pytest.raises(ValueError, match="as many GPUs on each node"):
            cost(cluster, list(range(12)), 1e6)


def test_a_dtype_with_its_own_gemm_figures_is_priced_with_them():
    """Schema 2: fp8 GEMMs use their own η_peak, tile, γ and m½; bf16 keeps the defaults. Written out here."""
    import math

    from splitsim.hardware.catalog import load_gpu

    base = load_gpu("h100-sxm")
    fp8 = {"compute": 0.55, "tile_m": 64, "tile_n": 128, "wave_exponent": 0.5, "m_half": 30.0}
    from splitsim.hardware.gpu import GemmShape

    gpu = base.model_copy(update={"efficiency": base.efficiency.model_copy(
        update={"gemm_by_dtype": {"fp8": GemmShape(**fp8)}})})
    e = gpu.efficiency
    m, n, k = 200, 3000, 8192
    tiles = math.ceil(m / 64) * math.ceil(n / 128)
    q = m * n / (math.ceil(tiles / gpu.num_sms) * gpu.num_sms * 64 * 128)
    compute = 2.0 * m * n * k / (gpu.fp8_flops_per_s * 0.55 * q ** 0.5 * m / (m + 30.0))
    memory = ((m * k + m * n) * 2.0 + k * n * 1.0) / (gpu.memory_bw_bytes_per_s * e.memory)
    assert gpu.gemm_time_s(m, n, k, weight_bytes=1.0, dtype="fp8") == pytest.approx(max(compute, memory) + e.launch_s,
                                                                                     rel=1e-12)
    assert gpu.gemm_time_s(m, n, k, weight_bytes=2.0) == base.gemm_time_s(m, n, k, weight_bytes=2.0)


def test_prefill_and_decode_attention_take_their_own_rooflines():
    from splitsim.hardware.catalog import load_gpu

    preset = load_gpu("h100-sxm")
    base = preset.model_copy(update={"efficiency": preset.efficiency.model_copy(
        update={"attention_prefill": None, "attention_decode": None})})
    e = base.efficiency
    assert base.attention_time_s(3e12, 1e9, "prefill") == base.kernel_time_s(3e12, 1e9, compute_efficiency=e.attention)
    from splitsim.hardware.gpu import AttentionKernel

    own = e.model_copy(update={"attention_decode": AttentionKernel(compute=0.3, memory=0.6, launch_s=12e-6)})
    gpu = base.model_copy(update={"efficiency": own})
    flops, nbytes = 4e9, 2e9
    expected = max(flops / (base.bf16_flops_per_s * 0.3), nbytes / (base.memory_bw_bytes_per_s * 0.6)) + 12e-6
    assert gpu.attention_time_s(flops, nbytes, "decode") == pytest.approx(expected, rel=1e-12)
    assert gpu.attention_time_s(flops, nbytes, "prefill") == base.attention_time_s(flops, nbytes, "prefill")


def test_an_alltoall_sends_each_gpus_bytes_at_its_fitted_rate():
    """Closed forms from the presets' own figures: t₀ + (p−1)·α + B/B_a2a inside a node (a PCIe group takes the
    rate fitted for its size); across two nodes the 8/15 of B bound for the other node leave through each GPU's
    own NIC while 7/15 cross NVLink, and the slower decides."""
    size = 16e6
    a2a = catalog_yaml("fabrics", "nvlink4-nvswitch")["alltoall"]
    t0, alpha = q(a2a["collective_launch_s"], "seconds"), q(a2a["latency_s"], "seconds")
    bw = q(a2a["bw_bytes_per_s"], "bytes_per_s")
    assert collectives.alltoall_s(load_cluster("h100-nvlink-node"), list(range(8)), size) == pytest.approx(
        t0 + 7 * alpha + size / bw, rel=1e-12)
    pcie = catalog_yaml("fabrics", "pcie-gen4-2socket")["alltoall"]
    four = q(pcie["bw_by_group_bytes_per_s"][4], "bytes_per_s")
    expected = q(pcie["collective_launch_s"], "seconds") + 3 * q(pcie["latency_s"], "seconds") + size / four
    assert collectives.alltoall_s(load_cluster("l40s-pcie-node"), [4, 5, 6, 7], size) == pytest.approx(expected)
    ib = catalog_yaml("fabrics", "ib-ndr-rail")
    nic = q(ib["nic_bw_bytes_per_s"], "bytes_per_s") * ib["p2p_bw_efficiency"]
    intra = 7 * alpha + size * 7 / 15 / bw
    inter = q(ib["p2p_latency_s"], "seconds") + size * 8 / 15 / nic
    assert collectives.alltoall_s(load_cluster("h100-ib-2node"), list(range(16)), size) == pytest.approx(
        t0 + max(intra, inter), rel=1e-12)
    assert inter > intra  # the NICs are the bottleneck of an all-to-all across nodes


def test_a_pcie_alltoall_takes_its_levels_rate_and_a_pair_without_p2p_stages():
    pcie = catalog_yaml("fabrics", "pcie-gen4-2socket")["alltoall"]
    rates = {p: q(rate, "bytes_per_s") for p, rate in pcie["bw_by_group_bytes_per_s"].items()}
    fixed = q(pcie["collective_launch_s"], "seconds") + q(pcie["latency_s"], "seconds")
    size = 1e8
    assert collectives.alltoall_s(load_cluster("l40s-pcie-p2p-node"), [0, 1], size) == pytest.approx(
        fixed + size / rates[2])  # a pair under one switch, peer to peer
    for cluster, pair in (("l40s-pcie-node", [0, 1]), ("l40s-pcie-p2p-node", [1, 2])):  # no P2P; across switches
        assert collectives.alltoall_s(load_cluster(cluster), pair, size) == pytest.approx(fixed + size / rates[4])


def test_cost_refuses_a_group_uneven_over_nodes_in_one_line(capsys):
    assert main(["cost", "alltoall", "--cluster", "h100-ib-2node", "--gpus", "12", "--bytes", "1e6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitsim: error: --gpus = 12:") and err.count("\n") == 1


def test_an_alltoall_without_measured_figures_takes_the_rings():
    """A fabric with no all-to-all table (gloo over loopback): the ring all-gather's form and figures."""
    cluster = load_cluster("cpu-local")
    alpha, bw = collectives.intra_node_link(cluster, [0, 1, 2, 3])
    expected = cluster.intra_node.collective_launch_s + 3 * alpha + 3e6 / bw
    assert collectives.alltoall_s(cluster, [0, 1, 2, 3], 3e6) == pytest.approx(expected, rel=1e-12)
