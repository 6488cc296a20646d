"""KVCacheManager: gives requests blocks for the tokens they are about to compute.

Plain Python, no torch. Sits between the scheduler (which decides how many tokens each
request computes this step) and the BlockPool (ids, references, free queue, hash map).

Invariant between steps: `len(request.block_ids) == cdiv(request.num_computed_tokens,
block_size)`; schedule() allocates the blocks for the tokens it schedules and advances
num_computed_tokens over them.

Prefix caching: `request.block_hashes[i]` is the chained hash of tokens
[i * block_size, (i + 1) * block_size) of `all_token_ids` (so generated tokens hash too,
and a recomputed request finds its own earlier blocks). A block is registered in the map
once its K/V are computed; `find_cached_prefix` returns the longest run of registered
blocks, never covering the last token (its logits must be computed).
"""

from __future__ import annotations

from collections.abc import Sequence

from lodger.engine.block_pool import BlockPool, hash_block
from lodger.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, block_size: int, num_blocks: int, enable_prefix_caching: bool):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        # Prefix cache counters, in tokens, over admissions: tokens looked up / found cached.
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        # Per request id: leading blocks of its block table already registered in the map.
        self._num_registered_blocks: dict[str, int] = {}

    @property
    def num_usable_blocks(self) -> int:
        return self.pool.num_usable_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    # ---- admission ----------------------------------------------------------------------

    def find_cached_prefix(self, request: Request) -> list[int]:
        """Block ids of the longest run of cached full blocks at the start of the request.

        Covers at most num_tokens - 1 tokens, block-aligned. Takes no references.
        """
        if not self.enable_prefix_caching:
            return []
        max_num_blocks = (request.num_tokens - 1) // self.block_size
        self._hash_full_blocks(request, max_num_blocks)
        block_ids = []
        for block_hash in request.block_hashes[:max_num_blocks]:
            block_id = self.pool.cached_block_id(block_hash)
            if block_id is None:
                break
            block_ids.append(block_id)
        return block_ids

    def admit(
        self,
        request: Request,
        num_new_tokens: int,
        cached_block_ids: Sequence[int],
        num_reserved_blocks: int,
    ) -> int:
        """Give a waiting request its cached prefix and blocks for up to num_new_tokens more.

        `num_new_tokens` counts tokens after the cached prefix. Leaves `num_reserved_blocks`
        free blocks untouched (for running requests). Returns the number of new tokens
        granted (fewer when free blocks run short); 0 means nothing was taken.
        """
        assert request.num_computed_tokens == len(request.block_ids) * self.block_size
        num_cached_tokens = len(cached_block_ids) * self.block_size
        num_free = self.pool.num_free_blocks - num_reserved_blocks
        if cached_block_ids:
            num_free -= self.pool.num_free_among(cached_block_ids)
        num_held = len(request.block_ids) + len(cached_block_ids)
        num_computed = request.num_computed_tokens + num_cached_tokens
        num_new_tokens = self._fit(num_computed, num_held, num_new_tokens, num_free)
        if num_new_tokens == 0:
            return 0
        if self.enable_prefix_caching and request.num_computed_tokens == 0:
            self.prefix_cache_queries += request.num_tokens
            self.prefix_cache_hits += num_cached_tokens
        if cached_block_ids:
            self.pool.take(cached_block_ids)
            request.block_ids.extend(cached_block_ids)
            request.num_computed_tokens = num_computed
        self._extend(request, num_new_tokens)
        return num_new_tokens

    def share_prefix(self, request: Request, block_ids: Sequence[int]) -> None:
        """Give a fresh request references to full blocks another request computed (n > 1)."""
        assert not request.block_ids and request.num_computed_tokens == 0
        self.pool.take(block_ids)
        request.block_ids = list(block_ids)
        request.num_computed_tokens = len(block_ids) * self.block_size

    # ---- running requests ---------------------------------------------------------------

    def allocate_slots(self, request: Request, num_new_tokens: int) -> int:
        """Blocks for up to num_new_tokens more tokens of a running request.

        Returns the number of tokens granted: all of them when the blocks are there, fewer
        when free blocks run short, 0 when not even one more token fits.
        """
        num_computed = request.num_computed_tokens
        num_held = len(request.block_ids)
        if num_computed + num_new_tokens <= num_held * self.block_size:
            return num_new_tokens  # the common decode case: room in the last block
        num_new_tokens = self._fit(
            num_computed, num_held, num_new_tokens, self.pool.num_free_blocks
        )
        if num_new_tokens:
            self._extend(request, num_new_tokens)
        return num_new_tokens

    def cache_full_blocks(self, request: Request) -> None:
        """Register the request's newly computed full blocks in the prefix cache: those
        whose K/V are computed or queued (a later step reads them after they are written, as
        steps run in order) and whose token ids are all known."""
        if not self.enable_prefix_caching:
            return
        num_known = min(request.num_computed_tokens, len(request.all_token_ids))
        num_full = num_known // self.block_size
        num_registered = self._num_registered_blocks.get(request.request_id, 0)
        if num_full <= num_registered:
            return
        self._hash_full_blocks(request, num_full)
        for i in range(num_registered, num_full):
            self.pool.register(request.block_ids[i], request.block_hashes[i])
        self._num_registered_blocks[request.request_id] = num_full

    def free(self, request: Request) -> None:
        """Return all of the request's blocks (last block first: see BlockPool.free)."""
        self.pool.free(reversed(request.block_ids))
        request.block_ids = []
        self._num_registered_blocks.pop(request.request_id, None)

    # ---- helpers ------------------------------------------------------------------------

    def _fit(self, num_computed: int, num_held: int, num_new_tokens: int, num_free: int) -> int:
        """The most of num_new_tokens that fit in num_held blocks plus num_free more."""
        num_needed = cdiv(num_computed + num_new_tokens, self.block_size) - num_held
        if num_needed <= num_free:
            return num_new_tokens
        room = (num_held + max(num_free, 0)) * self.block_size - num_computed
        return max(room, 0)

    def _extend(self, request: Request, num_new_tokens: int) -> None:
        num_total = request.num_computed_tokens + num_new_tokens
        num_needed = cdiv(num_total, self.block_size) - len(request.block_ids)
        if num_needed > 0:
            request.block_ids.extend(self.pool.allocate(num_needed))

    def _hash_full_blocks(self, request: Request, num_blocks: int) -> None:
        """Extend request.block_hashes to cover its first num_blocks full blocks."""
        hashes = request.block_hashes
        tokens = request.all_token_ids
        size = self.block_size
        assert num_blocks * size <= len(tokens)
        for i in range(len(hashes), num_blocks):
            parent = hashes[i - 1] if i else None
            hashes.append(hash_block(parent, tokens[i * size : (i + 1) * size]))
