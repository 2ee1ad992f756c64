"""Fixtures shared by the tests, and the Hypothesis profile the fuzz suite runs under."""

import os
from typing import Any

import pytest
from hypothesis import settings

from helpers import scenario_dict, tiny_model_path

# CI: the same examples every run (derandomised, no example database), no deadline (2 shared cores), a fixed
# count per test. HYPOTHESIS_PROFILE=deep explores further by hand.
settings.register_profile("ci", derandomize=True, deadline=None, database=None, max_examples=100, print_blob=True)
settings.register_profile("deep", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def run():
    from splitsim import simulate
    from splitsim.scenario import scenario_from_dict

    def _run(trace_window_s: float = 1e9, **overrides: Any):
        return simulate(scenario_from_dict(scenario_dict(**overrides)), trace_window_s=trace_window_s)

    return _run


@pytest.fixture
def tiny_model(tmp_path):
    """Path to a small Llama config.json (helpers.TINY_CONFIG)."""
    return tiny_model_path(tmp_path)
