"""The SimPy engine: requests arrive, a router spreads them over DP replicas, each replica batches
continuously and runs its batches through PP stages, whose work is timed by `sim.costs`.

A replica has PP slots (vLLM's virtual engines): each slot owns a disjoint set of requests, handed to
it on arrival when it has the fewest unfinished (as vLLM assigns them), and keeps at most one batch in
flight, so up to PP batches fill the pipeline and no request is in two. The slots share the replica's
KV cache.
A stage is a `simpy.Resource` held while it works on a batch. A hand-off needs the receiving stage:
the sender holds its stage until the receiver takes the batch (blocked time shows as bubble), then
both spend the send in `pp_comm`; the receiver all-gathers the TP-sharded activations.

`stage` granularity: one event per stage per batch (plus the hand-off). `layer` granularity: one
event per op, and every all-reduce and hand-off first takes the shared links it crosses (NICs, the
PCIe host bridge) as resources, so concurrent transfers over one link queue behind each other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import simpy

from splitsim.hardware.collectives import shared_links
from splitsim.sim.costs import StageCosts
from splitsim.sim.plan import Plan
from splitsim.sim.recorder import Recorder
from splitsim.sim.scheduler import Batch, KvPool, Request, form_batch

Process = Generator[simpy.Event, Any, None]


class _Slot:
    __slots__ = ("waiting", "running", "wake")

    def __init__(self) -> None:
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.wake: simpy.Event | None = None

    @property
    def unfinished(self) -> int:
        return len(self.waiting) + len(self.running)


class _Replica:
    def __init__(self, env: simpy.Environment, plan: Plan, index: int) -> None:
        self.index = index
        self.kv = KvPool(plan.kv_cache_tokens, plan.scenario.memory.block_size)
        self.slots = [_Slot() for _ in range(plan.pp)]
        self.stages = [simpy.Resource(env, capacity=1) for _ in range(plan.pp)]
        self.costs = [StageCosts(plan, index, stage) for stage in range(plan.pp)]
        self.outstanding = 0

    def wake_idle_slots(self) -> None:
        for slot in self.slots:
            if slot.wake is not None:
                slot.wake.succeed()
                slot.wake = None


class Engine:
    def __init__(self, plan: Plan, requests: list[Request], window: tuple[float, float],
                 on_finish: Callable[[Request], None] | None = None) -> None:
        self.plan = plan
        self.requests = requests
        self.env = simpy.Environment()
        self.replicas = [_Replica(self.env, plan, r) for r in range(plan.dp)]
        self.recorder = Recorder(plan.dp, plan.pp, window)
        self.on_finish = on_finish
        self.layer_mode = plan.scenario.sim.granularity == "layer"
        self.links: dict[str, simpy.Resource] = {}
        sched = plan.scenario.scheduler
        self._batch_args = (sched.max_num_seqs, sched.max_batched_tokens, sched.chunked_prefill)

    def run(self) -> float:
        """Simulate until every request has finished; returns the simulated time of the last finish."""
        self.env.process(self._arrivals())
        for replica in self.replicas:
            for slot in replica.slots:
                self.env.process(self._slot_loop(replica, slot))
        self.env.run()
        unfinished = sum(1 for r in self.requests if r.finish_s < 0)
        if unfinished:
            raise RuntimeError(f"{unfinished} requests never finished (a scheduling deadlock)")
        return max(r.finish_s for r in self.requests)

    @property
    def events_scheduled(self) -> int:
        """Events SimPy scheduled so far (it numbers them from a counter; peeking advances it by one)."""
        return next(self.env._eid)  # type: ignore[attr-defined]

    # -- arrivals and routing ---------------------------------------------------------------------
    def _arrivals(self) -> Process:
        env = self.env
        for request in self.requests:
            if request.arrival_s > env.now:
                yield env.timeout(request.arrival_s - env.now)
            replica = min(self.replicas, key=lambda r: r.outstanding)  # least outstanding, lowest index
            request.replica = replica.index
            replica.outstanding += 1
            slot = min(replica.slots, key=lambda s: s.unfinished)  # fewest unfinished, lowest index
            slot.waiting.append(request)
            if slot.wake is not None:
                slot.wake.succeed()
                slot.wake = None

    # -- one slot: form a batch, run it through the pipeline, repeat ---------------------------------
    def _slot_loop(self, replica: _Replica, slot: _Slot) -> Process:
        env, recorder = self.env, self.recorder
        while True:
            batch = form_batch(slot.running, slot.waiting, replica.kv, *self._batch_args)
            if batch is None:
                slot.wake = env.event()
                yield slot.wake
                continue
            recorder.batch_started(replica.index, env.now)
            if self.layer_mode:
                yield from self._pipeline_layers(replica, batch)
            elif self.plan.pp == 1:
                yield from self._single_stage(replica, batch)
            else:
                yield from self._pipeline_stages(replica, batch)
            recorder.batch_finished(replica.index, env.now)
            self._complete(replica, slot, batch)

    def _single_stage(self, replica: _Replica, batch: Batch) -> Process:
        """PP = 1 in stage mode: the hot path of most runs, one timeout per batch."""
        compute, comm = replica.costs[0].stage_time(batch.shape, batch.num_logits)
        start = self.env.now
        yield self.env.timeout(compute + comm)
        self._record_stage(replica.index, 0, start, compute, comm)

    def _record_stage(self, replica: int, stage: int, start: float, compute: float, comm: float) -> None:
        self.recorder.busy(replica, stage, start, start + compute, "compute", "layers")
        if comm:
            self.recorder.busy(replica, stage, start + compute, start + compute + comm, "tp_comm", "allreduce")

    def _pipeline_stages(self, replica: _Replica, batch: Batch) -> Process:
        env, costs, stages = self.env, replica.costs, replica.stages
        tokens = batch.shape.num_tokens
        held = stages[0].request()
        yield held
        for s in range(self.plan.pp):
            if s > 0:
                receiving = stages[s].request()
                yield receiving
                send, gather = costs[s - 1].handoff_times(tokens)
                start = env.now
                yield env.timeout(send)
                self.recorder.busy(replica.index, s - 1, start, env.now, "pp_comm", "handoff")
                stages[s - 1].release(held)
                held = receiving
                self.recorder.busy(replica.index, s, start, env.now + gather, "pp_comm", "handoff_recv")
                if gather:
                    yield env.timeout(gather)
            compute, comm = costs[s].stage_time(batch.shape, batch.num_logits if s == self.plan.pp - 1 else 0)
            start = env.now
            yield env.timeout(compute + comm)
            self._record_stage(replica.index, s, start, compute, comm)
        stages[-1].release(held)

    # -- layer granularity ---------------------------------------------------------------------------
    def _links(self, gpus: list[int]) -> list[simpy.Resource]:
        resources = []
        for name in shared_links(self.plan.cluster, gpus):
            if name not in self.links:
                self.links[name] = simpy.Resource(self.env, capacity=1)
            resources.append(self.links[name])
        return resources

    def _over_links(self, links: list[simpy.Resource], seconds: float) -> Process:
        """Hold every shared link (taken in name order, so no two transfers deadlock) for `seconds`."""
        requests = []
        for link in links:
            request = link.request()
            requests.append(request)
            yield request
        yield self.env.timeout(seconds)
        for link, request in zip(links, requests):
            link.release(request)

    def _pipeline_layers(self, replica: _Replica, batch: Batch) -> Process:
        env, costs, stages, rec = self.env, replica.costs, replica.stages, self.recorder
        r, pp = replica.index, self.plan.pp
        tokens = batch.shape.num_tokens
        held = stages[0].request()
        yield held
        for s in range(pp):
            group = self.plan.tp_group(r, s)
            if s > 0:
                receiving = stages[s].request()
                yield receiving
                send, gather = costs[s - 1].handoff_times(tokens)
                start = env.now
                yield from self._over_links(self._links(self.plan.tp_group(r, s - 1) + group), send)
                rec.busy(r, s - 1, start, env.now, "pp_comm", "handoff")
                rec.busy(r, s, start, env.now, "pp_comm", "handoff_recv")
                stages[s - 1].release(held)
                held = receiving
                if gather:
                    start = env.now
                    yield from self._over_links(self._links(group), gather)
                    rec.busy(r, s, start, env.now, "pp_comm", "handoff_allgather")
            yield from self._stage_layers(replica, s, batch, group)
        stages[-1].release(held)

    def _stage_layers(self, replica: _Replica, s: int, batch: Batch, group: list[int]) -> Process:
        env, rec, cost = self.env, self.recorder, replica.costs[s]
        r = replica.index
        tokens = batch.shape.num_tokens
        links = self._links(group) if self.plan.tp > 1 else []
        edge_compute, edge_comm = cost.edge_times(tokens)
        if cost.is_first:
            start = env.now
            yield env.timeout(edge_compute)
            rec.busy(r, s, start, env.now, "compute", "embedding")
            if edge_comm:
                start = env.now
                yield from self._over_links(links, edge_comm)
                rec.busy(r, s, start, env.now, "tp_comm", "embedding_allreduce")
        ops = cost.layer_ops(batch.shape)
        for _ in range(cost.num_layers):
            for op in ops:
                start = env.now
                if op.category == "tp_comm":
                    yield from self._over_links(links, op.seconds)
                else:
                    yield env.timeout(op.seconds)
                rec.busy(r, s, start, env.now, op.category, op.name)
        if cost.is_last:
            start = env.now
            yield env.timeout(cost.lm_head_time(batch.num_logits))
            rec.busy(r, s, start, env.now, "compute", "lm_head")

    # -- a batch is done: tokens out, requests finish ------------------------------------------------
    def _complete(self, replica: _Replica, slot: _Slot, batch: Batch) -> None:
        now = self.env.now
        finished = []
        for request, tokens in batch.prefill:
            request.prefilled += tokens
            if request.prefilled == request.prompt:
                request.generated = 1
                request.first_token_s = now
                if request.output == 1:
                    finished.append(request)
        for request in batch.decode:
            request.generated += 1
            if request.generated == request.output:
                finished.append(request)
        if not finished:
            return
        for request in finished:
            request.finish_s = now
            replica.kv.release(request)
            replica.outstanding -= 1
            if self.on_finish is not None:
                self.on_finish(request)
        slot.running = [request for request in slot.running if request.finish_s < 0]
        replica.wake_idle_slots()
