"""The router (sim/router.py): which replica each request goes to, written out by hand for a few requests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from helpers import scenario_dict
from splitsim.sim.router import Router


@dataclass
class _Replica:
    outstanding: int = 0
    waiting: int = 0
    running: int = 0

    def queue_counts(self) -> tuple[int, int]:
        return self.waiting, self.running


def test_least_outstanding_takes_the_fewest_and_the_lowest_index_on_a_tie():
    replicas = [_Replica(3), _Replica(1), _Replica(1), _Replica(2)]
    router = Router("least_outstanding", replicas)
    assert router.choose(0.0) == 1
    replicas[1].outstanding = 2
    assert router.choose(0.0) == 2
    replicas[2].outstanding = 5
    assert router.choose(0.0) == 1  # 1 and 3 tie at 2: the lower index


def test_round_robin_ignores_the_load():
    replicas = [_Replica(9), _Replica(0), _Replica(0)]
    router = Router("round_robin", replicas)
    assert [router.choose(0.1 * i) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_vllm_dp_scores_four_waiting_plus_running_on_counts_up_to_100_ms_old():
    replicas = [_Replica(waiting=0, running=5), _Replica(waiting=1, running=0), _Replica(waiting=0, running=2)]
    router = Router("vllm_dp", replicas)
    # snapshot at t=0: scores 5, 4, 2 -> replica 2, whose estimate becomes (1, 2): 6
    assert router.choose(0.0) == 2
    # the engines' counts change, but the front end still has the t=0 snapshot: 5, 4, 6 -> 1, then (2, 0): 8
    replicas[0].running = 50
    assert router.choose(0.05) == 1
    # 5, 8, 6 -> 0, then (1, 5): 9
    assert router.choose(0.099) == 0
    # t=0.1: a new snapshot of (0, 50), (1, 0), (0, 2): 50, 4, 2 -> 2
    assert router.choose(0.1) == 2
    # estimates (0, 50), (1, 0), (1, 2): 50, 4, 6 -> 1
    assert router.choose(0.15) == 1


def test_vllm_dp_takes_the_lowest_index_on_a_tie():
    router = Router("vllm_dp", [_Replica(), _Replica(), _Replica()])
    assert [router.choose(0.0) for _ in range(4)] == [0, 1, 2, 0]  # each pick adds 4 to its own score


@pytest.mark.parametrize("policy", ["least_outstanding", "round_robin", "vllm_dp"])
def test_the_engine_routes_by_the_scenarios_policy(run, policy):
    # three replicas, six requests at t=0, none finishing before the last is routed
    result = run(parallel={"tp": 1, "pp": 1, "dp": 3}, router={"policy": policy},
                 workload={"num_requests": 6, "rate": 0, "prompt_tokens": 512, "output_tokens": 200})
    replicas = result.requests.sort_values("request_id")["replica"].tolist()
    match policy:
        case "least_outstanding":  # 0, 1, 2 take one each, then each has one: the lowest index first
            assert replicas == [0, 1, 2, 0, 1, 2]
        case "round_robin":
            assert replicas == [0, 1, 2, 0, 1, 2]
        case "vllm_dp":  # all arrive at t=0: one snapshot of empty replicas, then the front end's own counts
            assert replicas == [0, 1, 2, 0, 1, 2]
    assert result.summary["scenario"]["router"] == {"policy": policy}


def test_round_robin_and_least_outstanding_part_when_loads_differ():
    """Requests of very different lengths: round robin keeps its turn, least-outstanding avoids the busy one."""
    from splitsim import simulate
    from splitsim.scenario import scenario_from_dict

    rows = [(0.0, 64, 2000), (0.001, 64, 2), (0.1, 64, 2), (0.5, 64, 2), (0.6, 64, 2)]
    chosen = {}
    for policy in ("least_outstanding", "round_robin"):
        data = scenario_dict(parallel={"tp": 1, "pp": 1, "dp": 2}, router={"policy": policy})
        result = simulate(scenario_from_dict(data), requests=rows)
        chosen[policy] = result.requests.sort_values("request_id")["replica"].tolist()
    # request 1 is done within ~15 ms, each later short one before the next arrives; request 0 (2,000 tokens, ~10 s)
    # still runs on replica 0 throughout
    assert chosen["round_robin"] == [0, 1, 0, 1, 0]
    assert chosen["least_outstanding"] == [0, 1, 1, 1, 1]
