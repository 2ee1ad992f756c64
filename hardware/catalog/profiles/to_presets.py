"""Write the fitted profiles' `efficiency` blocks into the GPU presets that take them (README.md here).

    python hardware/catalog/profiles/to_presets.py
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import yaml

from splitsim.hardware.fabric import PcieFabric
from splitsim.hardware.profile import LinkFit, pcie_ring_figures

HERE = Path(__file__).resolve().parent
GPUS = HERE.parent / "gpus"
PRESETS = {"h100_sxm-vllm.yaml": "h100-sxm.yaml", "h200_sxm-vllm.yaml": "h200.yaml",
           "a100_sxm-vllm.yaml": "a100-sxm.yaml", "l40s-vllm.yaml": "l40s.yaml", "b200_sxm-vllm.yaml": "b200.yaml",
           "rtx_pro_6000_server-vllm.yaml": "rtx-pro-6000.yaml"}
MARK = "efficiency:"
GPU_KINDS = ("gemm", "attention", "elementwise", "moe")


def block(profile: dict) -> str:
    """The preset's efficiency block: figures rounded to 4 significant digits, times in µs, the source."""
    e = profile["efficiency"]
    us = lambda seconds: f"{seconds * 1e6:.4g} us"  # noqa: E731
    lines = [MARK, f"  compute: {e['compute']:.4g}", f"  tile_m: {e['tile_m']}", f"  tile_n: {e['tile_n']}",
             f"  wave_exponent: {e['wave_exponent']:.4g}", f"  m_half: {e['m_half']:.4g}",
             f"  memory: {e['memory']:.4g}", f"  launch_s: {us(e['launch_s'])}", f"  attention: {e['attention']:.4g}"]
    if e.get("gemm_by_dtype"):
        lines.append("  gemm_by_dtype:")
        for dtype, g in e["gemm_by_dtype"].items():
            lines += [f"    {dtype}: {{compute: {g['compute']:.4g}, tile_m: {g['tile_m']}, tile_n: {g['tile_n']}, "
                      f"wave_exponent: {g['wave_exponent']:.4g}, m_half: {g['m_half']:.4g}}}"]
    if e.get("grouped_gemm"):
        lines.append("  grouped_gemm:")
        for dtype, g in e["grouped_gemm"].items():
            lines += [f"    {dtype}: {{compute: {g['compute']:.4g}, m_half: {g['m_half']:.4g}, "
                      f"memory: {g['memory']:.4g}, launch_s: {us(g['launch_s'])}}}"]
    for phase in ("attention_prefill", "attention_decode"):
        if e.get(phase):
            a = e[phase]
            lines.append(f"  {phase}: {{compute: {a['compute']:.4g}, memory: {a['memory']:.4g}, "
                         f"launch_s: {us(a['launch_s'])}}}")
    errors = profile["errors"]
    gpu_kinds = {kind: s["median"] for kind, s in errors.items() if s["held_out"] and kind.split()[0] in GPU_KINDS}
    lines.append("  held_out_errors: {" + ", ".join(f"{kind}: {e:.4g}" for kind, e in gpu_kinds.items()) + "}")
    held = ", ".join(f"{kind} {s['median']:.1%}" for kind, s in errors.items()
                     if s["held_out"] and kind != "gemm")
    package, _, first = profile["fitted_on"][0].rpartition(" ")
    tables = ", ".join(entry.rpartition(" ")[2].split("/", 1)[1] for entry in profile["fitted_on"])
    source = (f"Fitted by splitsim calibrate --aiconfigurator {first.split('/')[0]} to {package}'s measured "
              f"tables ({tables}; hardware/catalog/profiles/{profile['name']}.yaml). Held-out median "
              f"errors: {held}.")
    lines += ["  source: >-", *textwrap.wrap(source, 100, initial_indent="    ", subsequent_indent="    ")]
    return "\n".join(lines) + "\n"


FABRICS = {"h100_sxm-vllm.yaml": "nvlink4-nvswitch.yaml", "a100_sxm-vllm.yaml": "nvlink3-nvswitch.yaml",
           "b200_sxm-vllm.yaml": "nvlink5-nvswitch.yaml", "rtx_pro_6000_server-vllm.yaml": "pcie-gen5-p2p.yaml",
           "l40s-vllm.yaml": "pcie-gen4-2socket.yaml"}
KEPT_P2P = "send/recv figures stay Vidur's (the tables have no send/recv)"
P2P_NOTE = {  # what the fabric's send/recv figures are, where not Vidur's
    "nvlink5-nvswitch.yaml": "send/recv figures are assumed: NVLink 4's fitted α and fraction of the link rate (the "
                             "tables have no send/recv)",
    "pcie-gen5-p2p.yaml": "The tables do not state the server's PCIe topology; inferred from them: peer-to-peer "
                          "on (vLLM ran its own all-reduce on 2 GPUs, which it does only after its P2P check "
                          "passes), pairs under one PCIe switch (2-GPU rings at {ring2}, 4-GPU rings at {ring4}), 4 "
                          "GPUs per socket (8-GPU rings at {ring8}); send/recv figures are assumed",
    "pcie-gen4-2socket.yaml": "The tables do not state the server's PCIe topology; inferred from them: peer-to-peer "
                              "on between the GPUs they paired (vLLM ran its own all-reduce on 2 GPUs, which it "
                              "does only after its P2P check passes), pairs under one PCIe switch (2-GPU rings "
                              "at {ring2}, 4-GPU rings at {ring4}: NCCL stages hops beyond a switch through host "
                              "memory on Intel hosts, nccl src/graph/paths.cc), 4 GPUs per socket (8-GPU rings at "
                              "{ring8}). "
                              "Without P2P (p2p: false, the common default on 8xL40S servers: NVIDIA "
                              "ai-dynamo/aiconfigurator issue 1346, NVIDIA/TensorRT-LLM issue 9680) pairs stage "
                              "at the cross-switch rate too. Send/recv figures are assumed"}


def fabric(text: str, profile: dict, name: str = "") -> str:
    """The fabric preset with its collective figures from the profile's `intra_node` fit: t₀, ring α and B,
    NVLS α and B where fitted; send/recv kept."""
    fit = profile["intra_node"]
    rate = float(re.search(r"^link_bw_bytes_per_s: ([\d.]+) GB/s", text, re.M).group(1)) * 1e9  # type: ignore[union-attr]
    figures = {"bw_efficiency": f"{fit['bw_bytes_per_s'] / rate:.4f}", "latency_s": f"{fit['latency_s'] * 1e6:.4g} us",
               "collective_launch_s": f"{fit['collective_launch_s'] * 1e6:.4g} us"}
    if fit.get("bw_by_group_bytes_per_s"):  # PCIe: each group size's ring rate to the level of the tree it spans
        # the tables' boxes had P2P (the notes below): map their rings as on such a box
        box = PcieFabric.model_validate(yaml.safe_load(text) | {"p2p": True})
        fields = pcie_ring_figures(box, LinkFit.model_validate(fit))
        figures |= {"bw_efficiency": f"{fields['bw_efficiency']:.4f}",
                    "cross_switch_latency_s": f"{fields['cross_switch_latency_s'] * 1e6:.4g} us"}  # type: ignore[operator]
        figures |= {key: f"{fields[key] / 1e9:.4g} GB/s"  # type: ignore[operator]
                    for key in ("cross_switch_bw_bytes_per_s", "host_bridge_bw_bytes_per_s") if key in fields}
    if fit.get("nvls_latency_s"):
        figures |= {"nvls_bw_efficiency": f"{fit['nvls_bw_bytes_per_s'] / rate:.4f}",
                    "nvls_latency_s": f"{fit['nvls_latency_s'] * 1e6:.4g} us"}
    for key, value in figures.items():
        text = re.sub(rf"^{key}: .*$", f"{key}: {value}", text, flags=re.M)
    errors = profile["errors"]
    held = ", ".join(f"{kind} {errors[kind]['median']:.1%}" for kind in ("allreduce", "allgather") if kind in errors)
    table = next(entry for entry in profile["fitted_on"] if "/comm/" in entry)
    rings = {f"ring{p}": f"{bw / 1e9:.3g} GB/s" for p, bw in (fit.get("bw_by_group_bytes_per_s") or {}).items()}
    p2p = P2P_NOTE.get(name, KEPT_P2P).format_map(rings)
    source = (f"Collective figures fitted by splitsim calibrate --aiconfigurator to {table} (fp16 all-reduce and "
              f"all-gather at 2/4/8 GPUs{', NVLS beside the ring' if fit.get('nvls_latency_s') else ''}; "
              f"hardware/catalog/profiles/{profile['name']}.yaml); held-out median errors {held}. {p2p}; "
              "the link rate is the datasheet's.")
    head = text[:text.index("source: >-")]
    return head + "source: >-\n" + "\n".join(textwrap.wrap(source, 100, initial_indent="  ",
                                                         subsequent_indent="  ")) + "\n"


CUSTOM = {"h100_sxm-vllm.yaml": "nvlink4-nvswitch.yaml", "a100_sxm-vllm.yaml": "nvlink3-nvswitch.yaml",
          "l40s-vllm.yaml": "pcie-gen4-2socket.yaml", "b200_sxm-vllm.yaml": "nvlink5-nvswitch.yaml",
          "rtx_pro_6000_server-vllm.yaml": "pcie-gen5-p2p.yaml"}


def custom_allreduce(text: str, profile: dict) -> str:
    """The fabric preset with the α and B of the engine's own all-reduce from the profile (its size limits,
    vLLM's, stay as the preset states them: the fit used them)."""
    fit = profile["intra_node"]["custom_allreduce"]
    start = text.index("custom_allreduce:")
    end = text.index("\nsource: >-", start) + 1
    block = text[start:end]
    for regime in ("one_shot", "two_shot", "symm_mem"):
        alpha, bw = fit.get(f"{regime}_latency_s"), fit.get(f"{regime}_bw_bytes_per_s")
        if alpha is None:
            continue
        block = re.sub(rf"^  {regime}_latency_s: .*$", f"  {regime}_latency_s: {alpha * 1e6:.4g} us", block, flags=re.M)
        block = re.sub(rf"^  {regime}_bw_bytes_per_s: .*$", f"  {regime}_bw_bytes_per_s: {bw / 1e9:.4g} GB/s", block,
                       flags=re.M)
    held = profile["errors"]["allreduce custom"]
    table = next(entry for entry in profile["fitted_on"] if "/comm/" in entry and "/comm/nccl/" not in entry)
    block = re.sub(r"^  source: .*$", f"  source: fitted by splitsim calibrate to {table} (CUDA-graph rows, bf16); "
                   f"held-out median error {held['median']:.1%}", block, flags=re.M)
    return text[:start] + block + text[end:]


def alltoall(text: str, profile: dict) -> str:
    """The fabric preset with NCCL's all-to-all figures from the profile (replacing any it had)."""
    fit = profile["intra_node"]["alltoall"]
    table = next(entry for entry in profile["fitted_on"] if "/comm/nccl/" in entry)
    held = profile["errors"]["alltoall"]
    lines = ["alltoall:                          # NCCL's all-to-all (hardware/fabric.py AllToAll)",
             f"  collective_launch_s: {fit['collective_launch_s'] * 1e6:.4g} us",
             f"  latency_s: {fit['latency_s'] * 1e6:.4g} us",
             f"  bw_bytes_per_s: {fit['bw_bytes_per_s'] / 1e9:.4g} GB/s"]
    if fit.get("bw_by_group_bytes_per_s"):
        groups = ", ".join(f"{p}: {bw / 1e9:.4g} GB/s" for p, bw in fit["bw_by_group_bytes_per_s"].items())
        lines.append(f"  bw_by_group_bytes_per_s: {{{groups}}}")
    lines.append(f"  source: fitted by splitsim calibrate to {table} (fp16 alltoall at 2/4/8 GPUs; message_size "
                 f"read as each rank's whole buffer); held-out median error {held['median']:.1%}")
    block = "\n".join(lines) + "\n"
    if "\nalltoall:" in text:
        start = text.index("\nalltoall:") + 1
        end = start + 1
        while True:  # the block ends at the next top-level key
            nl = text.index("\n", end)
            end = nl + 1
            if end >= len(text) or (text[end] not in " #\n"):
                break
        return text[:start] + block + text[end:]
    at = text.index("custom_allreduce:") if "custom_allreduce:" in text else text.index("source: >-")
    return text[:at] + block + text[at:]


def fabric_errors(text: str, kinds: dict[str, float]) -> str:
    """The fabric preset with `held_out_errors` of the figures it took (the run's error bars)."""
    line = "held_out_errors: {" + ", ".join(f"{kind}: {e:.4g}" for kind, e in kinds.items()) + "}\n"
    text = re.sub(r"^held_out_errors: .*\n", "", text, flags=re.M)
    at = text.index("custom_allreduce:") if "custom_allreduce:" in text else text.index("source: >-")
    return text[:at] + line + text[at:]


def main() -> None:
    for source, preset in PRESETS.items():
        profile = yaml.safe_load((HERE / source).read_text())
        path = GPUS / preset
        text = path.read_text()
        head = text[:text.index(MARK)]
        path.write_text(head + block(profile))
        print(f"{preset}: efficiency from {source}")
    for source, preset in FABRICS.items():
        path = HERE.parent / "fabrics" / preset
        path.write_text(fabric(path.read_text(), yaml.safe_load((HERE / source).read_text()), preset))
        print(f"{preset}: collective figures from {source}")
    for source, preset in CUSTOM.items():
        path = HERE.parent / "fabrics" / preset
        path.write_text(custom_allreduce(path.read_text(), yaml.safe_load((HERE / source).read_text())))
        print(f"{preset}: the engine's all-reduce from {source}")
    for source, preset in CUSTOM.items():  # the same systems have NCCL all-to-all tables
        path = HERE.parent / "fabrics" / preset
        path.write_text(alltoall(path.read_text(), yaml.safe_load((HERE / source).read_text())))
        print(f"{preset}: NCCL's all-to-all from {source}")
    kinds = ("allreduce", "allgather", "allreduce custom", "alltoall")  # every fabric above took all four fits
    for source, preset in CUSTOM.items():
        errors = yaml.safe_load((HERE / source).read_text())["errors"]
        path = HERE.parent / "fabrics" / preset
        path.write_text(fabric_errors(path.read_text(), {kind: errors[kind]["median"] for kind in kinds}))


if __name__ == "__main__":
    main()
