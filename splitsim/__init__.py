"""splitsim: how should a model be cut over these GPUs and wires? A discrete-event answer."""

from pathlib import Path as _Path

__version__ = "0.1.0"  # before the imports below: summary.json records it

# Installed, `splitsim.sim` etc. are the checkout's top-level folders (pyproject's package-dir). Imported
# straight from a checkout (`python -m splitsim` in its root), let the root serve as this package's path
# too, so the same names resolve to the same folders.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "sim" / "engine.py").is_file():
    __path__.append(str(_root))

from splitsim.api import simulate  # noqa: E402 (after the path set-up above)
from splitsim.errors import ScenarioError  # noqa: E402
from splitsim.scenario import Scenario, load_scenario  # noqa: E402
from splitsim.sim.result import Result  # noqa: E402

__all__ = ["Result", "Scenario", "ScenarioError", "load_scenario", "simulate"]
