"""The one error type a user sees: bad input, reported as one line with exit code 2."""


class ScenarioError(ValueError):
    """A scenario that cannot run: the message names the field, the value and what would be valid."""
