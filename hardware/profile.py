"""A hardware profile: the fitted parameters of the cost model, written by `splitsim calibrate`.

It holds only the named parameters `hardware/` uses — GEMM and memory efficiencies of one GPU, and
alpha-beta figures of the links inside a node and between nodes — never lookup tables, and says which
measurements it was fitted on and how well. A scenario names it with `hardware_profile: PATH`; it then
replaces the cluster's GPU efficiency and fabric figures.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from splitsim.errors import ScenarioError
from splitsim.files import cut, read_yaml_file, shown
from splitsim.hardware.cluster import ClusterSpec
from splitsim.hardware.fabric import AllToAll, CustomAllReduce, NvSwitchFabric, PcieFabric
from splitsim.hardware.gpu import Efficiency
from splitsim.hardware.units import MAX_ERROR, FixedCost, LinkBandwidth
from splitsim.writing import write_text_atomic

PROFILE_SCHEMA = "splitsim.hardware-profile/2"  # 2: per-dtype GEMM figures, per-phase attention; grouped GEMMs
READ_SCHEMAS = ("splitsim.hardware-profile/1", PROFILE_SCHEMA)  # a schema-1 file is a schema-2 one without them


GPU_KINDS = ("gemm", "attention", "elementwise", "moe")  # the first word of a profile's error kinds, by what they fit
COMM_KINDS = ("allreduce", "allgather", "sendrecv", "alltoall")
INTER = "_inter_node"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinkFit(_Strict):
    """Alpha-beta figures of one kind of link, as achieved (not datasheet) bandwidths."""

    collective_launch_s: FixedCost = Field(description="fixed cost of one collective call")
    latency_s: FixedCost = Field(description="α per ring step (0 when the fit cannot tell it from t₀)")
    bw_bytes_per_s: LinkBandwidth = Field(description="achieved ring bandwidth B")
    p2p_latency_s: FixedCost = Field(description="α of one send/recv")
    p2p_bw_bytes_per_s: LinkBandwidth = Field(description="achieved send/recv bandwidth")
    nvls_latency_s: FixedCost | None = Field(None, description="α of an NVLS all-reduce (NVSwitch that reduces)")
    nvls_bw_bytes_per_s: LinkBandwidth | None = Field(None, description="its achieved bandwidth")
    custom_allreduce: CustomAllReduce | None = Field(None, description="the engine's own all-reduce, fitted")
    alltoall: AllToAll | None = Field(None, description="NCCL's all-to-all, fitted")
    bw_by_group_bytes_per_s: dict[int, LinkBandwidth] | None = Field(
        None, description="achieved ring bandwidth per group size, where each was fitted apart (PCIe: a ring "
                          "runs at the widest level of the tree it spans)")


class ErrorStats(_Strict):
    """Relative errors |predicted/measured − 1| of a fit on rows it did not see (or, if none, on all)."""

    rows: int
    median: float
    max: float
    held_out: bool
    within_80: float | None = Field(None, description="held-out rows inside the 80 % interval that the training "
                                                      "rows' residuals give (sim/uncertainty.py)")


class HardwareProfile(_Strict):
    schema_: str = Field(PROFILE_SCHEMA, alias="schema")
    name: str
    gpu: str = Field(description="the GPU preset (or device) the profile was measured on")
    efficiency: Efficiency
    intra_node: LinkFit | None = None
    inter_node: LinkFit | None = None
    fitted_on: list[str] = Field(description="the measurement folders or files the fit used")
    errors: dict[str, ErrorStats] = Field(default_factory=dict, description="per op kind")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def write(self, path: Path) -> None:
        data = self.model_dump(mode="json", by_alias=True)
        write_text_atomic(path, f"# Written by splitsim calibrate. Schema {PROFILE_SCHEMA}.\n"
                          + yaml.safe_dump(data, sort_keys=False))


def load_profile(path: str | Path) -> HardwareProfile:
    try:
        data = read_yaml_file(path, "hardware profile", "schema, name, gpu, efficiency…")
    except ScenarioError as err:
        raise ScenarioError(f"hardware_profile: {err}") from None
    if data.get("schema") not in READ_SCHEMAS:
        raise ScenarioError(f"hardware_profile: {shown(path)} has schema {cut(repr(data.get('schema')))}, "
                            f"expected one of {', '.join(map(repr, READ_SCHEMAS))}")
    return HardwareProfile.model_validate(data)


def _fabric_update(fabric_rate_bytes_per_s: float, fit: LinkFit, where: str) -> dict[str, float]:
    for label, bw in (("bw_bytes_per_s", fit.bw_bytes_per_s), ("p2p_bw_bytes_per_s", fit.p2p_bw_bytes_per_s)):
        if bw > fabric_rate_bytes_per_s * (1 + 1e-9):
            raise ValueError(f"hardware_profile: {where}.{label} = {bw:.4g} B/s exceeds the link rate "
                             f"{fabric_rate_bytes_per_s:.4g} B/s of the cluster's fabric")
    return {"latency_s": fit.latency_s, "p2p_latency_s": fit.p2p_latency_s,
            "bw_efficiency": fit.bw_bytes_per_s / fabric_rate_bytes_per_s,
            "p2p_bw_efficiency": fit.p2p_bw_bytes_per_s / fabric_rate_bytes_per_s}


def pcie_ring_figures(fabric: PcieFabric, fit: LinkFit) -> dict[str, object]:
    """A PCIe fabric's ring figures from a fit: each group size's bandwidth (GPUs 0…p−1, as the tables and
    the runner place them) to the level of the tree it spans; one bandwidth (no per-group fit) to the level
    the fabric's rings use first (under a switch with P2P, else staged). α is one for every level."""
    by_group = fit.bw_by_group_bytes_per_s or {2: fit.bw_bytes_per_s}
    fields: dict[str, object] = {"collective_launch_s": fit.collective_launch_s, "latency_s": fit.latency_s,
                                 "cross_switch_latency_s": fit.latency_s}
    field = {"switch": "bw_efficiency", "socket": "cross_switch_bw_bytes_per_s",
             "sockets": "host_bridge_bw_bytes_per_s"}
    seen: dict[str, int] = {}
    for p, bw in sorted(by_group.items()):
        level = fabric.ring_level(range(p))
        if level in seen:
            raise ValueError(f"hardware_profile: groups of {seen[level]} and {p} GPUs both span the {level} level "
                             f"of fabric {fabric.name} (gpus_per_switch {fabric.gpus_per_switch}, gpus_per_socket "
                             f"{fabric.gpus_per_socket}, p2p {str(fabric.p2p).lower()}): one ring bandwidth per level "
                             "(without P2P a switch's pairs stage through host memory as wider rings do)")
        seen[level] = p
        if level == "switch":
            if bw > fabric.link_bw_bytes_per_s * (1 + 1e-9):
                raise ValueError(f"hardware_profile: intra_node ring bandwidth of {p} GPUs = {bw:.4g} B/s exceeds "
                                 f"the link rate {fabric.link_bw_bytes_per_s:.4g} B/s of the cluster's fabric")
            fields["bw_efficiency"] = bw / fabric.link_bw_bytes_per_s
        else:
            fields[field[level]] = bw
    return fields


def apply_profile(cluster: ClusterSpec, profile: HardwareProfile) -> ClusterSpec:
    """The cluster with the profile's GPU efficiency and link figures in place of the catalog's.

    On PCIe, each group size's ring bandwidth goes to the level of the tree that group spans (`pcie_ring_figures`).
    """
    if profile.gpu != cluster.gpu.name:
        raise ValueError(f"hardware_profile: {profile.name} was fitted on {profile.gpu}, but cluster "
                         f"{cluster.name} has {cluster.gpu.name} GPUs (use a profile of {cluster.gpu.name})")
    errors = {kind: min(stats.median, MAX_ERROR) for kind, stats in profile.errors.items() if stats.median >= 0}
    gpu_errors = {kind: e for kind, e in errors.items() if kind.split()[0] in GPU_KINDS}
    efficiency = profile.efficiency.model_copy(update={"held_out_errors": gpu_errors or
                                                       profile.efficiency.held_out_errors})
    gpu = cluster.gpu.model_copy(update={"efficiency": efficiency})
    update: dict[str, object] = {"gpu": gpu}
    if profile.intra_node is not None:
        intra = cluster.intra_node
        fit = profile.intra_node
        fields: dict[str, object] = dict(_fabric_update(intra.link_bw_bytes_per_s, fit, "intra_node"))
        fields["collective_launch_s"] = fit.collective_launch_s
        nvls_bw = fit.nvls_bw_bytes_per_s
        if fit.nvls_latency_s is not None and nvls_bw is not None and isinstance(intra, NvSwitchFabric):
            if nvls_bw > intra.link_bw_bytes_per_s * (1 + 1e-9):
                raise ValueError(f"hardware_profile: intra_node.nvls_bw_bytes_per_s = {nvls_bw:.4g} B/s exceeds "
                                 f"the link rate {intra.link_bw_bytes_per_s:.4g} B/s of the cluster's fabric")
            fields |= {"nvls": True, "nvls_latency_s": fit.nvls_latency_s,
                       "nvls_bw_efficiency": nvls_bw / intra.link_bw_bytes_per_s}
        if isinstance(intra, PcieFabric):
            send_recv = {key: fields[key] for key in ("p2p_latency_s", "p2p_bw_efficiency")}
            fields = send_recv | pcie_ring_figures(intra, fit)
        if fit.custom_allreduce is not None:
            fields["custom_allreduce"] = fit.custom_allreduce
        if fit.alltoall is not None:
            fields["alltoall"] = fit.alltoall
        fields["held_out_errors"] = {k: e for k, e in errors.items() if k.split()[0] in COMM_KINDS
                                     and not k.endswith(INTER)} or intra.held_out_errors
        update["intra_node"] = intra.model_copy(update=fields)
    if profile.inter_node is not None and cluster.inter_node is not None:
        net = cluster.inter_node
        net_fields: dict[str, object] = dict(_fabric_update(net.nic_bw_bytes_per_s, profile.inter_node, "inter_node"))
        net_fields["held_out_errors"] = {k.removesuffix(INTER): e for k, e in errors.items() if k.endswith(INTER)} \
            or net.held_out_errors
        update["inter_node"] = net.model_copy(update=net_fields)
    return cluster.model_copy(update=update)
