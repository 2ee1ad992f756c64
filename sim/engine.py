"""The SimPy engine: requests arrive, a router spreads them over DP replicas, each replica batches
continuously and runs its batches through PP stages, whose work is timed by `sim.costs`.

A replica has PP slots (vLLM V0's virtual engines): each slot is a `SlotScheduler` owning a disjoint set of
requests, handed to it on arrival when it has the fewest unfinished (as vLLM assigns them), and keeps at
most one batch in flight, so up to PP batches fill the pipeline and no request is in two. Each slot has
its own 1/PP of the replica's KV blocks, as vLLM V0 splits them, so a slot preempts only its own requests.
A stage is a `simpy.Resource` held while it works on a batch. A hand-off needs the receiving stage:
the sender holds its stage until the receiver takes the batch (blocked time shows as bubble), then
both spend the send in `pp_comm`; the receiver all-gathers the TP-sharded activations.

One pipeline walk serves both granularities. `stage`: one event per stage per batch (plus the hand-off).
`layer`: one event per op. Both send every all-reduce and hand-off over the shared links it crosses (NICs,
the PCIe host bridge, host memory) as a flow that shares them fairly with the transfers overlapping it
(`sim.flows`). Stage mode does so with `sim.contention` (a stage's collectives as one flow) where some link
can have two users, pricing a steady regime's steps from one measured walk where fast-forward is on
(`sim.contention_memo`); otherwise (by default, or where no link is shared) it times a batch's whole way
through the pipeline when it enters (`_through_stages`) and fast-forwards.

The engine reads only the resolved plan and the request stream, changes neither, and returns what
happened as `RunRecords`; finished requests go to a sink.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy
from simpy.core import SimTime
from simpy.events import NORMAL, EventPriority

from splitsim.hardware.collectives import shared_links
from splitsim.models.ops import BatchShape
from splitsim.sim.contention_memo import ContentionMemo, Extras
from splitsim.sim.costs import StageCosts, split_at_exchange
from splitsim.sim.fast_forward import FastForwardStats, Span, apply_span, plan_span
from splitsim.sim.flows import SharedLinks
from splitsim.sim.metrics import HistogramBuffer, LogHistogram
from splitsim.sim.plan import Plan, Pool
from splitsim.sim.recorder import Recorder
from splitsim.sim.records import Moment, RequestLog, RequestSink, RunRecords
from splitsim.sim.router import Router
from splitsim.sim.scheduler import Batch, Occupancy, Request, SlotScheduler
from splitsim.sim.workload import RequestStream

Process = Generator[simpy.Event, Any, None]
# an idle DP rank's step (vLLM's `execute_dummy_batch`): one token seeing itself
DUMMY_BATCH = BatchShape(num_decode=1, decode_context=1, decode_context_local=1)
TICK_BATCHES = 4096  # a long request shows progress too, at a cost of one countdown a batch
# Contended steps priced from a measured one are measured again after this many rounds: the walked steps'
# contention drifts as the stages' phases settle (L40S TP2xPP4, 400 requests: within 0.1 % of walking every step
# at 16; 2.5-4.4 % low on throughput when measured once a regime; docs/model.md)
REMEASURE_ROUNDS = 16


class _Clock(simpy.Environment):
    """SimPy's environment, counting the events it schedules. Every event (a timeout, a process's start and end, a
    triggered event, a resource's request) enters the queue through `schedule`, where SimPy numbers it from 0 in
    that order: the count is what SimPy's own counter reads at the end, without reading it."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled = 0

    def schedule(self, event: simpy.Event, priority: EventPriority = NORMAL, delay: SimTime = 0) -> None:
        self.scheduled += 1
        simpy.Environment.schedule(self, event, priority, delay)


class _Slot(SlotScheduler):
    __slots__ = ("wake",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.wake: simpy.Event | None = None

    @property
    def unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def wake_up(self) -> None:
        """Resume the slot's loop if it waits for work (lockstep slots share one wake: the first call wakes all)."""
        if self.wake is not None:
            if not self.wake.triggered:
                self.wake.succeed()
            self.wake = None


class _Replica:
    def __init__(self, env: simpy.Environment, pool: Pool, local: int, index: int, itl: HistogramBuffer) -> None:
        self.pool = pool
        self.local = local  # its number within the pool
        self.index = index  # its number in the run (Plan.replicas): what the records key it by
        self.occupancy = Occupancy()
        attention = pool.model.local_attention
        self.slots = [_Slot(pool.scheduler, pool.batch_policy, pool.kv_manager(), self.occupancy, itl, attention)
                      for _ in range(pool.pp)]
        self.stages = [simpy.Resource(env, capacity=1) for _ in range(pool.pp)]  # layer mode's
        self.stage_free_s = [0.0] * pool.pp  # stage mode: when each stage's last batch lets go of it
        self.costs = [StageCosts.of(pool, local, stage) for stage in range(pool.pp)]
        self.groups = [pool.tp_group(local, stage) for stage in range(pool.pp)]  # each stage's TP group's GPUs
        self.outstanding = 0

    def queue_counts(self) -> tuple[int, int]:
        """(waiting, running) over its slots, as vLLM's scheduler counts them for the DP load balancer."""
        return sum(len(slot.waiting) for slot in self.slots), sum(len(slot.running) for slot in self.slots)

    def wake_idle_slots(self) -> None:
        """Blocks were freed or requests left: every idle slot looks again."""
        for slot in self.slots:
            slot.wake_up()


class Engine:
    def __init__(self, plan: Plan, stream: RequestStream, window: tuple[float, float],
                 on_finish: Callable[[Request], None] | None = None, sink: RequestSink | None = None,
                 on_tick: Callable[[float], None] | None = None) -> None:
        self.plan = plan
        self.stream = stream
        self.env = _Clock()
        self.itl = HistogramBuffer(LogHistogram())
        self.replicas = [_Replica(self.env, pool, local, index, self.itl)
                         for index, (pool, local) in enumerate(plan.replicas)]
        self.router = Router(plan.router, self.replicas)
        self.recorder = Recorder([pool.pp for pool, _ in plan.replicas], window)
        self.on_finish = on_finish
        self.on_tick = on_tick  # called with the simulated time every TICK_BATCHES batches (progress bars)
        self.batches_to_tick = TICK_BATCHES
        self.sink: RequestSink = sink if sink is not None else RequestLog()
        self.layer_mode = plan.granularity == "layer"
        self.fast_forward = FastForwardStats()
        self.ff_enabled = plan.fast_forward
        self.spans_in_flight: dict[int, tuple[np.ndarray, int]] = {}  # slot -> (ends of skipped steps, tokens each)
        self.links = SharedLinks(self.env)
        # Stage mode with sim.contention, where some shared link has two users: it walks events as layer mode does.
        self.contended = plan.contention and not self.layer_mode and _contended(plan)
        # Fast-forward's share there: a steady regime's steps priced from one measured walk (sim/contention_memo.py)
        self.memo = ContentionMemo(REMEASURE_ROUNDS) if self.contended and self.ff_enabled else None
        self.routed = 0
        self.finished = 0
        self.last_finish_s = 0.0
        self.tokens_out = 0
        self.preemptions = 0
        self.recomputed_tokens = 0
        # The steady-state window's ends (see docs/metrics.md): moments captured as the run goes.
        self.wave_over = False  # every first-wave request has finished and nothing was admitted since
        self.first_wave: set[int] | None = None  # ids admitted before the first finish, until all have finished
        self.steady_from: Moment | None = None  # the first admission after the first wave has finished
        self.queue_drained: Moment | None = None  # the last moment the waiting queues emptied
        self.last_arrival: Moment | None = None

    def run(self) -> RunRecords:
        """Simulate until every request has finished."""
        self.env.process(self._arrivals())
        for pool in self.plan.pools:
            replicas = [replica for replica in self.replicas if replica.pool is pool]
            if pool.attention_dp:
                self.env.process(self._lockstep_loop(replicas))
                continue
            for replica in replicas:
                for slot in replica.slots:
                    self.env.process(self._slot_loop(replica, slot))
        self.env.run()
        unfinished = self.stream.num_requests - self.finished
        if unfinished:
            raise RuntimeError(f"{unfinished} requests never finished (a scheduling deadlock)")
        ends = [m for m in (self.queue_drained, self.last_arrival) if m is not None]
        return RunRecords(
            sim_time_s=self.last_finish_s, recorder=self.recorder,
            events=self.env.scheduled,
            preemptions=self.preemptions, recomputed_tokens=self.recomputed_tokens,
            peak_running_seqs=tuple(replica.occupancy.peak for replica in self.replicas),
            kv_blocked_batches=sum(slot.kv_blocked for replica in self.replicas for slot in replica.slots),
            itl=self.itl.flush(), output_tokens=self.tokens_out, fast_forward=self.fast_forward.as_dict(),
            steady_start=self.steady_from, steady_end=max(ends, key=lambda m: m.time_s) if ends else None)

    def _moment(self) -> Moment:
        """Now's clock and counts. A span in flight has credited none of its tokens yet: add those of its
        steps that have ended, as stepping would have by now."""
        now, tokens = self.env.now, self.tokens_out
        for ends, per_step in self.spans_in_flight.values():
            tokens += int(np.searchsorted(ends, now, side="right")) * per_step
        return Moment(now, tokens, self.finished)

    # -- arrivals and routing ---------------------------------------------------------------------
    def _arrivals(self) -> Process:
        env, stream = self.env, self.stream
        if stream.arrival_s is None:  # closed loop: every client sends now; the next ones follow finishes
            for _ in range(min(stream.concurrency or 0, stream.num_requests)):
                self._route(self._request(0.0))
            return
        for arrival in stream.arrival_s.tolist():
            if arrival > env.now:
                yield env.timeout(arrival - env.now)
            self._route(self._request(arrival))

    def _request(self, arrival_s: float) -> Request:
        i = self.routed
        return Request(i, arrival_s, int(self.stream.prompt_tokens[i]), int(self.stream.output_tokens[i]))

    def _route(self, request: Request) -> None:
        replica = self.replicas[self.router.choose(self.env.now)]
        request.replica = replica.index
        replica.outstanding += 1
        slot = min(replica.slots, key=lambda s: s.unfinished)  # fewest unfinished, lowest index
        slot.waiting.append(request)
        self.routed += 1
        if self.routed == self.stream.num_requests:
            self.last_arrival = self._moment()
        slot.wake_up()

    # -- one slot: form a batch, run it through the pipeline, repeat ---------------------------------
    def _slot_loop(self, replica: _Replica, slot: _Slot) -> Process:
        env, recorder, index = self.env, self.recorder, replica.index
        one_delay = replica.pool.pp == 1 and not self.layer_mode and not self.contended  # the hot path of most runs
        while True:
            batch = self._next_batch(replica, slot)
            if batch is None:
                if self.memo is not None:
                    self.memo.went_idle(slot)
                slot.wake = env.event()
                yield slot.wake
                continue
            recorder.batch_started(index, env.now)
            if self.memo is not None:
                yield from self._contended_step(replica, slot, batch)
            elif one_delay:
                span = self._span(replica, slot, batch) if self.ff_enabled else "off"
                if isinstance(span, str):
                    self.fast_forward.fallbacks[span] += 1
                    yield env.timeout(self._stage_seconds(replica, 0, batch, env.now))
                else:
                    apply_span(slot, batch, span, self.itl, recorder, index)
                    skipped = span.steps - 1
                    self.spans_in_flight[id(slot)] = (span.ends[:-1], batch.num_logits)
                    self.batches_to_tick -= skipped
                    self.fast_forward.steps_skipped += skipped
                    self.fast_forward.steps_total += skipped
                    self.fast_forward.spans[1 << (span.steps.bit_length() - 1)] += 1
                    yield env.timeout(_delay_to(env.now, float(span.ends[-1])))
                    del self.spans_in_flight[id(slot)]
                    self.tokens_out += skipped * batch.num_logits
            else:
                reason = ("off" if not self.ff_enabled else "layer_granularity" if self.layer_mode
                          else "contention" if self.contended else "pipeline")
                self.fast_forward.fallbacks[reason] += 1
                if self.layer_mode or self.contended:
                    yield from self._pipeline(replica, batch)
                else:
                    yield env.timeout(_delay_to(env.now, self._through_stages(replica, batch)))
            recorder.batch_finished(index, env.now)
            self._complete(replica, slot, batch)
            self._tick()

    def _contended_step(self, replica: _Replica, slot: _Slot, batch: Batch) -> Process:
        """A batch over shared links with fast-forward on: priced from its slot's measured step where the regime
        is steady and every busy slot has measured it, else walked as flows (and measured, where clean)."""
        memo = self.memo
        assert memo is not None
        memo.formed(slot, not batch.prefill and batch.every_decode and slot.in_step)
        extras = memo.priced(slot)
        if extras is not None:
            self.fast_forward.fallbacks["contention_priced"] += 1
            memo.priced_step(True)
            yield from self._pipeline(replica, batch, priced=extras)
            memo.priced_step(False)
            return
        self.fast_forward.fallbacks["contention"] += 1
        start = memo.measuring()
        met = [[0.0] * replica.pool.pp for _ in range(3)]  # Extras' stage, send and gather
        yield from self._pipeline(replica, batch, met)
        memo.walked(slot, start, Extras(tuple(met[0]), tuple(met[1]), tuple(met[2])))

    def _next_batch(self, replica: _Replica, slot: _Slot) -> Batch | None:
        """The slot's next batch (None: nothing to run), noting preemptions and the steady-state window's ends."""
        queue = slot.waiting
        waiting = len(queue)
        batch = slot.next_batch(self.env.now)
        if slot.preempted:
            self._preempted(replica, slot.preempted)
        if waiting and not queue and not any(s.waiting for r in self.replicas for s in r.slots):
            self.queue_drained = self._moment()
        if self.wave_over and waiting + len(slot.preempted) > len(queue):
            self.steady_from = self._moment()  # the first admission after the first wave
            self.wave_over = False
        return batch

    def _tick(self) -> None:
        self.fast_forward.steps_total += 1
        self.batches_to_tick -= 1
        if not self.batches_to_tick:
            self.batches_to_tick = TICK_BATCHES
            if self.on_tick is not None:
                self.on_tick(self.env.now)

    # -- replicas in lockstep: experts spread over them (attention-DP) ----------------------------------
    def _lockstep_loop(self, replicas: list[_Replica]) -> Process:
        """Every replica steps together, as vLLM's DP ranks do when their experts span them: each forms its
        batch, a replica with none runs a dummy batch of one token while another has work, and the step ends when
        the slowest replica is done (sim.costs `lockstep_times`). With nothing to run anywhere, all wait."""
        env, rec = self.env, self.recorder
        slots = [replica.slots[0] for replica in replicas]
        while True:
            batches = [self._next_batch(replica, slot) for replica, slot in zip(replicas, slots)]
            if all(batch is None for batch in batches):
                wake = env.event()
                for slot in slots:
                    slot.wake = wake
                yield wake
                continue
            self.fast_forward.fallbacks["attention_dp"] += 1
            shapes = [DUMMY_BATCH if batch is None else batch.shape for batch in batches]
            logits = [0 if batch is None else batch.num_logits for batch in batches]
            start = env.now
            for replica in replicas:
                rec.batch_started(replica.index, start)
            if self.layer_mode:
                end = self._lockstep_layers(replicas, shapes, logits, [batch is None for batch in batches])
            else:
                times = replicas[0].costs[0].lockstep_times(shapes, logits)
                for i, (replica, batch) in enumerate(zip(replicas, batches)):
                    r = replica.index
                    compute_end = start + times.compute[i]
                    rec.busy(r, 0, start, compute_end, "compute", "layers" if batch is not None else "dummy")
                    tp_end = compute_end + times.tp_comm[i]
                    if times.tp_comm[i]:
                        rec.busy(r, 0, compute_end, tp_end, "tp_comm", "allreduce")
                    rec.busy(r, 0, tp_end, tp_end + times.ep_comm[i], "ep_comm", "alltoall")
                end = start + times.step
            yield env.timeout(_delay_to(start, end))
            for replica, slot, batch in zip(replicas, slots, batches):
                rec.batch_finished(replica.index, env.now)
                if batch is not None:
                    self._complete(replica, slot, batch)
            self._tick()

    def _lockstep_layers(self, replicas: list[_Replica], shapes: list[BatchShape], logits: list[int],
                         dummy: list[bool]) -> float:
        """Layer granularity of a lockstep step: each replica's ops from its own clock; at an all-to-all every
        replica waits for the last to arrive (the wait recorded as part of the all-to-all), then all leave
        together. Returns when the slowest replica is done."""
        rec, cost = self.recorder, replicas[0].costs[0]
        index = [replica.index for replica in replicas]
        local, shared = cost.lockstep_tokens(shapes)
        walks = [cost.walk(shape, n, tokens) for shape, n, tokens in zip(shapes, logits, local)]
        in_step = cost.walk(shapes[0], 0, shared).runs  # the experts' share of the group's tokens
        busiest = cost.walk(shapes[0], 0, max(local)).runs  # an all-to-all lasts until its busiest sender is done
        clocks = [self.env.now] * len(shapes)

        def run(r: int, seconds: float, category: str, name: str) -> None:
            rec.busy(index[r], 0, clocks[r], clocks[r] + seconds, category, name)
            clocks[r] += seconds

        for r, walk in enumerate(walks):
            for op in walk.prologue.ops:
                run(r, op.seconds, op.category, "dummy" if dummy[r] and op.name == "embedding" else op.name)
        for i, (_, count, _) in enumerate(walks[0].runs):
            # the busiest replica's all-to-alls (they last until it has sent), in order
            exchanges = iter([op for op in busiest[i][2] if op.category == "ep_comm"])
            together = [op if op.category != "ep_comm" else next(exchanges)
                        for op in split_at_exchange(in_step[i][2])[1]]
            # each replica's own ops up to the first all-to-all, then the ops all run in step
            ops = [split_at_exchange(walk.runs[i][2])[0] + together for walk in walks]
            for _ in range(count):
                position = [0] * len(shapes)
                while True:  # each replica up to its next all-to-all (or the layer's end), then the exchange
                    exchange = None
                    for r, mine in enumerate(ops):
                        j = position[r]
                        while j < len(mine) and mine[j].category != "ep_comm":
                            run(r, mine[j].seconds, mine[j].category, mine[j].name)
                            j += 1
                        if j < len(mine):
                            exchange = mine[j]
                            j += 1
                        position[r] = j
                    if exchange is None:
                        break
                    done = max(clocks) + exchange.seconds
                    for r in range(len(shapes)):
                        run(r, done - clocks[r], "ep_comm", exchange.name)
        for r, (walk, n) in enumerate(zip(walks, logits)):
            if n:  # a replica whose batch samples nothing (a dummy) runs no head
                for op in walk.epilogue.ops:
                    run(r, op.seconds, op.category, op.name)
        return max(clocks)

    def _span(self, replica: _Replica, slot: _Slot, batch: Batch) -> Span | str:
        """A fast-forward span from `batch`, or why it steps (counted)."""
        stream = self.stream
        if stream.arrival_s is not None:  # open loop: the next arrival may go to any slot
            next_arrival = float(stream.arrival_s[self.routed]) if self.routed < stream.num_requests else math.inf
        elif (self.routed == stream.num_requests or len(self.replicas) == 1
              or (self.router.policy == "least_outstanding" and replica.outstanding >= max(
                  r.outstanding for r in self.replicas if r is not replica))):
            # Closed loop: a request comes only when one finishes (one replica: its own finishes end its spans
            # anyway). With least_outstanding it goes to the replica with the fewest outstanding. This one's count
            # stays put through a span; the others' never rise above their largest (the router tops up the
            # smallest), and a finishing one drops below it. So with at least as many as every other replica,
            # none of their finishes sends it a request. Other policies may send it one: the slot steps.
            next_arrival = math.inf
        else:
            return "closed_loop_dp"  # fewer outstanding than another replica: its finishes may come here
        # A span ends by the batch the progress countdown reaches zero on, so ticks come as when stepping.
        return plan_span(slot, batch, replica.costs[0], self.env.now, next_arrival, self.batches_to_tick)

    def _preempted(self, replica: _Replica, requests: list[Request]) -> None:
        self.preemptions += len(requests)
        self.recomputed_tokens += sum(r.prompt + r.generated for r in requests)
        replica.wake_idle_slots()  # their blocks are free again

    def _through_stages(self, replica: _Replica, batch: Batch) -> float:
        """Stage granularity: the batch's whole way through the pipeline, timed now; returns when it leaves.

        Nothing but this replica's batches uses its stages, a batch holds its stage until it has the next one
        and has sent to it, and batches enter in turn, so none overtakes another: each stage serves them in
        the order they enter, and the previous batch's times (known when it entered) fix this one's. The times
        are the float sums `_pipeline`'s events would make, and each stage's records come in the same order."""
        rec, r, free = self.recorder, replica.index, replica.stage_free_s
        start = max(self.env.now, free[0])
        end = start + self._stage_seconds(replica, 0, batch, start)
        for s in range(1, replica.pool.pp):
            start = max(end, free[s])  # stage s taken once the batch is done on s-1 and s is free
            send, gather = replica.costs[s - 1].handoff_times(batch.shape.num_tokens)
            sent = start + send
            rec.busy(r, s - 1, start, sent, "pp_comm", "handoff")
            free[s - 1] = sent
            received = sent + gather if gather else sent
            rec.busy(r, s, start, received, "pp_comm", "handoff_recv")
            end = received + self._stage_seconds(replica, s, batch, received)
        free[-1] = end
        return end

    def _pipeline(self, replica: _Replica, batch: Batch, met: list[list[float]] | None = None,
                  priced: Extras | None = None) -> Process:
        """The batch through every stage, hand-off into stage s, then stage s's work, as events (links are
        shared, so transfers contend): each op in layer mode, each run of compute and each all-reduce in stage mode.
        `met`, if given, receives the contention each stage and hand-off met (`Extras`' three lists); with `priced`,
        each hand-off and each stage's work is one delay instead, its transfers stretched by those shares."""
        stages, pp = replica.stages, replica.pool.pp
        held = None
        if pp > 1:
            held = stages[0].request()
            yield held
        for s in range(pp):
            if s > 0:
                receiving = stages[s].request()
                yield receiving
                if priced is None:
                    yield from self._handoff(replica, s, batch.shape.num_tokens, held, met)
                else:
                    yield from self._priced_handoff(replica, s, batch.shape.num_tokens, held, priced)
                held = receiving
            if self.layer_mode:
                yield from self._stage_layers(replica, s, batch)
            elif priced is not None:
                yield from self._priced_stage(replica, s, batch, priced)
            else:
                yield from self._stage_segments(replica, s, batch, met)
        if held is not None:
            stages[-1].release(held)

    def _priced_handoff(self, replica: _Replica, s: int, tokens: int, held: Any, extras: Extras) -> Process:
        """`_handoff` as two delays: the send and the all-gather, each stretched by its measured share."""
        env, rec, r = self.env, self.recorder, replica.index
        send, gather = replica.costs[s - 1].handoff_times(tokens)
        start = env.now
        yield env.timeout(send * (1.0 + extras.send[s]))
        rec.busy(r, s - 1, start, env.now, "pp_comm", "handoff")
        replica.stages[s - 1].release(held)
        if gather:
            yield env.timeout(gather * (1.0 + extras.gather[s]))
        rec.busy(r, s, start, env.now, "pp_comm", "handoff_recv")

    def _priced_stage(self, replica: _Replica, s: int, batch: Batch, extras: Extras) -> Process:
        """`_stage_segments` as one delay: the stage's time with its all-reduces stretched by their measured share,
        recorded as stage mode records a stage."""
        env, rec, r = self.env, self.recorder, replica.index
        cost = replica.costs[s]
        compute, comm = cost.stage_time(batch.shape, batch.num_logits if cost.is_last else 0)
        start = env.now
        yield env.timeout(compute + comm * (1.0 + extras.stage[s]))
        rec.busy(r, s, start, start + compute, "compute", "layers")
        if comm:
            rec.busy(r, s, start + compute, env.now, "tp_comm", "allreduce")

    def _handoff(self, replica: _Replica, s: int, tokens: int, held: Any,
                 met: list[list[float]] | None = None) -> Process:
        """Stage s-1 sends to stage s (both in `pp_comm`), frees its stage, then s all-gathers the shards."""
        env, rec, r = self.env, self.recorder, replica.index
        send, gather = replica.costs[s - 1].handoff_times(tokens)
        start = env.now
        yield from self._over_links(self._links(replica.groups[s - 1] + replica.groups[s]), send)
        sent = env.now
        rec.busy(r, s - 1, start, sent, "pp_comm", "handoff")
        replica.stages[s - 1].release(held)
        if gather:
            yield from self._over_links(self._links(replica.groups[s]), gather)
        rec.busy(r, s, start, env.now, "pp_comm", "handoff_recv")
        if met is not None:
            met[1][s] = max(0.0, sent - start - send) / send if send else 0.0
            met[2][s] = max(0.0, env.now - sent - gather) / gather if gather else 0.0

    def _stage_seconds(self, replica: _Replica, s: int, batch: Batch, start: float) -> float:
        """Stage granularity: the stage's busy time, recorded from `start`, as one delay."""
        last = s == replica.pool.pp - 1
        compute, comm = replica.costs[s].stage_time(batch.shape, batch.num_logits if last else 0)
        rec = self.recorder
        rec.busy(replica.index, s, start, start + compute, "compute", "layers")
        if comm:
            rec.busy(replica.index, s, start + compute, start + compute + comm, "tp_comm", "allreduce")
        return compute + comm

    def _stage_segments(self, replica: _Replica, s: int, batch: Batch,
                        met: list[list[float]] | None = None) -> Process:
        """Stage granularity where links are contended: the stage's walk as its runs of compute, each one delay, and
        its collectives, each a flow (layer mode's sequence without an event per op), so the stages' and replicas'
        collectives meet as often as in layer mode. Recorded as stage mode records a stage."""
        env, rec, r = self.env, self.recorder, replica.index
        cost = replica.costs[s]
        num_logits = batch.num_logits if cost.is_last else 0
        compute, comm = cost.stage_time(batch.shape, num_logits)
        walk = cost.walk(batch.shape, num_logits)
        segments: dict[str, list[tuple[float, float]]] = {}  # a layer: (compute before a collective, the collective)
        for kind, _, ops in walk.runs:
            if kind in segments:
                continue
            segments[kind], run = [], 0.0
            for op in ops:
                if op.category == "tp_comm":
                    segments[kind].append((run, op.seconds))
                    run = 0.0
                else:
                    run += op.seconds
            segments[kind].append((run, 0.0))
        links = self._links(replica.groups[s]) if comm else ()
        start = env.now
        yield env.timeout(walk.prologue.compute)
        if walk.prologue.comm:
            yield from self._over_links(links, walk.prologue.comm)
        for kind, count, _ in walk.runs:
            for _ in range(count):
                for seconds, collective in segments[kind]:
                    yield env.timeout(seconds)
                    if collective:
                        yield from self._over_links(links, collective)
        if walk.epilogue.ops:
            yield env.timeout(walk.epilogue.compute)
            if walk.epilogue.comm:
                yield from self._over_links(links, walk.epilogue.comm)
        rec.busy(r, s, start, start + compute, "compute", "layers")
        if comm:
            rec.busy(r, s, start + compute, env.now, "tp_comm", "allreduce")
        if met is not None:
            met[0][s] = max(0.0, env.now - start - (compute + comm)) / comm if comm else 0.0

    # -- layer granularity ---------------------------------------------------------------------------
    def _links(self, gpus: list[int]) -> tuple[str, ...]:
        return shared_links(self.plan.cluster, gpus)

    def _over_links(self, links: tuple[str, ...], seconds: float) -> Process:
        """`seconds` of transfer over `links`, sharing them fairly with what else crosses them (`sim.flows`)."""
        yield self.links.transfer(links, seconds)

    def _stage_layers(self, replica: _Replica, s: int, batch: Batch) -> Process:
        """Layer granularity: an event for every op of the stage's walk, each collective a flow over its links."""
        env, rec, r = self.env, self.recorder, replica.index
        links = self._links(replica.groups[s]) if replica.pool.tp > 1 else ()
        walk = replica.costs[s].walk(batch.shape, batch.num_logits)
        for op in [*walk.prologue.ops, *(op for _, count, ops in walk.runs for _ in range(count) for op in ops),
                   *walk.epilogue.ops]:
            start = env.now
            if op.category == "tp_comm":
                yield from self._over_links(links, op.seconds)
            else:
                yield env.timeout(op.seconds)
            rec.busy(r, s, start, env.now, op.category, op.name)

    # -- a batch is done: tokens out, requests finish ------------------------------------------------
    def _complete(self, replica: _Replica, slot: _Slot, batch: Batch) -> None:
        now = self.env.now
        finished = slot.complete(batch, now)
        self.itl.flush_if_full()
        self.tokens_out += batch.num_logits
        if not finished:
            return
        if self.first_wave is None:  # the first finish: the first wave is what was admitted and is not done
            self.first_wave = {r.id for replica_ in self.replicas for slot_ in replica_.slots
                               for r in (*slot_.running, *slot_.waiting) if r.first_scheduled_s >= 0}
            self.wave_over = not self.first_wave
        elif self.first_wave:
            self.first_wave.difference_update(r.id for r in finished)
            self.wave_over = not self.first_wave
        for request in finished:
            replica.outstanding -= 1
            self.sink.add(request, now)
            if self.on_finish is not None:
                self.on_finish(request)
        self.finished += len(finished)
        self.last_finish_s = now
        if self.stream.arrival_s is None:  # closed loop: each finished client sends its next request
            for _ in range(min(len(finished), self.stream.num_requests - self.routed)):
                self._route(self._request(now))
        replica.wake_idle_slots()


def _contended(plan: Plan) -> bool:
    """Whether two transfers can ever overlap on a shared link: a link used by the collectives of more than one
    (replica, stage), or by a hand-off and anything else. One stage's own collectives never overlap each other."""
    users: dict[str, set[tuple[int, int, str]]] = {}
    for r, (pool, local) in enumerate(plan.replicas):
        for s in range(pool.pp):
            group = pool.tp_group(local, s)
            if pool.tp > 1:
                for link in shared_links(plan.cluster, group):
                    users.setdefault(link, set()).add((r, s, "tp"))
            if s:
                for link in shared_links(plan.cluster, pool.tp_group(local, s - 1) + group) + shared_links(
                        plan.cluster, group):
                    users.setdefault(link, set()).add((r, s, "handoff"))
    return any(len(who) > 1 for who in users.values())


def _delay_to(now: float, end: float) -> float:
    """A delay that brings SimPy's clock (`now + delay`) to exactly `end`, as the steps' own delays would."""
    delay = end - now
    while now + delay < end:
        delay = math.nextafter(delay, math.inf)
    while now + delay > end:
        delay = math.nextafter(delay, -math.inf)
    return delay
