"""Which replica a new request goes to: the router in front of the replicas, as a value with one policy.

- `least_outstanding`: the replica with the fewest requests routed to it and not finished, the lowest index on a
  tie (a least-connections L7 balancer; splitsim's default).
- `round_robin`: replicas in turn, whatever their load (a plain L7 balancer).
- `vllm_dp`: vLLM's internal data-parallel load balancer (v0.11, `v1/engine/core_client.py`
  `DPLBAsyncMPClient.get_core_engine_for_request`): the replica with the lowest `4 × waiting + running`, scanned
  from index 0 so the lowest wins a tie, on counts the front end last received from the DP coordinator, which
  publishes the engines' scheduler counts every 100 ms while they change (`v1/engine/coordinator.py`,
  `stats_update_interval_ms`); between two snapshots the front end adds each request it routes to its estimate of
  that replica's waiting count. Here a snapshot is taken when a request arrives and the last one is 100 ms old or
  more, so counts are at most 100 ms stale, as the coordinator's are (its publication times are not modelled).

The router sees replicas through `Loads`: what each has outstanding, waiting and running.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from splitsim.scenario import RouterPolicy

STATS_INTERVAL_S = 0.1  # vLLM's DP coordinator: stats_update_interval_ms = 100
WAITING_WEIGHT = 4  # vLLM: score = waiting * 4 + running


class Loaded(Protocol):
    outstanding: int  # routed here and not finished

    def queue_counts(self) -> tuple[int, int]:
        """(waiting, running) as the replica's schedulers count them."""
        ...


class Router:
    """Picks a replica for each arriving request by `policy`; holds what the policy remembers between requests."""

    __slots__ = ("policy", "replicas", "turn", "estimates", "snapshot_s")

    def __init__(self, policy: RouterPolicy, replicas: Sequence[Loaded]) -> None:
        self.policy = policy
        self.replicas = replicas
        self.turn = 0  # round_robin: the next replica
        self.estimates: list[list[int]] = []  # vllm_dp: [waiting, running] per replica, as last published
        self.snapshot_s = -float("inf")

    def choose(self, now: float) -> int:
        """The index of the replica the next request goes to."""
        replicas = self.replicas
        match self.policy:
            case "least_outstanding":
                best, fewest = 0, replicas[0].outstanding
                for i in range(1, len(replicas)):
                    if replicas[i].outstanding < fewest:
                        best, fewest = i, replicas[i].outstanding
                return best
            case "round_robin":
                chosen = self.turn
                self.turn = (chosen + 1) % len(replicas)
                return chosen
            case "vllm_dp":
                if now - self.snapshot_s >= STATS_INTERVAL_S:
                    self.estimates = [list(replica.queue_counts()) for replica in replicas]
                    self.snapshot_s = now
                best, lowest = 0, None
                for i, (waiting, running) in enumerate(self.estimates):
                    score = WAITING_WEIGHT * waiting + running
                    if lowest is None or score < lowest:
                        best, lowest = i, score
                self.estimates[best][0] += 1  # the front end's own count until the next snapshot
                return best
