"""The wires: fabrics inside a node (NVSwitch, PCIe) and between nodes (InfiniBand, Ethernet/RoCE).

Each fabric states datasheet link rates (`*_bw_bytes_per_s`, one direction, per GPU or per NIC) and the
fitted figures alpha-beta needs: `latency_s` (α per ring step), `p2p_latency_s` (α of a send/recv),
`bw_efficiency` (achieved fraction of the link rate) and, inside a node, `collective_launch_s`: the fixed
cost of one NCCL call, which measured all-reduces show at every group size (PHYSICS.md's ring formula
plus this constant). `source` cites them. The cost formulas live in `collectives.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from splitsim.hardware.units import BufferSize, FixedCost, Fraction, Latency, LinkBandwidth, check_errors

MIB = 2.0**20
ENGINE_MAX_BYTES = 8 * MIB  # vLLM's CustomAllreduce(max_size=8192 * 1024), custom_all_reduce.py


class _Fabric(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    latency_s: Latency = Field(description="α: cost of one step of a ring collective")
    p2p_latency_s: Latency = Field(description="α of one send/recv")
    bw_efficiency: Fraction = Field(description="achieved fraction of the link rate by ring collectives")
    p2p_bw_efficiency: Fraction = Field(description="achieved fraction of the link rate by send/recv")
    source: str
    assumed: bool = Field(False, description="true where some figure is assumed rather than measured")
    held_out_errors: dict[str, float] = Field(
        default_factory=dict, description="median |predicted/measured − 1| of the fit on held-out sizes, by "
                                          "collective (allreduce, allgather, allreduce custom…): the run's error bars")

    def __hash__(self) -> int:  # frozen, but dict fields: hash what it says (cost caches key on the cluster)
        return hash(self.model_dump_json())

    @field_validator("held_out_errors", mode="before")
    @classmethod
    def _errors_are_fractions(cls, errors: object) -> object:
        return check_errors(errors)


class CustomAllReduce(BaseModel):
    """The serving engine's own all-reduce inside a node, as vLLM runs it (`hardware.collectives` holds the
    switch points, from vLLM's source): its custom kernels read the peers' buffers directly — one-shot,
    t = α₁ + (p−1)·S/B₁, or two-shot (reduce-scatter then all-gather), t = α₂ + 2(p−1)/p·S/B₂ — below
    `max_bytes`; then PyTorch symmetric memory (the switch reduces, t = α₃ + S/B₃) below
    `symm_mem_max_bytes` where the GPU has it; NCCL above. α and B are fitted to measured tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    one_shot_latency_s: Latency
    one_shot_bw_bytes_per_s: LinkBandwidth = Field(description="rate each GPU reads its peers' inputs")
    two_shot_latency_s: Latency
    two_shot_bw_bytes_per_s: LinkBandwidth
    max_bytes: dict[int, BufferSize] = Field(
        default_factory=lambda: {p: ENGINE_MAX_BYTES for p in (2, 4, 6, 8)},
        description="per group size: inputs below it take the custom kernels (vLLM's supported sizes 2, 4, 6, 8)")
    symm_mem_latency_s: Latency | None = None
    symm_mem_bw_bytes_per_s: LinkBandwidth | None = None
    symm_mem_max_bytes: dict[int, BufferSize] = Field(
        default_factory=dict, description="per group size: inputs below it, and not custom, take symmetric memory")
    source: str

    def __hash__(self) -> int:  # the dicts make pydantic's own hash fail; caches key on fabrics
        return hash(self.model_dump_json())

    @model_validator(mode="after")
    def _symm_mem_complete(self) -> CustomAllReduce:
        if self.symm_mem_max_bytes and (self.symm_mem_latency_s is None or self.symm_mem_bw_bytes_per_s is None):
            raise ValueError("symm_mem_max_bytes: needs symm_mem_latency_s and symm_mem_bw_bytes_per_s")
        return self


class AllToAll(BaseModel):
    """NCCL's all-to-all inside a node, fitted to measured tables: each GPU sends B bytes, split evenly among
    its p−1 peers, all at once (grouped send/recv): t = t₀ + (p−1)·α + B/B_a2a, B_a2a the rate each GPU sends
    at, per group size where the fit gave each its own (PCIe); a group takes the figure of the nearest
    measured size at least its own (else the largest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    collective_launch_s: FixedCost
    latency_s: FixedCost = Field(description="α per peer")
    bw_bytes_per_s: LinkBandwidth = Field(description="achieved rate each GPU sends at")
    bw_by_group_bytes_per_s: dict[int, LinkBandwidth] | None = Field(
        None, description="the achieved rate per group size, where each was fitted apart")
    source: str

    def __hash__(self) -> int:  # the dict makes pydantic's own hash fail; caches key on fabrics
        return hash(self.model_dump_json())

    def bandwidth(self, p: int) -> float:
        by_group = self.bw_by_group_bytes_per_s
        if not by_group:
            return self.bw_bytes_per_s
        at_least = [size for size in sorted(by_group) if size >= p]
        return by_group[at_least[0] if at_least else max(by_group)]


class _NodeFabric(_Fabric):
    collective_launch_s: FixedCost = Field(0.0, description="fixed cost of one collective call")
    custom_allreduce: CustomAllReduce | None = Field(
        None, description="the engine's own all-reduce figures; without them every all-reduce is NCCL's")
    alltoall: AllToAll | None = Field(
        None, description="NCCL's all-to-all, fitted; without it the ring's α and bandwidth stand in")


class _SwitchedFabric(_NodeFabric):
    """Every device has its own full-rate path to every other (a non-blocking switch)."""

    link_bw_bytes_per_s: LinkBandwidth = Field(description="rate per device, one direction")

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
    nvls_latency_s: Latency = Field(0.0, description="α of an NVLS all-reduce (used with nvls: true)")
    nvls_bw_efficiency: Fraction = Field(1.0, description="achieved fraction of the link rate by NVLS")

    @model_validator(mode="after")
    def _nvls_has_a_latency(self) -> NvSwitchFabric:
        if self.nvls and self.nvls_latency_s <= 0:
            raise ValueError("nvls_latency_s: nvls: true needs the α of an NVLS all-reduce (e.g. '10 us')")
        return self


class PcieFabric(_NodeFabric):
    """PCIe GPUs in a tree: `gpus_per_switch` under each PCIe switch, `gpus_per_socket` under each CPU
    socket, the sockets joined by the host bridge (UPI / xGMI). A ring runs at its widest level's rate:

    - under one switch, with `p2p`: the GPUs DMA to each other (`latency_s`, link rate × `bw_efficiency`);
    - across the switches of one socket, or under one switch without P2P: `cross_switch_*`. NCCL stages such
      hops through host memory (its SHM transport: it uses P2P no further than PCIe switches on Intel and Arm
      hosts, nccl src/graph/paths.cc `ncclTopoCheckP2p`);
    - across sockets: at most `host_bridge_bw_bytes_per_s`.

    The rates are what rings achieve (fitted per group size where tables exist), not datasheet figures.
    """

    kind: Literal["pcie"] = "pcie"
    link_bw_bytes_per_s: LinkBandwidth = Field(description="PCIe x16 rate per GPU, one direction")
    gpus_per_switch: int = Field(gt=0, le=1024, strict=True, description="GPUs under one PCIe switch")
    gpus_per_socket: int = Field(gt=0, le=1024, strict=True)
    p2p: bool = Field(description="GPU peer-to-peer on: GPUs under one switch DMA to each other")
    cross_switch_bw_bytes_per_s: LinkBandwidth = Field(
        description="ring rate across the switches of one socket (staged through host memory)")
    cross_switch_latency_s: Latency = Field(description="α per ring step across switches")
    host_bridge_bw_bytes_per_s: LinkBandwidth = Field(description="ring rate across sockets")

    @model_validator(mode="after")
    def _switches_fill_sockets(self) -> PcieFabric:
        if self.gpus_per_socket % self.gpus_per_switch:
            raise ValueError(f"gpus_per_switch: {self.gpus_per_switch} does not divide gpus_per_socket "
                             f"{self.gpus_per_socket} (a socket holds whole switches)")
        return self

    def level(self, local_indices: Iterable[int]) -> Literal["switch", "socket", "sockets"]:
        """The widest level of the tree that GPUs at these node-local indices span."""
        indices = list(local_indices)
        if len({i // self.gpus_per_socket for i in indices}) > 1:
            return "sockets"
        return "socket" if len({i // self.gpus_per_switch for i in indices}) > 1 else "switch"

    def ring_level(self, local_indices: Iterable[int]) -> Literal["switch", "socket", "sockets"]:
        """The level whose rate a transfer among these GPUs runs at: `level`, except that a switch's GPUs
        without P2P stage through host memory as GPUs across switches do ("socket")."""
        level = self.level(local_indices)
        return "socket" if level == "switch" and not self.p2p else level


class SharedMemoryFabric(_SwitchedFabric):
    """Processes on one host exchanging tensors through host memory (gloo over loopback): every pair
    has its own path at a memory-copy rate (`link_bw_bytes_per_s`)."""

    kind: Literal["shared-memory"] = "shared-memory"


class NetworkFabric(_Fabric):
    """NICs between nodes: rail-optimised (one NIC per GPU) or shared (fewer NICs than GPUs)."""

    kind: Literal["infiniband", "ethernet"]
    nic_bw_bytes_per_s: LinkBandwidth = Field(description="line rate of one NIC, one direction")
    nics_per_node: int = Field(gt=0, le=1024, strict=True)

    @property
    def bw_bytes_per_s(self) -> float:
        return self.nic_bw_bytes_per_s * self.bw_efficiency

    @property
    def p2p_bw_bytes_per_s(self) -> float:
        return self.nic_bw_bytes_per_s * self.p2p_bw_efficiency


IntraNodeFabric = Annotated[NvSwitchFabric | PcieFabric | SharedMemoryFabric, Field(discriminator="kind")]
