"""Which token buckets above MAX_MIXED_GRAPH_TOKENS get a graph: the candidates, the
timing rule, and the fixed choice of LODGER_PROMPT_GRAPH_TOKENS."""

from __future__ import annotations

import pytest

from lodger.engine.prompt_graph_sizes import (
    REQUIRED_SPEEDUP,
    choose_large_buckets,
    large_bucket_candidates,
    override_limit,
)


def test_candidates_grow_by_half_then_by_a_third_up_to_the_token_budget():
    assert large_bucket_candidates(512, 8192) == [768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]
    assert large_bucket_candidates(512, 3000) == [768, 1024, 1536, 2048, 3000]
    assert large_bucket_candidates(512, 1024) == [768, 1024]
    assert large_bucket_candidates(512, 600) == [600]
    assert large_bucket_candidates(512, 512) == []


def test_a_bucket_is_kept_while_its_replay_beats_the_eager_step_at_its_worst_padding():
    """A small model: eager steps cost ~18 ms of host launches whatever their size, and the
    GPU 2 us a token; 8192 tokens replay in ~16.4 ms > 0.9 x 18 ms, so 8192 is left out."""
    asked_eager, asked_replay = [], []

    def eager_ms(num_tokens):
        asked_eager.append(num_tokens)
        return max(18.0, 0.002 * num_tokens)

    def replay_ms(num_tokens):
        asked_replay.append(num_tokens)
        return 0.002 * num_tokens

    timings = choose_large_buckets([1024, 2048, 4096, 8192], 512, replay_ms, eager_ms)
    assert asked_eager == [513, 1025, 2049, 4097]  # each bucket's smallest step
    assert asked_replay == [1024, 2048, 4096, 8192]
    assert [(t.size, t.kept) for t in timings] == [
        (1024, True), (2048, True), (4096, True), (8192, False)]
    assert timings[-1].replay_ms == pytest.approx(16.384)
    assert timings[-1].replay_ms > REQUIRED_SPEEDUP * timings[-1].eager_ms


def test_a_gpu_bound_model_keeps_none_and_the_search_stops_at_the_first_miss():
    """An 8B model: 513 tokens eagerly take ~14 ms of GPU work; a 768-token replay 20 ms."""
    asked = []

    def eager_ms(num_tokens):
        asked.append(num_tokens)
        return 0.027 * num_tokens

    timings = choose_large_buckets([768, 1024], 512, lambda n: 0.026 * n, eager_ms)
    assert [(t.size, t.kept) for t in timings] == [(768, False)] and asked == [513]


def test_the_environment_fixes_the_choice(monkeypatch):
    monkeypatch.delenv("LODGER_PROMPT_GRAPH_TOKENS", raising=False)
    assert override_limit() is None
    monkeypatch.setenv("LODGER_PROMPT_GRAPH_TOKENS", "2048")
    assert override_limit() == 2048
    monkeypatch.setenv("LODGER_PROMPT_GRAPH_TOKENS", "lots")
    with pytest.raises(ValueError, match="LODGER_PROMPT_GRAPH_TOKENS must be a whole number"):
        override_limit()
