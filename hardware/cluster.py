"""A cluster: nodes of identical GPUs, the fabric inside each node and the network between them.

GPUs are numbered in placement order: node 0 holds GPUs 0…g−1, node 1 the next g, and so on.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitsim.hardware.fabric import IntraNodeFabric, NetworkFabric
from splitsim.hardware.gpu import GpuSpec


class ClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    gpu: GpuSpec
    num_nodes: int = Field(1, gt=0, le=100_000, strict=True)
    gpus_per_node: int = Field(gt=0, le=1024, strict=True, description="GPUs sharing the intra-node fabric")
    intra_node: IntraNodeFabric
    inter_node: NetworkFabric | None = None
    description: str = ""

    @model_validator(mode="after")
    def _network_between_nodes(self) -> ClusterSpec:
        if self.num_nodes > 1 and self.inter_node is None:
            raise ValueError(f"inter_node: a cluster of {self.num_nodes} nodes needs a network fabric")
        return self

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node

    def local_index(self, gpu: int) -> int:
        return gpu % self.gpus_per_node
