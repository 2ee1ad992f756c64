"""Transfers over shared links as flows that share bandwidth fairly while they overlap.

A transfer is `seconds` of work at the full speed of the links it crosses (NICs, the PCIe host bridge, host
memory: `hardware.collectives.shared_links`). While n transfers cross a link, each gets 1/n of it; a
transfer crossing several links moves at its most crowded link's share. Rates change only when a transfer
starts or ends, so between those instants every transfer's progress is linear, and the next end is known:
one pending timer, replaced at every change (processor sharing, as TCP and NCCL's channels share a link
to first order). With no one else on its links a transfer takes exactly its `seconds`.

Fair sharing rather than first come, first served: transfers that start together end together, whichever
the event queue happened to take first, so a result does not hang on the order of simultaneous events. The
ops a transfer interleaves with still matter: stage granularity walks each layer's compute runs and
all-reduces (sim/engine.py) because lumping a stage's collectives into one transfer overlaps them too often.
"""

from __future__ import annotations

from collections import Counter

import simpy

_DONE = 1e-12  # relative: a transfer this close to its end has ended (float drift of the progress sums)


class _Flow:
    __slots__ = ("links", "remaining", "total", "rate", "done")

    def __init__(self, links: tuple[str, ...], seconds: float, done: simpy.Event) -> None:
        self.links = links
        self.remaining = seconds
        self.total = seconds
        self.rate = 1.0
        self.done = done


class SharedLinks:
    """The cluster's shared links and the transfers crossing them now."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.flows: list[_Flow] = []
        self.users: Counter[str] = Counter()
        self.last_s = 0.0
        self.generation = 0  # the pending timer's: an older timer finds it changed and does nothing

    def transfer(self, links: tuple[str, ...], seconds: float) -> simpy.Event:
        """An event that fires when `seconds` of work over `links` is done, sharing them fairly."""
        if not links or seconds <= 0:
            return self.env.timeout(max(seconds, 0.0))
        self._advance()
        flow = _Flow(links, seconds, self.env.event())
        self.flows.append(flow)
        self.users.update(links)
        self._reschedule()
        return flow.done

    def _advance(self) -> None:
        """Bring every transfer's remaining work up to now at the rates it has had since the last change."""
        elapsed = self.env.now - self.last_s
        if elapsed > 0:
            for flow in self.flows:
                flow.remaining -= elapsed * flow.rate
        self.last_s = self.env.now

    def _reschedule(self) -> None:
        for flow in self.flows:
            flow.rate = 1.0 / max(self.users[link] for link in flow.links)
        self.generation += 1
        if not self.flows:
            return
        wait = min(max(flow.remaining, 0.0) / flow.rate for flow in self.flows)
        generation = self.generation
        timer = self.env.timeout(wait)
        timer.callbacks.append(lambda _event: self._on_timer(generation))

    def _on_timer(self, generation: int) -> None:
        if generation != self.generation:
            return
        self._advance()
        now = self.env.now
        # Ended: done to within float drift, or so nearly that the clock cannot move to its end.
        ended = [flow for flow in self.flows
                 if flow.remaining <= _DONE * flow.total or now + flow.remaining / flow.rate <= now]
        if not ended:  # float drift left a sliver: wait for it
            self._reschedule()
            return
        for flow in ended:
            self.flows.remove(flow)
            self.users.subtract(flow.links)
            flow.done.succeed()
        self._reschedule()
