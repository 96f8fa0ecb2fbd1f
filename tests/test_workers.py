"""Where work runs: values and exceptions come back by key, a worker that dies is retried as
often as asked and no more, an exception raised is the answer (never retried), and bad
settings are refused naming the option."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from advls.workers import InlinePool, ProcessPool, WorkerLost, create_pool


def square(value: int) -> int:
    return value * value


def threads_seen() -> int:
    return torch.get_num_threads()


def refuse(value: int) -> int:
    raise ValueError(f"no {value}")


def die_first_times(marker: str, deaths: int, value: int) -> int:
    """Kills its own process the first ``deaths`` times it is called (counted in a file)."""
    path = Path(marker)
    seen = int(path.read_text()) if path.exists() else 0
    path.write_text(str(seen + 1))
    if seen < deaths:
        os._exit(1)
    return value


def slow(value: int) -> int:
    time.sleep(0.5)
    return value


def collect(pool, expected: int) -> dict:
    found = {}
    deadline = time.monotonic() + 120
    while len(found) < expected and time.monotonic() < deadline:
        for done in pool.wait(timeout=1.0):
            found[done.key] = done
    return found


def test_the_inline_pool_answers_by_key_and_restores_the_thread_count() -> None:
    pool = InlinePool(threads=1)
    before = torch.get_num_threads()
    pool.submit("a", square, 3)
    pool.submit("b", refuse, 4)
    pool.submit("c", threads_seen)
    found = collect(pool, 3)
    assert found["a"].ok and found["a"].value == 9
    assert not found["b"].ok and isinstance(found["b"].error, ValueError)
    assert str(found["b"].error) == "no 4"
    assert found["c"].value == 1 and torch.get_num_threads() == before
    assert pool.wait(timeout=0.1) == []


def test_worker_processes_answer_and_raise_like_the_inline_pool() -> None:
    pool = ProcessPool(2, threads=1)
    try:
        for value in range(6):
            pool.submit(value, square, value)
        pool.submit("refused", refuse, 7)
        pool.submit("threads", threads_seen)
        found = collect(pool, 8)
    finally:
        pool.shutdown()
    assert {key: found[key].value for key in range(6)} == {v: v * v for v in range(6)}
    assert isinstance(found["refused"].error, ValueError) and "no 7" in str(found["refused"].error)
    assert found["threads"].value == 1


def test_a_dead_worker_is_retried_as_often_as_asked_and_no_more(tmp_path: Path) -> None:
    pool = ProcessPool(1, threads=1, retries=2)
    try:
        pool.submit("twice", die_first_times, str(tmp_path / "twice"), 2, 42)
        found = collect(pool, 1)
        assert found["twice"].ok and found["twice"].value == 42
        assert (tmp_path / "twice").read_text() == "3"  # two deaths, one answer
        pool.submit("thrice", die_first_times, str(tmp_path / "thrice"), 3, 43)
        found = collect(pool, 1)
        assert isinstance(found["thrice"].error, WorkerLost)
        assert "died" in str(found["thrice"].error)
        assert (tmp_path / "thrice").read_text() == "3"  # run once, retried twice
    finally:
        pool.shutdown()


def test_an_exception_is_never_retried(tmp_path: Path) -> None:
    pool = ProcessPool(1, threads=1, retries=3)
    try:
        pool.submit("x", refuse, 1)
        found = collect(pool, 1)
    finally:
        pool.shutdown()
    assert isinstance(found["x"].error, ValueError)


@pytest.mark.slower
def test_calls_of_a_broken_pool_are_resubmitted_when_retries_are_allowed(tmp_path: Path) -> None:
    """One worker's death breaks the whole process pool: the others' calls are run again
    (not counted against them) with retries, and reported lost without."""
    for retries, lost in ((1, False), (0, True)):
        marker = tmp_path / f"dies-{retries}"
        pool = ProcessPool(2, threads=1, retries=retries)
        try:
            pool.submit("slow", slow, 5)
            pool.submit("dies", die_first_times, str(marker), 1, 6)
            found = collect(pool, 2)
        finally:
            pool.shutdown()
        if lost:
            assert isinstance(found["dies"].error, WorkerLost)
        else:
            assert found["dies"].value == 6 and found["slow"].value == 5


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": "slurm"}, "executor must be one of local, ray, got 'slurm'"),
        ({"name": "local", "jobs": 0}, "jobs must be an integer >= 1, got 0"),
        ({"name": "ray", "jobs": 0}, "jobs must be an integer >= 1, got 0"),
        ({"name": "local", "address": "auto"}, "--address applies to the ray executor only"),
        ({"name": "local", "gpus": 1}, "GPUs per task apply to the ray executor only"),
    ],
)
def test_bad_pool_settings_are_refused(arguments, message) -> None:
    with pytest.raises(ValueError, match=message):
        create_pool(**arguments)
