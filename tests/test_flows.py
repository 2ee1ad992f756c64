"""Transfers sharing links fairly (sim/flows.py), against hand-worked processor-sharing timelines."""

from __future__ import annotations

import pytest
import simpy

from splitsim.sim.flows import SharedLinks


def _ends(starts: list[tuple[float, tuple[str, ...], float]]) -> list[float]:
    """End time of each (start, links, seconds) transfer."""
    env = simpy.Environment()
    links = SharedLinks(env)
    ends = [0.0] * len(starts)

    def one(i: int, start: float, over: tuple[str, ...], seconds: float):
        yield env.timeout(start)
        yield links.transfer(over, seconds)
        ends[i] = env.now

    for i, (start, over, seconds) in enumerate(starts):
        env.process(one(i, start, over, seconds))
    env.run()
    return ends


def test_a_transfer_alone_takes_its_own_time_exactly():
    assert _ends([(0.25, ("nic",), 1e-3)]) == [0.25 + 1e-3]


def test_two_transfers_started_together_share_the_link_and_end_together():
    assert _ends([(0.0, ("nic",), 1.0), (0.0, ("nic",), 1.0)]) == pytest.approx([2.0, 2.0], rel=1e-12)


def test_a_later_transfer_halves_the_rate_while_they_overlap():
    """A: alone for 0.5 s (half done), then shared: 0.5 left at half rate, ends at 1.5. B: half rate from 0.5
    to 1.5 (0.5 done), then alone: ends at 2.0."""
    assert _ends([(0.0, ("nic",), 1.0), (0.5, ("nic",), 1.0)]) == pytest.approx([1.5, 2.0], rel=1e-12)


def test_transfers_on_different_links_do_not_meet_and_a_two_link_transfer_moves_at_its_busiest_share():
    """C crosses both links; A and D crowd link a, so C gets a third of it (and of b, where it is alone
    with B: the busiest link decides). A, C, D: 3 on a at 1/3 each; B: 2 on b at 1/2."""
    ends = _ends([(0.0, ("a",), 1.0), (0.0, ("b",), 1.0), (0.0, ("a", "b"), 1.0), (0.0, ("a",), 1.0)])
    # Until t=2 B has had 1/2 a second: ends at 2. A, C, D at 1/3 each: all end at 3 (B leaves b at 2, but C is
    # held back by a, still shared three ways).
    assert ends == pytest.approx([3.0, 2.0, 3.0, 3.0], rel=1e-12)


def test_no_links_means_no_sharing():
    assert _ends([(0.0, (), 1.0), (0.0, (), 1.0)]) == [1.0, 1.0]
