"""The one error type a user sees: bad input, reported as one line with exit code 2."""


class ScenarioError(ValueError):
    """A scenario that cannot run: the message names the field, the value and what would be valid."""


class ActivationsDoNotFit(ScenarioError):
    """The weights fit but the activations of the scheduler's largest batch do not: smaller `max_batched_tokens`
    or `max_num_seqs` would run (the advisor retries with them before it prunes a layout)."""

    def __init__(self, message: str, max_batched_tokens: int, max_num_seqs: int) -> None:
        super().__init__(message)
        self.max_batched_tokens = max_batched_tokens
        self.max_num_seqs = max_num_seqs
