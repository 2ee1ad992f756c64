"""Microbenchmarks between a run's own ranks, so that one run is enough to calibrate from.

- gemm: Y = X Wᵀ with the stage's own sharded weights (qkv, o_proj, gate_up, down of its first layer)
  at several token counts m, on the TP ranks of stage 0 at once (as a TP step runs them);
- attention_prefill (batch, prompt) and attention_decode (batch, context): the layer's attention op
  (RoPE, KV-cache write, kernel) with the rank's heads, on the same ranks;
- allreduce / allgather of nbytes (all-gather: the gathered size) over a group of group_size ranks:
  stage 0's TP group, and all the layout's ranks; the slowest rank's time from a barrier;
- alltoall (`all_to_all_single`, equal splits) over the same groups and buffers: nbytes is what each rank
  sends to the others, (p−1)/p of its buffer, as `hardware.collectives.alltoall_s` takes it;
- sendrecv of nbytes between two ranks (stage 0 and stage 1 when pp > 1): half a ping-pong, so no clock
  has to agree with another;
- grouped_gemm: a mixture-of-experts layer's grouped GEMM, `groups` experts of m rows each, as G separate
  [m×k]·[k×n] matmuls back to back with each expert's own weight (`grouped_gemms`), in the gate/up and down
  shapes of the model's experts on one of the TP ranks, with the GEMMs (on the same layouts and ranks).

Each measurement runs `warmup` untimed times then `repeats` timed times; the median is kept. What to
measure comes in a MicroPlan, so a sweep of layouts does not measure the same thing twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F

from splitsim.validate.dist import ParallelState
from splitsim.validate.measurements import COLUMNS
from splitsim.validate.model import DecoderLayer, KVCache
from splitsim.validate.parallel import all_gather_into
from splitsim.validate.pipeline import Stage
from splitsim.validate.timing import Timer, group_max, median

GEMM_TOKENS = (1, 4, 16, 64, 256)
ATTENTION_PROMPTS = (16, 64, 256)
ATTENTION_BATCHES = (1, 4, 16)
ATTENTION_CONTEXTS = (64, 256, 1024)
COLLECTIVE_BYTES = tuple(2**10 * 4**i for i in range(8))  # 1 KiB … 16 MiB, powers of 4
GROUPED_TOKENS = (1, 4, 16, 64, 256)  # rows per expert (calibrate holds out every other one)
GROUPED_EXPERTS = (2, 8)  # experts per grouped GEMM
DENSE_EXPERT_FRACTION = 4  # a dense model's stand-in expert: intermediate_size / 4 wide


@dataclass(frozen=True)
class MicroPlan:
    """What one layout measures; empty fields are skipped."""

    gemm_tokens: tuple[int, ...] = ()
    attention_prefill: tuple[tuple[int, int], ...] = ()  # (batch, prompt)
    attention_decode: tuple[tuple[int, int], ...] = ()  # (batch, context)
    collective_groups: tuple[int, ...] = ()  # group sizes: tp (stage 0's TP group) and/or tp·pp (all ranks)
    collective_bytes: tuple[int, ...] = COLLECTIVE_BYTES
    sendrecv: bool = False
    grouped_tokens: tuple[int, ...] = GROUPED_TOKENS  # grouped GEMMs: run where gemm_tokens are (stage 0's TP ranks)
    grouped_experts: tuple[int, ...] = GROUPED_EXPERTS

    @property
    def max_positions(self) -> int:
        return max([s for _, s in self.attention_prefill] + [c for _, c in self.attention_decode] + [1])


def row(**fields: Any) -> dict[str, Any]:
    return {column: fields.get(column, math.nan) for column in COLUMNS}


class Micro:
    """The microbenchmarks of one rank of a layout."""

    def __init__(self, state: ParallelState, stage: Stage, timer: Timer, warmup: int, repeats: int) -> None:
        self.state, self.stage, self.timer = state, stage, timer
        self.warmup, self.repeats = warmup, repeats
        self.device, self.dtype = stage.device, stage.dtype

    def _times(self, op: Callable[[], object], before: Callable[[], object] | None = None) -> list[float]:
        """Seconds of `repeats` runs of op() after `warmup` untimed ones; before() runs untimed first."""
        out = []
        for i in range(self.warmup + self.repeats):
            if before is not None:
                before()
            self.timer.sync()
            start = self.timer.mark()
            op()
            end = self.timer.mark()
            self.timer.sync()
            if i >= self.warmup:
                out.append(self.timer.seconds(start, end))
        return out

    def _tp_barrier(self) -> None:
        if self.state.tp > 1:
            dist.barrier(group=self.state.tp_group.group)

    def run(self, plan: MicroPlan) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        with torch.inference_mode():
            if self.state.is_first:
                rows += self.gemms(plan.gemm_tokens)
                if plan.gemm_tokens:
                    rows += self.grouped_gemms(plan.grouped_tokens, plan.grouped_experts)
                rows += self.attention(plan.attention_prefill, plan.attention_decode)
            dist.barrier()
            for size in plan.collective_groups:
                rows += self.collectives(size, plan.collective_bytes)
                dist.barrier()
            if plan.sendrecv:
                rows += self.sendrecv(plan.collective_bytes)
                dist.barrier()
        return rows

    def _common(self) -> dict[str, Any]:
        s = self.state
        return {"kind": "micro", "tp": s.tp, "pp": s.pp, "repeats": self.repeats}

    def gemms(self, tokens: tuple[int, ...]) -> list[dict[str, Any]]:
        layer = cast(DecoderLayer, self.stage.layers[0])
        weights: dict[str, torch.Tensor] = {"qkv": cast(torch.Tensor, layer.qkv.weight),
                                            "o_proj": layer.o_proj.weight,
                                            "gate_up": cast(torch.Tensor, layer.gate_up.weight),
                                            "down": layer.down.weight}
        rows = []
        for weight in weights.values():
            n, k = weight.shape
            for m in tokens:
                x = torch.randn(m, k, dtype=self.dtype, device=self.device)
                self._tp_barrier()
                seconds = median(self._times(partial(F.linear, x, weight)))
                rows.append(row(op="gemm", stage=0, rank=self.state.tp_rank, m=m, n=n, k=k, tokens=m,
                                seconds=seconds, **self._common()))
        return rows

    def grouped_gemms(self, tokens: tuple[int, ...], experts: tuple[int, ...]) -> list[dict[str, Any]]:
        """G experts' GEMMs of m rows each, [m×k]·[k×n] with each expert's own k×n weight, timed as one op: the
        gate/up (n = 2f, k = h) and down (n = h, k = f) shapes of the model's experts, f the experts' width
        (`moe.intermediate_size`; a dense model's intermediate_size / 4) split over the TP ranks.

        The G matmuls run back to back, on CUDA as on the CPU: the stand-in of one grouped launch. A real fused
        kernel is ONE launch for all G experts (vLLM's Triton fused-MoE kernel, which the aiconfigurator tables
        time); this loop pays G launches, which the fit's fixed cost and efficiencies absorb, so its figures
        describe this loop on this machine, not that kernel."""
        if not tokens or not experts:
            return []
        spec = self.stage.spec
        h = spec.hidden_size
        width = spec.moe.intermediate_size if spec.moe is not None else spec.intermediate_size // DENSE_EXPERT_FRACTION
        f = max(1, width // self.state.tp)
        rows = []
        for n, k in ((2 * f, h), (h, f)):
            weights = torch.randn(max(experts), n, k, dtype=self.dtype, device=self.device)
            for groups in experts:
                for m in tokens:
                    x = torch.randn(groups, m, k, dtype=self.dtype, device=self.device)

                    def experts_once(x: torch.Tensor = x, groups: int = groups, w: torch.Tensor = weights) -> None:
                        for g in range(groups):
                            F.linear(x[g], w[g])

                    self._tp_barrier()
                    seconds = median(self._times(experts_once))
                    rows.append(row(op="grouped_gemm", stage=0, rank=self.state.tp_rank, m=m, n=n, k=k,
                                    groups=groups, tokens=m * groups, seconds=seconds, **self._common()))
            del weights
        return rows

    def attention(self, prefill: tuple[tuple[int, int], ...],
                  decode: tuple[tuple[int, int], ...]) -> list[dict[str, Any]]:
        layer = cast(DecoderLayer, self.stage.layers[0])
        d = layer.head_dim
        width = (layer.q_heads + 2 * layer.kv_heads) * d
        rows = []
        cases = [("attention_prefill", b, s, s) for b, s in prefill]
        cases += [("attention_decode", b, 1, c) for b, c in decode]
        for op, batch, new, positions in cases:
            cache = KVCache(batch, layer.kv_heads, positions, d, self.dtype, self.device)
            qkv = torch.randn(batch, new, width, dtype=self.dtype, device=self.device)
            self._tp_barrier()
            times = self._times(partial(layer.attention, qkv, cache), before=partial(cache.reset, positions - new))
            extra = {"prompt": positions} if op == "attention_prefill" else {"context": positions}
            rows.append(row(op=op, stage=0, rank=self.state.tp_rank, batch=batch, tokens=batch * new,
                            seconds=median(times), **extra, **self._common()))
        return rows

    def collectives(self, group_size: int, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
        """All-reduce, all-gather and all-to-all over stage 0's TP group (group_size = tp) or over every rank,
        each on the same buffer, so the three kinds are measured at the same sizes."""
        s = self.state
        if group_size == s.tp:
            if not s.is_first:
                return []
            group = s.tp_group.group
        elif group_size == s.tp * s.pp:
            group = None
        else:
            raise ValueError(f"group size {group_size}: neither tp={s.tp} nor tp·pp={s.tp * s.pp}")
        element = torch.tensor([], dtype=self.dtype).element_size()
        rows = []
        for requested in sizes:
            # whole elements per rank, so the all-gather's slices tile the buffer (3 ranks, 1 KiB: 1,020 B)
            count = max(1, requested // element // group_size) * group_size
            nbytes = count * element
            full = torch.zeros(count, dtype=self.dtype, device=self.device)
            part = full[: count // group_size].clone()
            received = torch.empty_like(full)

            ops: dict[str, Callable[[], object]] = {
                "allreduce": partial(dist.all_reduce, full, group=group),
                "allgather": partial(all_gather_into, full, part, group=group),
                "alltoall": partial(dist.all_to_all_single, received, full, group=group),
            }
            # An all-to-all row records the bytes each rank sends to the OTHER ranks: the buffer's p−1 slices
            # bound elsewhere, not the one it keeps (the unit of hardware.collectives.alltoall_s and of the
            # aiconfigurator rows, validate/aiconfigurator.collective_rows).
            sent = {"alltoall": nbytes * (group_size - 1) // group_size}
            for op, run in ops.items():
                times = group_max(self._times(run, before=partial(dist.barrier, group=group)), self.device, group)
                if (s.rank if group is None else s.tp_rank) == 0:
                    rows.append(row(op=op, nbytes=sent.get(op, nbytes), group_size=group_size,
                                    seconds=median(times), **self._common()))
        return rows

    def sendrecv(self, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
        """Half a ping-pong between global rank 0 and its peer (the next stage's rank 0 when pp > 1)."""
        s = self.state
        a, b = 0, s.global_rank(1, 0) if s.pp > 1 else 1
        pair = dist.new_group([a, b])  # collective: every rank creates it
        if s.rank not in (a, b):
            return []
        peer = b if s.rank == a else a
        element = torch.tensor([], dtype=self.dtype).element_size()
        rows = []
        for nbytes in sizes:
            buf = torch.zeros(nbytes // element, dtype=self.dtype, device=self.device)

            def ping(buf: torch.Tensor = buf) -> None:
                if s.rank == a:
                    dist.send(buf, dst=peer)
                    dist.recv(buf, src=peer)
                else:
                    dist.recv(buf, src=peer)
                    dist.send(buf, dst=peer)

            times = self._times(ping, before=lambda: dist.barrier(group=pair))
            if s.rank == a:
                rows.append(row(op="sendrecv", nbytes=nbytes, group_size=2, seconds=median(times) / 2,
                                **self._common()))
        return rows
