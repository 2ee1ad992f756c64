"""Golden summaries of the shipped scenarios: a refactor leaves them byte-identical; a change that moves
them regenerates them in a commit of its own that says which numbers moved and why.

    SPLITSIM_UPDATE_GOLDENS=1 .venv/bin/pytest tests/test_goldens.py   # rewrite them (the tests skip)
"""

from __future__ import annotations

import json
import os

import pytest

from helpers import REPO, SCENARIOS

GOLDENS = REPO / "tests" / "goldens"


# l40s-pcie-70b walks its shared PCIe links event by event (tests/test_golden_digests.py keeps a contended run in the
# inner loop)
SLOW = {"l40s-pcie-70b"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p
                                  for p in sorted(SCENARIOS.glob("*.yaml"))], ids=lambda p: p.stem)
def test_shipped_scenario_summary_is_the_golden_one(path):
    from splitsim import load_scenario, simulate

    summary = json.dumps(simulate(load_scenario(path)).summary, indent=2) + "\n"
    golden = GOLDENS / f"{path.stem}.summary.json"
    json.loads(summary, parse_constant=lambda name: pytest.fail(f"summary.json holds {name}: not strict JSON"))
    if os.environ.get("SPLITSIM_UPDATE_GOLDENS"):
        golden.write_text(summary)
        pytest.skip("golden summary rewritten: not a check")
    assert summary == golden.read_text()
