"""Named presets: GPUs, fabrics and clusters shipped as YAML under `catalog/`, and user files.

A cluster file names its GPU and fabrics by preset name or spells them out inline; any of the three may
also be given as a path to a YAML file of the user's.
"""

from __future__ import annotations

import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from splitsim.errors import ScenarioError
from splitsim.files import cut, read_yaml_file, shown
from splitsim.hardware.cluster import ClusterSpec
from splitsim.hardware.gpu import GpuSpec

_KINDS = ("gpus", "fabrics", "clusters")


def _catalog_dir(kind: str) -> Path:
    return Path(str(resources.files("splitsim.hardware") / "catalog" / kind))


@cache
def preset_names(kind: str) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in _catalog_dir(kind).glob("*.yaml")))


_WHAT = {"gpus": ("GPU", "name, memory_bytes, bf16_flops_per_s, efficiency…"),
         "fabrics": ("fabric", "kind, name, latency_s, bw_efficiency…"),
         "clusters": ("cluster", "name, gpu, gpus_per_node, intra_node…")}


def _load(kind: str, ref: str) -> dict[str, Any]:
    """The raw mapping of a preset name or a YAML path (one with a '/' or a .yaml/.yml suffix)."""
    what, fields = _WHAT[kind]
    if ref in preset_names(kind):
        return read_yaml_file(_catalog_dir(kind) / f"{ref}.yaml", what, fields)
    if "/" in ref or os.sep in ref or ref.endswith((".yaml", ".yml")):
        return read_yaml_file(ref, what, fields)
    valid = ", ".join(preset_names(kind))
    raise ScenarioError(f"unknown {what} {cut(repr(ref))} (valid: {valid}, or a path to a .yaml file)")


def resolve_cluster(spec: str | dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """A cluster mapping with its GPU and fabrics looked up, ready for `ClusterSpec`. A mapping with `base`
    (a preset name or YAML path) is that cluster with the mapping's other keys merged in, at every level:
    `{base: l40s-pcie-node, intra_node: {p2p: true}}` is the preset with peer-to-peer on."""
    data = dict(_load("clusters", spec) if isinstance(spec, str) else spec)
    for key, kind in (("gpu", "gpus"), ("intra_node", "fabrics"), ("inter_node", "fabrics")):
        if isinstance(data.get(key), str):
            try:
                data[key] = _load(kind, data[key])
            except ScenarioError as err:
                if not isinstance(spec, str):
                    raise
                raise ScenarioError(f"{shown(_path('clusters', spec))}: {key}: {err}") from None
    if "base" in data:
        base = data.pop("base")
        if not isinstance(base, str | dict) or depth >= 8:
            raise ScenarioError(f"cluster.base = {cut(repr(base))}: expected a cluster preset name or YAML path "
                                "(bases nest at most 8 deep)")
        merged = _merged(resolve_cluster(base, depth + 1), data)
        if "name" not in data:
            merged["name"] = f"{merged.get('name', 'cluster')}+custom"  # not the preset: say so in outputs
        return merged
    return data


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, mapping into mapping at every level."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_cluster(spec: str | dict[str, Any] | ClusterSpec) -> ClusterSpec:
    if isinstance(spec, ClusterSpec):  # resolved inputs carry the spec itself
        return spec
    return ClusterSpec.model_validate(resolve_cluster(spec))


def load_gpu(spec: str | dict[str, Any]) -> GpuSpec:
    return GpuSpec.model_validate(_load("gpus", spec) if isinstance(spec, str) else spec)


def cluster_files(spec: str | dict[str, Any]) -> dict[str, str]:
    """The file each part of a cluster was read from ("" for the cluster itself, "gpu", "intra_node",
    "inter_node"), so that an error in a part can name its file."""
    files: dict[str, str] = {}
    data = spec
    if isinstance(spec, str):
        files[""] = str(_path("clusters", spec))
        data = _load("clusters", spec)
    if isinstance(data, dict):
        for key, kind in (("gpu", "gpus"), ("intra_node", "fabrics"), ("inter_node", "fabrics")):
            if isinstance(data.get(key), str):
                files[key] = str(_path(kind, data[key]))
    return files


def _path(kind: str, ref: str) -> Path:
    return _catalog_dir(kind) / f"{ref}.yaml" if ref in preset_names(kind) else Path(ref)
