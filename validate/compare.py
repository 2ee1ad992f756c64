"""Predicted vs measured: the simulator's costs for exactly what `splitsim validate run` timed.

For every measured step and op, the same model (truncated to the measured layers), layout and batch go
through the cost model with the profile applied, and the table says how far apart they are:
`rel_error = predicted / measured − 1`. A profile is never judged on the measurements it was fitted on.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from splitsim.errors import ScenarioError
from splitsim.hardware.catalog import load_cluster
from splitsim.hardware.profile import HardwareProfile, apply_profile
from splitsim.models.ops import BatchShape
from splitsim.models.spec import ModelSpec
from splitsim.scenario import Memory, Moe, Parallel, Precision, Scheduler
from splitsim.sim.costs import StageCosts
from splitsim.sim.defaults import ENGINES
from splitsim.sim.plan import Pool, read_profile, with_profile
from splitsim.validate import measurements

COMPARISON_COLUMNS = ["kind", "phase", "tp", "pp", "batch", "prompt", "context", "measured_s", "predicted_s",
                      "rel_error"]


def measurement_id(folder: Path) -> str:
    """How a profile names a measurements folder it was fitted on: its path and its table's digest."""
    digest = hashlib.sha256((folder / measurements.TABLE).read_bytes()).hexdigest()[:16]
    return f"{folder.resolve()} sha256:{digest}"


def _fitted_on(profile: HardwareProfile, folder: Path) -> bool:
    me = measurement_id(folder)
    digest = me.split(" sha256:")[1]
    return any(entry == me or entry.endswith(f"sha256:{digest}") or Path(entry) == folder.resolve()
               for entry in profile.fitted_on)


class _Predictor:
    """Cost model for one (tp, pp) layout of the measured model on the profiled cluster."""

    def __init__(self, model: ModelSpec, cluster_name: str, profile: HardwareProfile, tp: int, pp: int,
                 dtype: str) -> None:
        cluster = apply_profile(load_cluster(cluster_name), profile)
        # the runner: torch.distributed all-reduces, a hand-off of the hidden state alone (the `ideal` engine)
        self.pool = Pool(model, cluster, ENGINES["ideal"], Parallel(tp=tp, pp=pp), tuple(range(tp * pp)),
                         Scheduler(), Memory(), Precision(weights=dtype, kv_cache=dtype), Moe())  # type: ignore[arg-type]
        self.pool.check_layout()  # tp·pp within the cluster, heads divisible: else one ScenarioError line
        self.stages = [StageCosts.of(self.pool, 0, s) for s in range(pp)]

    def batch(self, phase: str, batch: int, prompt: int, context: int) -> tuple[BatchShape, int]:
        if phase == "prefill":
            return BatchShape.of(((prompt, 0),) * batch, local=self.pool.model.local_attention), batch
        return BatchShape(num_decode=batch, decode_context=batch * context), batch

    def step_s(self, shape: BatchShape, num_logits: int) -> float:
        total = 0.0
        for s, cost in enumerate(self.stages):
            if s > 0:
                total += sum(self.stages[s - 1].handoff_times(shape.num_tokens))
            compute, comm = cost.stage_time(shape, num_logits if cost.is_last else 0)
            total += compute + comm
        return total

    def op_s(self, op: str, shape: BatchShape, num_logits: int) -> float | None:
        """Seconds of one op on one rank (the first stage that has it); None for ops the simulator does
        not price (logits_allgather)."""
        for cost in self.stages:
            walk = cost.walk(shape, num_logits)
            timed = {t.name: t.seconds for t in walk.runs[0][2]}
            # the runner's attention span holds RoPE too, as vLLM's attention layer does
            timed["attention"] = (timed.get("attention_prefill", 0.0) + timed.get("attention_decode", 0.0)
                                  + timed["rope"])
            if op in timed:
                return timed[op]
            if op in ("embedding", "embedding_allreduce") and cost.is_first:
                return walk.prologue.comm if op == "embedding_allreduce" else walk.prologue.compute
            if op == "lm_head" and cost.is_last:
                return walk.epilogue.compute
            if op in ("handoff", "handoff_allgather") and not cost.is_last:
                send, gather = cost.handoff_times(shape.num_tokens)
                return send if op == "handoff" else gather
        return None


def comparison_table(rows: pd.DataFrame, model: ModelSpec, cluster: str, dtype: str,
                     profile: HardwareProfile) -> pd.DataFrame:
    predictors: dict[tuple[int, int], _Predictor] = {}
    out = []
    keys = ["kind", "op", "phase", "tp", "pp", "batch", "prompt", "context"]
    timed = rows[rows["kind"].isin(["op", "step"])].copy()
    timed["context"] = timed["context"].fillna(0).astype(int)
    grouped = timed.groupby(keys, dropna=False)["seconds"].median().reset_index()
    records: list[dict[Any, Any]] = grouped.to_dict("records")
    for r in records:
        layout = (int(r["tp"]), int(r["pp"]))
        if layout not in predictors:
            predictors[layout] = _Predictor(model, cluster, profile, *layout, dtype)
        predictor = predictors[layout]
        batch, prompt, context = int(r["batch"]), int(r["prompt"]), int(r["context"])
        shape, logits = predictor.batch(str(r["phase"]), batch, prompt, context)
        if r["kind"] == "step":
            predicted: float | None = predictor.step_s(shape, logits)
        else:
            predicted = predictor.op_s(str(r["op"]), shape, logits)
        if predicted is None:
            continue
        measured = float(r["seconds"])
        out.append({"kind": r["op"], "phase": r["phase"], "tp": layout[0], "pp": layout[1], "batch": batch,
                    "prompt": prompt, "context": context, "measured_s": measured, "predicted_s": predicted,
                    "rel_error": predicted / measured - 1.0})
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def error_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind: how many rows, median and worst |relative error|."""
    abs_err = table.assign(abs_error=table["rel_error"].abs())
    return abs_err.groupby("kind")["abs_error"].agg(rows="count", median="median", worst="max").reset_index()


def save_plot(table: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    for i, (kind, part) in enumerate(table.groupby("kind")):
        step = str(kind).endswith("_step")  # whole steps stand out: they are what the fit is judged on
        ax.scatter(part["measured_s"] * 1e3, part["predicted_s"] * 1e3, s=40 if step else 14,
                   marker="*" if step else "osD^v"[i // 10], edgecolors="black" if step else "none",
                   linewidths=0.5, label=str(kind))
    lo = float(min(table["measured_s"].min(), table["predicted_s"].min())) * 1e3 * 0.8
    hi = float(max(table["measured_s"].max(), table["predicted_s"].max())) * 1e3 * 1.25
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title("splitsim predictions vs measurements")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def compare_command(args: argparse.Namespace) -> int:
    folder: Path = args.measurements
    rows, config = measurements.read(folder)
    profile = read_profile(args.profile)
    cluster = config.get("cluster") or "cpu-local"
    try:
        measured_on = load_cluster(cluster)
    except (ScenarioError, ValueError) as err:
        raise ScenarioError(f"{folder / measurements.CONFIG}: cluster: {str(err).splitlines()[0]}") from None
    with_profile(measured_on, profile, args.profile)  # refuses a profile of another GPU, naming its file
    if _fitted_on(profile, folder):
        raise ScenarioError(f"{folder}: the profile {args.profile} was fitted on these measurements; "
                            "compare it with measurements it has not seen")
    model = measurements.measured_model(folder, config)
    table = comparison_table(rows, model, cluster, measurements.measured_dtype(folder, config), profile)
    if table.empty:
        raise ScenarioError(f"{folder}: no op or step rows to compare")
    table.to_csv(folder / "comparison.csv", index=False, float_format="%.9g")
    save_plot(table, folder / "comparison.png")
    summary = error_summary(table)
    with pd.option_context("display.float_format", "{:.1%}".format, "display.width", 120):
        print(f"{folder}: predicted vs measured with profile {profile.name} (|relative error|)")
        print(summary.to_string(index=False))
    steps = table[table["kind"].isin(["prefill_step", "decode_step"])]
    if not steps.empty:
        errors = np.abs(steps["rel_error"].to_numpy())
        print(f"whole steps: median {np.median(errors):.1%}, worst {errors.max():.1%} over {len(errors)} steps")
    print(f"wrote {folder / 'comparison.csv'} and {folder / 'comparison.png'}")
    return 0
