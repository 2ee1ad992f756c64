"""Fixtures shared by the tests."""

from typing import Any

import pytest

from helpers import scenario_dict, tiny_model_path


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
