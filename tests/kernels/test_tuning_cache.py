"""The matmul tuning cache (lodger.kernels.tuning_cache) on the CPU: choices survive a
round trip through the file, groups do not mix, a broken or unwritable file is ignored, and
the tuner times only what the cache does not hold (the timing itself needs CUDA)."""

import json
import logging

import pytest
import torch

pytest.importorskip("triton")

from lodger.kernels import linear_tuning  # noqa: E402
from lodger.kernels.linear import LinearConfig  # noqa: E402
from lodger.kernels.tuning_cache import (  # noqa: E402
    FILE_NAME,
    CachedChoice,
    TuningCache,
    cache_path,
    case_key,
)

GEMV = LinearConfig(kind="gemv", block_n=4, block_k=1024, num_stages=2)
DOT = LinearConfig(block_m=16, block_n=32, block_k=128, split_k=2)


def test_choices_survive_a_round_trip_and_groups_stay_apart(tmp_path):
    path = tmp_path / "sub" / FILE_NAME  # the directory is created on save
    first = TuningCache("H100 sm90 a", path)
    assert first.entries == {}
    first.save({"bfloat16 N=6144 K=4096 M=1": CachedChoice(GEMV, 20.8, 17.5)})
    first.save({"bfloat16 N=6144 K=4096 M=2": CachedChoice(DOT, 21.0, 20.1)})
    TuningCache("H200 sm90 b", path).save({"bfloat16 N=6144 K=4096 M=1": CachedChoice(None, 9, 9)})

    again = TuningCache("H100 sm90 a", path)
    assert again.get("bfloat16 N=6144 K=4096 M=1") == CachedChoice(GEMV, 20.8, 17.5)
    assert again.get("bfloat16 N=6144 K=4096 M=2") == CachedChoice(DOT, 21.0, 20.1)
    assert again.get("bfloat16 N=6144 K=4096 M=4") is None
    other = TuningCache("H200 sm90 b", path)
    assert other.get("bfloat16 N=6144 K=4096 M=1").config is None
    assert TuningCache("another card", path).entries == {}
    assert [p.name for p in path.parent.iterdir()] == [FILE_NAME]  # no temporary left


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"version": 1, "groups": {"g": {"c": {"config": {"kind": "mma"}}}}})],
)
def test_an_unreadable_file_is_ignored_and_replaced(tmp_path, caplog, content):
    path = tmp_path / FILE_NAME
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        cache = TuningCache("g", path)
    assert cache.entries == {} and "unreadable" in caplog.text
    cache.save({"c": CachedChoice(GEMV, 2.0, 1.0)})
    assert TuningCache("g", path).get("c") == CachedChoice(GEMV, 2.0, 1.0)


def test_an_unwritable_place_is_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = TuningCache("g", blocker / FILE_NAME)  # its directory cannot be created
    with caplog.at_level(logging.WARNING):
        cache.save({"c": CachedChoice(None, 1.0, 1.0)})
    assert "not written" in caplog.text and cache.get("c") is not None  # kept in memory


def test_cache_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LODGER_CACHE_DIR", str(tmp_path))
    assert cache_path() == tmp_path / FILE_NAME
    monkeypatch.setenv("LODGER_CACHE_DIR", "")
    assert cache_path() is None
    assert TuningCache("g").entries == {}  # off: nothing read, and save writes nothing
    TuningCache("g").save({"c": CachedChoice(None, 1.0, 1.0)})
    monkeypatch.delenv("LODGER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_path() == tmp_path / "xdg" / "lodger" / FILE_NAME


def test_the_tuner_times_only_what_the_cache_lacks(tmp_path, monkeypatch):
    weight = torch.empty(6144, 4096, dtype=torch.bfloat16)
    key = linear_tuning._key(weight)
    cache = TuningCache("g", tmp_path / FILE_NAME)
    cache.save({case_key(torch.bfloat16, 6144, 4096, 1): CachedChoice(GEMV, 20.8, 17.5)})
    timed_sizes = []

    def fake_tune_weights(weights, batch_sizes):
        timed_sizes.extend(batch_sizes)
        for b in batch_sizes:
            linear_tuning._CHOICES.setdefault(key, linear_tuning.ShapeChoice()).add(b, DOT)
        return [linear_tuning.TuneResult(6144, 4096, b, 30.0, 25.0, DOT) for b in batch_sizes]

    built = []  # cached Triton choices are launched once at start (the kernel is built then)
    monkeypatch.setattr(linear_tuning, "tune_weights", fake_tune_weights)
    monkeypatch.setattr(linear_tuning, "build_kernel",
                        lambda w, rows, config: built.append((w is weight, rows, config)))
    linear_tuning.clear()
    try:
        results = linear_tuning.tune_shapes({key: [weight]}, [1, 2, 4], cache)
        assert timed_sizes == [2, 4] and built == [(True, 1, GEMV)]
        assert [(r.batch_size, r.cached, r.config) for r in results] == [
            (1, True, GEMV), (2, False, DOT), (4, False, DOT),
        ]  # fmt: skip
        assert results[0].summary().endswith("cached")
        choice = linear_tuning._CHOICES[key]
        assert choice.lookup(1) == GEMV and choice.lookup(3) == DOT
        # the next start reads all three from the file and times nothing
        linear_tuning.clear()
        timed_sizes.clear()
        again = linear_tuning.tune_shapes({key: [weight]}, [1, 2, 4], TuningCache("g", cache.path))
        assert timed_sizes == [] and all(r.cached for r in again)
        assert built[1:] == [(True, 1, GEMV), (True, 2, DOT), (True, 4, DOT)]
        assert linear_tuning._CHOICES[key].lookup(2) == DOT
    finally:
        linear_tuning.clear()
