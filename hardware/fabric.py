"""The wires: fabrics inside a node (NVSwitch, PCIe) and between nodes (InfiniBand, Ethernet/RoCE).

Each fabric states datasheet link rates (`*_bw_bytes_per_s`, one direction, per GPU or per NIC) and the
fitted figures alpha-beta needs: `latency_s` (α per ring step), `p2p_latency_s` (α of a send/recv),
`bw_efficiency` (achieved fraction of the link rate) and, inside a node, `collective_launch_s`: the fixed
cost of one NCCL call, which measured all-reduces show at every group size (PHYSICS.md's ring formula
plus this constant). `source` cites them. The cost formulas live in `collectives.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from splitsim.hardware.units import BytesPerSecond, Seconds


class _Fabric(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    latency_s: Seconds = Field(ge=0, description="α: cost of one step of a ring collective")
    p2p_latency_s: Seconds = Field(ge=0, description="α of one send/recv")
    bw_efficiency: float = Field(gt=0, le=1, description="achieved fraction of the link rate by ring collectives")
    p2p_bw_efficiency: float = Field(gt=0, le=1, description="achieved fraction of the link rate by send/recv")
    source: str


class _NodeFabric(_Fabric):
    collective_launch_s: Seconds = Field(0.0, ge=0, description="fixed cost of one collective call")


class _SwitchedFabric(_NodeFabric):
    """Every device has its own full-rate path to every other (a non-blocking switch)."""

    link_bw_bytes_per_s: BytesPerSecond = Field(gt=0, description="rate per device, one direction")

    @property
    def bw_bytes_per_s(self) -> float:
        return self.link_bw_bytes_per_s * self.bw_efficiency

    @property
    def p2p_bw_bytes_per_s(self) -> float:
        return self.link_bw_bytes_per_s * self.p2p_bw_efficiency


class NvSwitchFabric(_SwitchedFabric):
    """NVLink through NVSwitch; `link_bw_bytes_per_s` is the GPU's NVLink rate, one direction."""

    kind: Literal["nvswitch"] = "nvswitch"
    nvls: bool = Field(False, description="NVLink SHARP: the switch reduces (H100/H200 NVSwitch)")
    nvls_latency_s: Seconds = Field(0.0, ge=0, description="α of an NVLS all-reduce")
    nvls_bw_efficiency: float = Field(1.0, gt=0, le=1, description="achieved fraction of the link rate by NVLS")


class PcieFabric(_NodeFabric):
    """PCIe GPUs under switches on two CPU sockets, joined by the host bridge (UPI / xGMI).

    With `p2p` the GPUs DMA to each other, and traffic between sockets crosses the host bridge; without
    it NCCL stages every transfer through pinned host memory, and `no_p2p_bw_bytes_per_s` is the
    measured per-hop rate of that path.
    """

    kind: Literal["pcie"] = "pcie"
    link_bw_bytes_per_s: BytesPerSecond = Field(gt=0, description="PCIe x16 rate per GPU, one direction")
    gpus_per_socket: int = Field(gt=0)
    host_bridge_bw_bytes_per_s: BytesPerSecond = Field(gt=0, description="socket-to-socket, one direction")
    p2p: bool
    no_p2p_bw_bytes_per_s: BytesPerSecond = Field(gt=0, description="per-hop rate staged through host memory")
    no_p2p_latency_s: Seconds = Field(gt=0, description="α per step when staged through host memory")


class SharedMemoryFabric(_SwitchedFabric):
    """Processes on one host exchanging tensors through host memory (gloo over loopback): every pair
    has its own path at a memory-copy rate (`link_bw_bytes_per_s`)."""

    kind: Literal["shared-memory"] = "shared-memory"


class NetworkFabric(_Fabric):
    """NICs between nodes: rail-optimised (one NIC per GPU) or shared (fewer NICs than GPUs)."""

    kind: Literal["infiniband", "ethernet"]
    nic_bw_bytes_per_s: BytesPerSecond = Field(gt=0, description="line rate of one NIC, one direction")
    nics_per_node: int = Field(gt=0)

    @property
    def bw_bytes_per_s(self) -> float:
        return self.nic_bw_bytes_per_s * self.bw_efficiency

    @property
    def p2p_bw_bytes_per_s(self) -> float:
        return self.nic_bw_bytes_per_s * self.p2p_bw_efficiency


IntraNodeFabric = Annotated[NvSwitchFabric | PcieFabric | SharedMemoryFabric, Field(discriminator="kind")]
