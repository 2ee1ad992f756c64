"""Measure one TP×PP layout on every rank: prefill and decode steps, op by op, then microbenchmarks.

For each (batch, prompt): `warmup` untimed then `repeats` timed rounds, each a prefill of batch prompts
of `prompt` tokens from an empty KV cache, then `decode` decode steps, step i attending to
context = prompt + i + 1 positions (the new token included). Every step starts from a barrier; its time
is the slowest rank's. Op times come from spans inside the step on each rank. Medians over the rounds
become rows of the measurements table (validate/measurements.py), gathered on rank 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist

from splitsim.models.spec import ModelSpec
from splitsim.validate.dist import Context, ParallelState, parallel_state
from splitsim.validate.micro import Micro, MicroPlan, row
from splitsim.validate.pipeline import Stage, StepShape
from splitsim.validate.timing import OpRecorder, Timer, median, timed_step, timer_for
from splitsim.validate.weights import RandomWeights

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GEMM_OPS = ("qkv", "o_proj", "gate_up", "down", "lm_head")
ACTIVATION_COLLECTIVES = ("attn_allreduce", "mlp_allreduce", "embedding_allreduce", "handoff", "handoff_allgather")


@dataclass(frozen=True)
class MeasureOptions:
    """What every layout of a run measures (the same on every rank)."""

    spec: ModelSpec
    num_layers: int
    batches: tuple[int, ...]
    prompts: tuple[int, ...]
    decode: int
    warmup: int
    repeats: int
    dtype: str
    seed: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]


def _token_ids(options: MeasureOptions, batch: int, prompt: int) -> torch.Tensor:
    """[b, prompt + decode] token ids, fixed by the seed (decode feeds ids, it does not sample)."""
    g = torch.Generator().manual_seed(options.seed * 1_000_003 + batch * 10_007 + prompt)
    return torch.randint(0, options.spec.vocab_size, (batch, prompt + options.decode), generator=g)


def _nan(context: int | None) -> float:
    return math.nan if context is None else context


class LayoutRun:
    """One rank's measurements of one layout."""

    def __init__(self, ctx: Context, options: MeasureOptions, state: ParallelState, max_positions: int) -> None:
        self.ctx, self.options, self.state = ctx, options, state
        self.timer: Timer = timer_for(ctx.device_kind)
        weights = RandomWeights(options.spec, options.seed, options.torch_dtype, ctx.device)
        self.stage = Stage(options.spec, state, weights, options.num_layers, max_positions)
        self.element_bytes = torch.tensor([], dtype=options.torch_dtype).element_size()

    def _gemm_shape(self, op: str) -> tuple[int, int]:
        if op == "lm_head":
            assert self.stage.lm_head is not None
            weight = self.stage.lm_head.weight
        else:
            weight = getattr(self.stage.layers[0], op).weight
        n, k = weight.shape
        return n, k

    def steps(self, batch: int, prompt: int) -> list[dict[str, Any]]:
        options, state, stage = self.options, self.state, self.stage
        ids = _token_ids(options, batch, prompt).to(self.ctx.device)
        caches = stage.new_caches(batch, prompt + options.decode)
        recorder = OpRecorder(self.timer)
        plan: list[tuple[str, int | None, torch.Tensor, StepShape]] = [
            ("prefill", None, ids[:, :prompt], StepShape(batch, prompt))]
        plan += [("decode", prompt + i + 1, ids[:, prompt + i:prompt + i + 1], StepShape(batch, 1))
                 for i in range(options.decode)]
        step_s: dict[tuple[str, int | None], list[float]] = defaultdict(list)
        op_s: dict[tuple[str, int | None, str, int], list[float]] = defaultdict(list)
        with torch.inference_mode():
            for round_ in range(options.warmup + options.repeats):
                for cache in caches:
                    cache.reset()
                for phase, context, step_ids, shape in plan:
                    def run(step_ids: torch.Tensor = step_ids, shape: StepShape = shape) -> object:
                        return stage(step_ids if state.is_first else None, shape, caches, recorder)

                    _, seconds = timed_step(run, self.timer, self.ctx.device)
                    spans = recorder.collect()
                    if round_ < options.warmup:
                        continue
                    step_s[(phase, context)].append(seconds)
                    for op, layer, op_seconds in spans:
                        op_s[(phase, context, op, layer)].append(op_seconds)
        common = {"tp": state.tp, "pp": state.pp, "batch": batch, "prompt": prompt}
        rows = []
        if state.rank == 0:
            for (phase, context), times in step_s.items():
                tokens = batch * (prompt if phase == "prefill" else 1)
                rows.append(row(kind="step", op=f"{phase}_step", phase=phase, context=_nan(context), tokens=tokens,
                                seconds=median(times), repeats=len(times), **common))
        for (phase, context, op, layer), times in op_s.items():
            tokens = batch * (prompt if phase == "prefill" else 1)
            rows.append(row(kind="op", op=op, phase=phase, layer=layer, stage=state.stage, rank=state.tp_rank,
                            context=_nan(context), seconds=median(times), repeats=len(times),
                            **self._op_shape(op, tokens, batch), **common))
        return rows

    def _op_shape(self, op: str, tokens: int, batch: int) -> dict[str, Any]:
        """tokens, GEMM m/n/k and collective bytes of one op row."""
        h, tp = self.options.spec.hidden_size, self.state.tp
        if op in GEMM_OPS:
            m = batch if op == "lm_head" else tokens
            n, k = self._gemm_shape(op)
            return {"tokens": m, "m": m, "n": n, "k": k}
        if op in ACTIVATION_COLLECTIVES:
            # the whole activation: what an all-reduce sums, a hand-off moves (1/tp per rank) and an
            # all-gather gathers, as the simulator prices them
            group = 2 if op == "handoff" else tp
            return {"tokens": tokens, "nbytes": tokens * h * self.element_bytes, "group_size": group}
        if op == "logits_allgather":
            n, _ = self._gemm_shape("lm_head")
            return {"tokens": batch, "nbytes": batch * n * tp * self.element_bytes, "group_size": tp}
        return {"tokens": tokens}


def measure_layout(ctx: Context, options: MeasureOptions, tp: int, pp: int,
                   micro: MicroPlan | None) -> pd.DataFrame | None:
    """Measure a tp×pp layout on the whole process group; the table on global rank 0, None elsewhere."""
    state = parallel_state(ctx, tp, pp)
    max_positions = max(max(options.prompts) + options.decode, micro.max_positions if micro else 1)
    run = LayoutRun(ctx, options, state, max_positions)
    rows: list[dict[str, Any]] = []
    for batch in options.batches:
        for prompt in options.prompts:
            rows += run.steps(batch, prompt)
    if micro is not None:
        rows += Micro(state, run.stage, run.timer, options.warmup, options.repeats).run(micro)
    gathered: list[list[dict[str, Any]]] | None = [[] for _ in range(ctx.world_size)] if ctx.rank == 0 else None
    dist.gather_object(rows, gathered, dst=0)
    del run
    if gathered is None:
        return None
    return pd.DataFrame([r for part in gathered for r in part])
