"""Contention priced once per steady regime: where links are shared, a decode step's contended times are
measured by walking it as flows once, then reused while nothing changes what crosses the links.

Walking a contended step as flows costs an event or more per all-reduce (hundreds a step). Between batch
changes the traffic on the shared links repeats round after round: the same slots run decode-only batches
whose all-reduces and hand-offs keep their sizes (activations do not grow with context; only attention's
compute does, by a token a step). So, where every slot sharing the links runs decode-only batches (a
*steady regime*), each slot walks one step as flows (a *clean* measurement: started in this regime, with
no priced step in flight anywhere), and once every busy slot has one, each slot's later steps are priced
as its uncontended stage and hand-off times, each transfer stretched by the share contention added to it in
that measured step (`Extras`), as single delays; every `rounds` rounds the regime is measured again. Any
batch with a prompt chunk, a lockstep break or a slot going idle or waking ends the regime: every
measurement is dropped and the next steps walk as flows.

This is an approximation of walking every step (`sim.fast_forward: false` keeps that): a priced step's
delays do not cross the links, so a neighbour that walks as flows meanwhile sees less traffic, and the
contention measured in one round stands for the rounds after it while the batch sizes drift.
`tests/test_contention_memo.py` holds its runs to the walked ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Extras:
    """The contention a slot's measured step met, as a share of the uncontended transfer it slowed: on each stage's
    all-reduces, and on each hand-off into stage s (its send and its all-gather; index 0 unused). A share, not
    seconds, so that a batch a few sequences larger or smaller within the regime is priced on its own transfers."""

    stage: tuple[float, ...]
    send: tuple[float, ...]
    gather: tuple[float, ...]


class ContentionMemo:
    """Which slots' steps may be priced from a measured one, and the measurements (slots named by any hashable
    key, e.g. (replica, slot index))."""

    def __init__(self, rounds: int = 0) -> None:
        self.rounds = rounds  # priced rounds before a regime is measured again (0: never)
        self.priced_steps = 0
        self.regime = 0  # raised whenever the traffic on the shared links changes shape
        self.unsteady: set[object] = set()  # slots whose batch now in flight is not decode-only
        self.idle: set[object] = set()
        self.measured: dict[object, Extras] = {}  # this regime's clean measurements
        self.busy: set[object] = set()  # slots that have run a batch in this regime (need a measurement)
        self.priced_in_flight = 0

    def formed(self, slot: object, steady: bool) -> None:
        """`slot` formed a batch: decode-only in lockstep (`steady`) or not."""
        if slot in self.idle:
            self.idle.discard(slot)
            self._new_regime()
        if not steady:
            self.unsteady.add(slot)
            self._new_regime()
        else:
            self.unsteady.discard(slot)
        self.busy.add(slot)

    def went_idle(self, slot: object) -> None:
        if slot not in self.idle:
            self.idle.add(slot)
            self.unsteady.discard(slot)
            self.busy.discard(slot)
            self._new_regime()

    def _new_regime(self) -> None:
        self.regime += 1
        self.priced_steps = 0
        self.measured.clear()
        self.busy = {s for s in self.busy if s not in self.idle}

    def priced(self, slot: object) -> Extras | None:
        """`slot`'s measured contention if its just-formed batch may be priced: the regime is steady and every
        busy slot has measured it."""
        if self.unsteady or not self.busy <= self.measured.keys():
            return None
        if self.rounds and self.priced_steps >= self.rounds * len(self.busy):
            self._new_regime()
            return None
        self.priced_steps += 1
        return self.measured[slot]

    def measuring(self) -> tuple[int, bool]:
        """A step about to walk as flows: (the regime it starts in, whether it can be a clean measurement)."""
        return self.regime, not self.unsteady and self.priced_in_flight == 0

    def priced_step(self, running: bool) -> None:
        """A priced step starts (`running`) or ends: while one is in flight no walked step measures cleanly."""
        self.priced_in_flight += 1 if running else -1

    def walked(self, slot: object, start: tuple[int, bool], extras: Extras) -> None:
        """A walked step ended; it measures its slot's contention if it began clean and the regime held."""
        regime, clean = start
        if clean and regime == self.regime:
            self.measured[slot] = extras
