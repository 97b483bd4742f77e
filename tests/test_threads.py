"""torch's thread count per verb: --threads, then OMP_NUM_THREADS, then the cores free right now."""

from __future__ import annotations

import os

import pytest
import torch

from vlatrim.cli.main import main
from vlatrim.cli.threads import apply_threads
from vlatrim.utils.hardware import choose_threads, free_cores


def test_choose_threads_rounds_the_free_cores_within_the_usable_ones():
    assert choose_threads(None, 2, 1.1) == (1, "1.1 of 2 cores free")  # one of two cores busy elsewhere
    assert choose_threads(None, 2, 1.6) == (2, "1.6 of 2 cores free")
    assert choose_threads(None, 2, 0.2)[0] == 1  # never fewer than one
    assert choose_threads(None, 4, 7.0)[0] == 4  # never more than the usable cores
    assert choose_threads(None, 8, None) == (8, "8 usable cores (free cores unknown here)")
    assert choose_threads(3, 2, 0.5) == (3, "--threads")  # the user's choice wins


def test_free_cores_reads_the_machine():
    free = free_cores(0.05)
    assert free is None or 0.0 <= free <= (os.cpu_count() or 1) + 1e-6  # /proc/stat counts every core


def test_apply_threads_order_of_precedence(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr("vlatrim.cli.threads.free_cores", lambda: 1.2)
        monkeypatch.setattr("vlatrim.cli.threads.usable_cores", lambda: 2)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert apply_threads(None) == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_threads(None) == 2 == torch.get_num_threads()
        assert apply_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv, message", [
    (["analyze", "--model", "m", "--data", "d", "--out", "o", "--threads", "0"], "--threads 0 is not valid"),
    (["eval", "--policy", "random", "--tasks", "reach", "--episodes", "1", "--out", "o", "--threads", "-2"],
     "--threads -2 is not valid"),
])
def test_bad_thread_counts_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_study_chooses_threads_as_each_stage_starts(tmp_path, monkeypatch):
    """With one core busy when a stage starts, that stage runs with 1 thread; when the machine is quiet again,
    the next stage gets 2 (the load is read at each stage, not once per command)."""
    import numpy as np

    from vlatrim.data.lerobot import LeRobotWriter, metaworld_features

    data = tmp_path / "ds"
    w = LeRobotWriter(data, metaworld_features(32), fps=10)
    rng = np.random.default_rng(0)
    for e in range(4):
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(6, 4)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(6, 4)).astype(np.float32),
                       "next.success": np.zeros(6, dtype=bool)}, ["open the drawer", "close the drawer"][e % 2])
    w.close()
    readings = iter([1.2, 1.9] * 20)  # busy, quiet, busy, ... as consecutive stages start
    seen: list[tuple[str, int]] = []
    monkeypatch.setattr("vlatrim.utils.hardware.free_cores", lambda: next(readings))
    monkeypatch.setattr("vlatrim.utils.hardware.usable_cores", lambda: 2)
    from vlatrim.study import store

    original = store.run_stage

    def spy(out, name, fn, log, **kw):
        def wrapped(d):
            seen.append((name, torch.get_num_threads()))
            return fn(d)
        return original(out, name, wrapped, log, **kw)

    monkeypatch.setattr("vlatrim.study.run.run_stage", spy)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["study", "--out", str(tmp_path / "s"), "--preset", "tiny", "--data", str(data)]) == 0
    finally:
        torch.set_num_threads(before)
    assert len(seen) >= 4 and [n for _, n in seen] == [1, 2] * (len(seen) // 2) + [1] * (len(seen) % 2)
