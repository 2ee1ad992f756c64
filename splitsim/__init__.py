"""splitsim: how should a model be cut over these GPUs and wires? A discrete-event answer."""

from splitsim.api import simulate
from splitsim.errors import ScenarioError
from splitsim.scenario import Scenario, load_scenario
from splitsim.sim.result import Result

__all__ = ["Result", "Scenario", "ScenarioError", "load_scenario", "simulate"]
__version__ = "0.1.0"
