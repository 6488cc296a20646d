"""BlockPool: KV block ids, their reference counts, the free queue and the prefix-cache map.

Plain Python, no torch. The pool only hands out block *ids*; the model runner owns the
tensors they index.

- Block 0 is the null block: never handed out, never freed. The runner pads block tables
  with 0 (and may point padded batch rows at it), so no request's K/V ever lives there.
  The usable blocks are 1 .. num_blocks - 1.
- The free queue holds every block with no reference, in the order they were freed:
  allocation pops from the head (least recently freed), freeing appends to the tail.
- With caching on, a full block carries the chained hash of its tokens and stays findable
  through `cached_block_id(hash)` while it sits in the free queue. Reusing it for new
  tokens (popping it from the head) evicts it: its hash is dropped. A cache hit on a free
  block pulls it out of the middle of the queue (OrderedDict deletion, O(1)).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NULL_BLOCK_ID = 0


def hash_block(parent_hash: bytes | None, token_ids: Sequence[int]) -> bytes:
    """Chained hash of one full block: its tokens and the hash of the block before it.

    A 128-bit BLAKE2b digest, so two different prefixes never share a block by accident
    (Python's hash() is 64-bit and easy to collide on purpose).
    """
    data = array("q", token_ids).tobytes()
    return hashlib.blake2b((parent_hash or b"") + data, digest_size=16).digest()


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: int
    # Requests holding this block; 0 = in the free queue.
    ref_count: int = 0
    # Chained hash of its tokens when it is a registered full block, else None.
    block_hash: bytes | None = None


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool):
        if num_blocks < 2:
            raise ValueError(
                f"num_blocks must be at least 2 (block 0 is the null block), got {num_blocks}"
            )
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.blocks[NULL_BLOCK_ID].ref_count = 1  # pinned forever
        # block_id -> KVBlock, head = next to allocate (least recently freed).
        self.free_queue: OrderedDict[int, KVBlock] = OrderedDict(
            (b.block_id, b) for b in self.blocks[1:]
        )
        # chained block hash -> block holding those tokens (only when caching is on).
        self.cached_blocks: dict[bytes, KVBlock] = {}

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no reference, evictable cached ones included."""
        return len(self.free_queue)

    def usage(self) -> float:
        """Share of usable blocks referenced by requests, 0..1."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def allocate(self, num: int) -> list[int]:
        """Take `num` blocks from the head of the free queue, evicting their cached hashes."""
        if num > len(self.free_queue):
            raise RuntimeError(f"asked for {num} blocks but only {len(self.free_queue)} are free")
        block_ids = []
        for _ in range(num):
            _, block = self.free_queue.popitem(last=False)
            assert block.ref_count == 0
            if block.block_hash is not None:
                self._evict(block)
            block.ref_count = 1
            block_ids.append(block.block_id)
        return block_ids

    def take(self, block_ids: Iterable[int]) -> None:
        """Add a reference to blocks already holding K/V (a cache hit or a shared prompt)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_queue[block_id]
            block.ref_count += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference from each block; blocks reaching 0 go to the free queue's tail.

        Callers pass a request's blocks last-first, so its tail blocks (the least likely to
        be some other prompt's prefix) are evicted before its head blocks.
        """
        for block_id in block_ids:
            block = self.blocks[block_id]
            assert block.ref_count > 0 and block_id != NULL_BLOCK_ID, f"double free of {block_id}"
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue[block_id] = block

    def num_free_among(self, block_ids: Iterable[int]) -> int:
        """How many of `block_ids` sit in the free queue (taking them uses up free blocks)."""
        return sum(1 for b in block_ids if self.blocks[b].ref_count == 0)

    # ---- prefix cache ----------------------------------------------------------------------

    def cached_block_id(self, block_hash: bytes) -> int | None:
        block = self.cached_blocks.get(block_hash)
        return None if block is None else block.block_id

    def register(self, block_id: int, block_hash: bytes) -> None:
        """Make a full, computed block findable by its hash.

        If another block already holds the same tokens (two requests computed the same
        prefix at once), the first one stays the cached copy and this one stays unhashed.
        """
        assert self.enable_caching
        block = self.blocks[block_id]
        assert block.ref_count > 0
        if block.block_hash is not None:
            assert block.block_hash == block_hash, f"block {block_id} re-hashed differently"
            return
        if block_hash not in self.cached_blocks:
            block.block_hash = block_hash
            self.cached_blocks[block_hash] = block

    def _evict(self, block: KVBlock) -> None:
        assert self.cached_blocks.get(block.block_hash) is block
        del self.cached_blocks[block.block_hash]
        block.block_hash = None

    def check_whole(self) -> None:
        """Assert that no request holds a block (for tests and debugging)."""
        held = [b.block_id for b in self.blocks[1:] if b.ref_count != 0]
        assert not held, f"blocks still referenced: {held}"
        assert len(self.free_queue) == self.num_usable_blocks
