"""The prefill kernel's work list (kernels/attention_metadata.py), planned on the CPU."""

import numpy as np
import pytest

from lodger.kernels.attention_metadata import (
    max_prefill_tiles,
    num_prefill_tiles,
    plan_prefill_tiles,
)


@pytest.mark.parametrize("tile_queries", [1, 4, 16, 32])
def test_every_query_in_exactly_one_tile_within_the_bound(tile_queries):
    rng = np.random.default_rng()
    for _ in range(50):
        num_seqs = int(rng.integers(1, 40))
        query_lens = rng.integers(1, 3 * tile_queries + 2, size=num_seqs)
        rows = num_prefill_tiles(query_lens, tile_queries)
        assert rows <= max_prefill_tiles(int(query_lens.sum()), num_seqs, tile_queries)
        tiles = np.full((rows, 2), -7, dtype=np.int32)
        plan_prefill_tiles(query_lens, tile_queries, tiles)
        covered = [np.zeros(n, dtype=int) for n in query_lens]
        for seq, tile in tiles.tolist():
            first = tile * tile_queries
            assert 0 <= seq < num_seqs and 0 <= first < query_lens[seq]
            covered[seq][first : first + tile_queries] += 1
        assert all((c == 1).all() for c in covered)


def test_longest_tile_of_each_sequence_first():
    tiles = np.empty((num_prefill_tiles(np.array([1, 9, 8, 17]), 8), 2), dtype=np.int32)
    plan_prefill_tiles(np.array([1, 9, 8, 17]), 8, tiles)
    assert tiles.tolist() == [[0, 0], [1, 1], [1, 0], [2, 0], [3, 2], [3, 1], [3, 0]]


def test_the_bound_is_reached():
    # every sequence one token past a whole number of tiles
    query_lens = np.array([5, 5, 5])
    assert num_prefill_tiles(query_lens, 4) == 6 == max_prefill_tiles(15, 3, 4)
    assert max_prefill_tiles(15, 100, 4) == 3 + 15  # never more sequences than tokens
