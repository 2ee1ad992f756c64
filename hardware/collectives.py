"""Alpha-beta costs of the collectives parallel inference issues (PHYSICS.md, "Collectives").

`p` GPUs, `S` bytes, per-step latency `α`, per-GPU one-direction bandwidth `B`:

- ring all-reduce         t₀ + 2(p−1)·α + 2(p−1)/p · S/B
- ring all-gather         t₀ + (p−1)·α + (p−1)/p · S/B   (S = the gathered size)
- NVLS all-reduce         t₀ + 2·α_nvls + S/B_nvls       (the switch reduces; NCCL picks the faster)
- send/recv               α_p2p + S/B
- all-to-all              t₀ + (p−1)·α + B/B_a2a          (B: what each GPU sends to the others; inside a node,
                                                          `fabric.AllToAll`'s fitted figures, else the ring's)

`t₀` is the fabric's fixed cost of one collective call (`collective_launch_s`).
- hierarchical all-reduce over n nodes of g GPUs: reduce-scatter inside each node, ring all-reduce of
  S/g across the n nodes on each rail, all-gather inside the node. Each phase runs at the speed of the
  links it crosses; rails share a NIC when a node has fewer NICs than the group has GPUs on it.

The engine's own all-reduce (`custom_allreduce_s`, vLLM's rules, `fabric.CustomAllReduce`'s forms):
- one-shot                α₁ + (p−1)·S/B₁          (each GPU reads every peer's input)
- two-shot                α₂ + 2(p−1)/p·S/B₂       (reduce-scatter, then all-gather)
- symmetric memory        α₃ + S/B₃                (multimem: the switch reduces)

`shared_links` names the links a transfer crosses that other, independent transfers may cross too
(NICs, the PCIe host bridge, a socket's host memory): the engine shares them between overlapping transfers
(sim/flows.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any

from splitsim.hardware.cluster import ClusterSpec
from splitsim.hardware.fabric import CustomAllReduce, NvSwitchFabric, PcieFabric, SharedMemoryFabric

KIB = 2.0**10


def ring_allreduce_s(p: int, nbytes: float, alpha_s: float, bw_bytes_per_s: float) -> float:
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * alpha_s + 2 * (p - 1) / p * nbytes / bw_bytes_per_s


def ring_allgather_s(p: int, nbytes: float, alpha_s: float, bw_bytes_per_s: float) -> float:
    """Also the cost of a ring reduce-scatter of `nbytes` input."""
    if p <= 1:
        return 0.0
    return (p - 1) * alpha_s + (p - 1) / p * nbytes / bw_bytes_per_s


def _nodes(cluster: ClusterSpec, gpus: Sequence[int]) -> list[list[int]]:
    """The group's GPUs, split by node (placement order keeps a node's GPUs together)."""
    return [list(group) for _, group in groupby(sorted(gpus), key=cluster.node_of)]


def _pcie_level(fabric: PcieFabric, cluster: ClusterSpec, gpus: Sequence[int]) -> str:
    """The level of the PCIe tree a transfer among `gpus` runs at (`PcieFabric.ring_level`)."""
    return fabric.ring_level(cluster.local_index(g) for g in gpus)


def intra_node_link(cluster: ClusterSpec, gpus: Sequence[int], flows_on_bridge: int = 1,
                    p2p: bool = False) -> tuple[float, float]:
    """(α, B) of one ring step (or, with `p2p`, one send/recv) among `gpus`, all on one node.

    On PCIe the widest level the GPUs span decides (`PcieFabric`): peer-to-peer under one switch, staged
    through host memory beyond it, and at most the host bridge's rate, shared by `flows_on_bridge` flows,
    across sockets.
    """
    fabric = cluster.intra_node
    match fabric:
        case NvSwitchFabric() | SharedMemoryFabric():
            if p2p:
                return fabric.p2p_latency_s, fabric.p2p_bw_bytes_per_s
            return fabric.latency_s, fabric.bw_bytes_per_s
        case PcieFabric():
            level = _pcie_level(fabric, cluster, gpus)
            if level == "switch":
                if p2p:
                    return fabric.p2p_latency_s, fabric.link_bw_bytes_per_s * fabric.p2p_bw_efficiency
                return fabric.latency_s, fabric.link_bw_bytes_per_s * fabric.bw_efficiency
            bw = fabric.cross_switch_bw_bytes_per_s
            if level == "sockets":
                bw = min(bw, fabric.host_bridge_bw_bytes_per_s / flows_on_bridge)
            return fabric.cross_switch_latency_s, bw
    raise TypeError(f"unknown fabric {fabric!r}")


def _rail_bw(cluster: ClusterSpec, flows_per_node: int, p2p: bool = False) -> float:
    """Bandwidth each of `flows_per_node` concurrent inter-node flows gets from the node's NICs."""
    net = cluster.inter_node
    assert net is not None  # a multi-node cluster always has one (ClusterSpec validates it)
    share = min(1.0, net.nics_per_node / flows_per_node)
    return (net.p2p_bw_bytes_per_s if p2p else net.bw_bytes_per_s) * share


def _intra_allreduce_s(cluster: ClusterSpec, gpus: Sequence[int], nbytes: float) -> float:
    alpha, bw = intra_node_link(cluster, gpus)
    ring = ring_allreduce_s(len(gpus), nbytes, alpha, bw)
    fabric = cluster.intra_node
    if isinstance(fabric, NvSwitchFabric) and fabric.nvls and len(gpus) > 2:
        nvls = 2 * fabric.nvls_latency_s + nbytes / (fabric.link_bw_bytes_per_s * fabric.nvls_bw_efficiency)
        return min(ring, nvls)
    return ring


def _launch_s(cluster: ClusterSpec) -> float:
    return cluster.intra_node.collective_launch_s


def allreduce_s(cluster: ClusterSpec, gpus: Sequence[int], nbytes: float) -> float:
    """Seconds for an all-reduce of `nbytes` over `gpus` (hierarchical when they span nodes)."""
    if len(gpus) <= 1:
        return 0.0
    nodes = _nodes(cluster, gpus)
    if len(nodes) == 1:
        return _launch_s(cluster) + _intra_allreduce_s(cluster, gpus, nbytes)
    per_node = len(nodes[0])
    if any(len(node) != per_node for node in nodes):
        raise ValueError(f"an all-reduce group must hold as many GPUs on each node, got {gpus}")
    net = cluster.inter_node
    assert net is not None
    inter = ring_allreduce_s(len(nodes), nbytes / per_node, net.latency_s, _rail_bw(cluster, per_node))
    if per_node == 1:
        return _launch_s(cluster) + inter
    alpha, bw = intra_node_link(cluster, nodes[0])
    reduce_scatter = ring_allgather_s(per_node, nbytes, alpha, bw)
    # the closing all-gather costs what the reduce-scatter did
    return _launch_s(cluster) + reduce_scatter + inter + reduce_scatter


def custom_allreduce_regime(custom: CustomAllReduce, p: int, nbytes: float, peer_links: bool) -> str:
    """Which of the engine's all-reduces vLLM runs for `nbytes` over `p` GPUs of one node: "one_shot",
    "two_shot", "symm_mem" or "nccl". `peer_links`: the GPUs are all joined by NVLink, or are 2 with P2P.

    vLLM (custom_all_reduce.py, `CustomAllreduce`): sizes 2, 4, 6, 8 only; more than two GPUs need
    NVLink between all of them; inputs below `max_bytes`. csrc/custom_all_reduce.cuh (`REDUCE_CASE`):
    two GPUs always one-shot; up to 4 GPUs one-shot below 512 KiB, up to 8 below 256 KiB; two-shot
    above. Then symmetric memory (symm_mem.py) below its own limit, and NCCL for the rest.
    """
    if not peer_links or p not in (2, 4, 6, 8):
        return "nccl"
    if nbytes < custom.max_bytes.get(p, 0.0):
        one_shot = p == 2 or (p <= 4 and nbytes < 512 * KIB) or nbytes < 256 * KIB
        return "one_shot" if one_shot else "two_shot"
    if nbytes < custom.symm_mem_max_bytes.get(p, 0.0):
        return "symm_mem"
    return "nccl"


# Each regime's bytes moved per GPU, as a multiple of the input's S, for p GPUs (the forms above); validate/fit.py
# fits α and B with these same factors.
CUSTOM_REGIME_BYTES: dict[str, Callable[[Any], Any]] = {
    "one_shot": lambda p: p - 1,
    "two_shot": lambda p: 2 * (p - 1) / p,
    "symm_mem": lambda p: 1,
}


def custom_regime_s(custom: CustomAllReduce, regime: str, p: int, nbytes: float) -> float:
    """Seconds of one of the engine's own all-reduces (not "nccl"): α + factor(p)·S/B."""
    if regime not in CUSTOM_REGIME_BYTES:
        raise ValueError(f"unknown all-reduce regime {regime!r}")
    alpha, bw = getattr(custom, f"{regime}_latency_s"), getattr(custom, f"{regime}_bw_bytes_per_s")
    assert alpha is not None and bw is not None  # CustomAllReduce validates symm_mem's figures with its limits
    return alpha + CUSTOM_REGIME_BYTES[regime](p) * nbytes / bw


def engine_allreduce(cluster: ClusterSpec, gpus: Sequence[int], nbytes: float) -> tuple[float, str]:
    """(seconds, regime) of an all-reduce as the engine runs it: its own kernels where vLLM's rules allow
    them and the fabric has their figures, NCCL (`allreduce_s`) otherwise."""
    fabric = cluster.intra_node
    custom = fabric.custom_allreduce
    p = len(gpus)
    if custom is None or p <= 1 or len(_nodes(cluster, gpus)) > 1:
        return allreduce_s(cluster, gpus, nbytes), "nccl"
    peer_links = isinstance(fabric, NvSwitchFabric) or (isinstance(fabric, PcieFabric) and p == 2
                                                         and _pcie_level(fabric, cluster, gpus) == "switch")
    regime = custom_allreduce_regime(custom, p, nbytes, peer_links)
    if regime == "nccl":
        return allreduce_s(cluster, gpus, nbytes), regime
    return custom_regime_s(custom, regime, p, nbytes), regime


def allgather_s(cluster: ClusterSpec, gpus: Sequence[int], nbytes: float) -> float:
    """Seconds to all-gather `nbytes` (the gathered size) over `gpus`."""
    if len(gpus) <= 1:
        return 0.0
    nodes = _nodes(cluster, gpus)
    if len(nodes) == 1:
        alpha, bw = intra_node_link(cluster, gpus)
        return _launch_s(cluster) + ring_allgather_s(len(gpus), nbytes, alpha, bw)
    per_node = len(nodes[0])
    if any(len(node) != per_node for node in nodes):
        raise ValueError(f"an all-gather group must hold as many GPUs on each node, got {list(gpus)}")
    net = cluster.inter_node
    assert net is not None
    # Gather across nodes on each rail, then inside each node.
    inter = ring_allgather_s(len(nodes), nbytes / per_node, net.latency_s, _rail_bw(cluster, per_node))
    if per_node == 1:
        return _launch_s(cluster) + inter
    alpha, bw = intra_node_link(cluster, nodes[0])
    return _launch_s(cluster) + inter + ring_allgather_s(per_node, nbytes, alpha, bw)


def alltoall_s(cluster: ClusterSpec, gpus: Sequence[int], nbytes: float) -> float:
    """Seconds of an all-to-all over `gpus` where each GPU sends `nbytes` to the others (its own share excluded),
    split evenly among them. Across nodes the share bound for other nodes leaves through the node's NICs (one
    per GPU, or shared) while the rest crosses the node's fabric; the slower part decides."""
    p = len(gpus)
    if p <= 1:
        return 0.0
    nodes = _nodes(cluster, gpus)
    per_node = len(nodes[0])
    if any(len(node) != per_node for node in nodes):
        raise ValueError(f"an all-to-all group must hold as many GPUs on each node, got {list(gpus)}")
    fabric = cluster.intra_node
    figures = fabric.alltoall
    if figures is not None:
        launch, alpha, bw = figures.collective_launch_s, figures.latency_s, figures.bandwidth(per_node)
        if isinstance(fabric, PcieFabric) and figures.bw_by_group_bytes_per_s:
            bw = _pcie_alltoall_bw(fabric, cluster, nodes[0], figures.bw_by_group_bytes_per_s, bw)
    else:  # no measured all-to-all: the ring's figures (the same α-β form as a ring all-gather)
        alpha, bw = intra_node_link(cluster, nodes[0])
        launch = fabric.collective_launch_s
    local = nbytes * (per_node - 1) / (p - 1)
    intra = (per_node - 1) * alpha + local / bw if per_node > 1 else 0.0
    if len(nodes) == 1:
        return launch + intra
    net = cluster.inter_node
    assert net is not None
    inter = net.p2p_latency_s + (nbytes - local) / _rail_bw(cluster, per_node, p2p=True)
    return launch + max(intra, inter)


def _pcie_alltoall_bw(fabric: PcieFabric, cluster: ClusterSpec, gpus: Sequence[int], by_group: dict[int, float],
                      default: float) -> float:
    """On PCIe, the all-to-all rate fitted for the group size (GPUs 0…p−1 of the tables) whose level of the tree
    matches this group's; a switch's pair without P2P stages like a group across switches."""
    level = _pcie_level(fabric, cluster, gpus)
    matching = [p for p in sorted(by_group) if fabric.level(range(p)) == level]  # the tables' box had P2P
    return by_group[matching[0]] if matching else default


def sendrecv_s(cluster: ClusterSpec, src: int, dst: int, nbytes: float) -> float:
    """Seconds to send `nbytes` from GPU `src` to GPU `dst`: α_p2p + S/B over the link between them."""
    return handoff_send_s(cluster, [src], [dst], nbytes)


def handoff_send_s(cluster: ClusterSpec, src: Sequence[int], dst: Sequence[int], nbytes: float) -> float:
    """Seconds for rank i of `src` to send nbytes/len(src) to rank i of `dst`, all pairs at once.

    This is a TP-sharded pipeline hand-off (each TP rank sends its 1/TP slice, as vLLM and Megatron
    do); the pairs share a node's NICs, or the PCIe host bridge, when they cross them together.
    """
    if len(src) != len(dst):
        raise ValueError("a hand-off pairs the ranks of two groups of equal size")
    flows = len(src)
    slice_bytes = nbytes / flows
    if cluster.node_of(src[0]) != cluster.node_of(dst[0]):
        net = cluster.inter_node
        assert net is not None
        return net.p2p_latency_s + slice_bytes / _rail_bw(cluster, flows, p2p=True)
    fabric = cluster.intra_node
    crossing = flows
    if isinstance(fabric, PcieFabric):
        crossing = sum(_pcie_level(fabric, cluster, [s, d]) == "sockets" for s, d in zip(src, dst)) or 1
    alpha, bw = intra_node_link(cluster, [src[0], dst[0]], flows_on_bridge=crossing, p2p=True)
    return alpha + slice_bytes / bw


def handoff_s(cluster: ClusterSpec, src: Sequence[int], dst: Sequence[int], nbytes: float) -> tuple[float, float]:
    """(send, all-gather) seconds of a pipeline hand-off of `nbytes` of activations."""
    return handoff_send_s(cluster, src, dst, nbytes), allgather_s(cluster, dst, nbytes)


def shared_links(cluster: ClusterSpec, gpus: Sequence[int]) -> tuple[str, ...]:
    """Names of the links that a transfer among `gpus` crosses and others may cross too, sorted.

    NICs when the GPUs span nodes (one rail per local index when every GPU has its own NIC); on PCIe,
    each socket's path through host memory that a staged transfer crosses (any beyond one switch, or
    without P2P), and the host bridge when it spans sockets. NVSwitch ports and a PCIe switch's own
    ports are never shared (non-blocking).
    """
    nodes = _nodes(cluster, gpus)
    links: set[str] = set()
    if len(nodes) > 1:
        net = cluster.inter_node
        assert net is not None
        for members in nodes:
            n = cluster.node_of(members[0])
            if net.nics_per_node >= cluster.gpus_per_node:
                links.update(f"node{n}/nic{cluster.local_index(g)}" for g in members)
            else:
                links.update(f"node{n}/nic{i}" for i in range(net.nics_per_node))
        return tuple(sorted(links))
    fabric = cluster.intra_node
    node = cluster.node_of(gpus[0])
    if isinstance(fabric, PcieFabric) and len(gpus) > 1:
        level = _pcie_level(fabric, cluster, gpus)
        if level != "switch":  # staged: through each socket's host memory path
            links.update(f"node{node}/socket{cluster.local_index(g) // fabric.gpus_per_socket}" for g in gpus)
        if level == "sockets":
            links.add(f"node{node}/host-bridge")
    return tuple(sorted(links))
