"""The KV cache a scheduler allocates from, as values behind one interface (`KvManager`): allocate blocks for a
request's tokens, free them, and say how many of a new request's tokens are cached already. Each PP slot of a
replica has its own manager of the replica's blocks / PP (vLLM V0's virtual engines); a prefix cache is another
implementation of the same interface.

- `PagedKvManager`: vLLM's paged cache with prefix caching off (`v1/core/kv_cache_manager.py`), blocks of
  `block_size` tokens, each request's own.
- `WindowedKvManager`: the same, for models whose sliding-window or chunked layers keep only the positions in view
  (vLLM's hybrid KV cache manager).
"""

from __future__ import annotations

from typing import Protocol


class Request(Protocol):
    """A request as its KV cache sees it (sim/scheduler.py's `Request`)."""

    prompt: int
    kv_blocks: int  # blocks it holds
    room: int  # output tokens its blocks hold (kv_blocks · block − prompt): one more needs a block


class KvManager(Protocol):
    """What a scheduler asks of its KV cache: blocks for a request's tokens, their return, and the tokens of a new
    request already cached (a prefix cache's hit; none here)."""

    block: int  # tokens a block holds
    free_blocks: int

    def allocate(self, request: Request, tokens: int) -> bool:
        """Make `request` hold blocks for `tokens` tokens; False, taking nothing, if too few are free."""
        ...

    def free(self, request: Request) -> None:
        """Return every block `request` holds."""
        ...

    def cached_tokens(self, request: Request) -> int:
        """Tokens of `request`'s prompt whose KV is already in the cache when it is admitted."""
        ...


class PagedKvManager:
    """A paged KV cache of `blocks` blocks of `block` tokens (vLLM's, prefix caching off): a request holds the
    blocks of its tokens, each block its own."""

    __slots__ = ("free_blocks", "block")

    def __init__(self, blocks: int, block: int) -> None:
        self.free_blocks = blocks
        self.block = block

    def allocate(self, request: Request, tokens: int) -> bool:
        need = -(-tokens // self.block) - request.kv_blocks
        if need > self.free_blocks:
            return False
        if need > 0:
            self.free_blocks -= need
            request.kv_blocks += need
            request.room = request.kv_blocks * self.block - request.prompt
        return True

    def free(self, request: Request) -> None:
        self.free_blocks += request.kv_blocks
        request.kv_blocks = 0
        request.room = 0

    def cached_tokens(self, request: Request) -> int:
        return 0


class WindowedKvManager(PagedKvManager):
    """A KV cache whose sliding or chunked layers keep only the positions in view (vLLM's hybrid KV cache
    manager frees their blocks beyond it). Each pipeline stage holds its own layers: on a stage of F full and S
    local layers a request of t tokens holds t on the full ones and at most `span` on the local ones (`kv_tokens`),
    in tokens of all that stage's layers; a block is that many tokens on every stage, so the stage needing the
    most decides."""

    __slots__ = ("stages", "span")

    def __init__(self, blocks: int, block: int, stages: tuple[tuple[int, int], ...], span: int) -> None:
        super().__init__(blocks, block)
        self.stages, self.span = stages, span  # (full, local) layers of each stage

    def allocate(self, request: Request, tokens: int) -> bool:
        need = -(-stage_kv_tokens(tokens, self.stages, self.span) // self.block) - request.kv_blocks
        if need > self.free_blocks:
            return False
        if need > 0:
            self.free_blocks -= need
            request.kv_blocks += need
            request.room = self._tokens_in(request.kv_blocks) - request.prompt
        return True

    def _tokens_in(self, blocks: int) -> int:
        """The most tokens a request holding `blocks` blocks can have: `stage_kv_tokens` inverted (the stage
        that runs out first)."""
        most = 2**62
        for full, local in self.stages:
            layers = full + local
            capacity = blocks * self.block * layers  # token-layers on this stage
            if capacity < layers * self.span:
                most = min(most, capacity // layers)
            elif full:
                most = min(most, (capacity - local * self.span) // full)
        return most


def kv_tokens(tokens: int, full: int, local: int, span: int) -> int:
    """KV a request of `tokens` tokens holds on a stage of `full` and `local` layers, in tokens of all its layers
    (rounded up): full layers keep all of them, local ones the `span` in view (the window plus the block it starts
    in)."""
    return -(-(full * tokens + local * min(tokens, span)) // (full + local))


def stage_kv_tokens(tokens: int, stages: tuple[tuple[int, int], ...], span: int) -> int:
    """`kv_tokens` on the stage that needs the most."""
    return max(kv_tokens(tokens, full, local, span) for full, local in stages)
