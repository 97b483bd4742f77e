"""Meta-World demonstration generation: --out handling, resume bookkeeping, and (integration) real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from procs import kill_after_first_line
from vlatrim.errors import VlatrimError
from vlatrim.sim.backends.metaworld.demos import (
    PROGRESS_DIR,
    Attempt,
    DemoConfig,
    _needed,
    _prepare_out,
    _read_journal,
    _stage_path,
)


def _cfg(**kw):
    return DemoConfig(**{"tasks": "reach-v3", "episodes_per_task": 2, **kw})


def test_config_validation():
    assert _cfg(tasks="mt10").tasks[0] == "reach-v3" and _cfg().max_attempts_per_task == 14
    for kw, msg in [({"episodes_per_task": 0}, "--episodes-per-task must be >= 1"), ({"image_size": 4}, "--image-size must be in 8..1024"),
                    ({"max_steps": 501}, "--max-steps must be in 1..500"), ({"workers": 0}, "--workers must be >= 1"), ({"tasks": "nope"}, "unknown task 'nope'"),
                    ({"video_pix_fmt": "rgb24"}, "--video-pix-fmt 'rgb24' is not valid; valid: yuv444p, yuv420p")]:
        with pytest.raises(VlatrimError, match=msg):
            _cfg(**kw)
    # Workers do not change the content, so they are not part of what a resume must match.
    assert _cfg(workers=1).content_settings() == _cfg(workers=2).content_settings()
    # The video pixel format changes the stored frames: a resume must match it.
    assert _cfg(video=True).content_settings() != _cfg(video=True, video_pix_fmt="yuv420p").content_settings()


def test_out_new_resume_and_refusals(tmp_path):
    s = _cfg().content_settings()
    out = tmp_path / "run"
    assert _prepare_out(out, s) is False  # new run: .progress/settings.json written
    assert json.loads((out / PROGRESS_DIR / "settings.json").read_text()) == json.loads(json.dumps(s))
    assert _prepare_out(out, json.loads(json.dumps(s))) is True  # same settings: resume
    with pytest.raises(VlatrimError, match=r"cannot resume: the unfinished dataset in --out .* was made with other settings "
                                           r"\(episodes_per_task: run has 2, now 3\), and 1 more"):
        _prepare_out(out, _cfg(episodes_per_task=3).content_settings())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(VlatrimError, match="is not empty and is not an unfinished vlatrim run"):
        _prepare_out(tmp_path / "other", s)
    done = tmp_path / "done"
    (done / "meta").mkdir(parents=True)
    (done / "meta" / "info.json").write_text("{}")
    with pytest.raises(VlatrimError, match="already holds a finished dataset"):
        _prepare_out(done, s)
    (tmp_path / "file").write_text("x")
    with pytest.raises(VlatrimError, match="exists and is not a directory"):
        _prepare_out(tmp_path / "file", s)


def test_needed_attempts_fill_holes_then_extend():
    a = lambda k, ok: Attempt("t", k, ok, 10)  # noqa: E731
    assert _needed("t", 3, 10, {}, set()) == [0, 1, 2]
    done = {("t", 0): a(0, True), ("t", 1): a(1, False), ("t", 2): a(2, True)}
    assert _needed("t", 3, 10, done, set()) == [3]  # one failure -> one more start
    assert _needed("t", 3, 10, done, {("t", 3)}) == []  # already in flight
    assert _needed("t", 3, 4, {**done, ("t", 3): a(3, False)}, set()) == []  # attempt limit reached
    # A resumed run lost attempt 1 (torn journal line): it is redone before new starts.
    assert _needed("t", 4, 10, {("t", 0): a(0, True), ("t", 2): a(2, True)}, set()) == [1, 3]


def test_journal_skips_torn_lines_and_lost_stages(tmp_path):
    stage = tmp_path / "episodes"
    _stage_path(stage, "t", 0).parent.mkdir(parents=True)
    _stage_path(stage, "t", 0).write_bytes(b"x")
    lines = [json.dumps({"task": "t", "k": k, "success": ok, "steps": 5, "start": [1, k], "error": None, "seconds": 0.1}) for k, ok in [(0, True), (1, True), (2, False)]]
    (tmp_path / "j").write_text("\n".join(lines) + '\n{"task": "t", "k": 3, "succ')
    done = _read_journal(tmp_path / "j", stage)
    # k=1 succeeded but its staged file is missing -> redone; k=3's line is torn -> redone.
    assert sorted(done) == [("t", 0), ("t", 2)] and done[("t", 0)].start == (1, 0)


# ------------------------------------------------------------------------------------- integration
def _run_cli(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    log = open(out.parent / f"{out.name}.log", "a")  # a file, not a pipe: workers may outlive a killed parent briefly
    return subprocess.Popen(
        [sys.executable, "-m", "vlatrim", "data", "metaworld", "--tasks", "drawer-close", "--episodes-per-task", "2",
         "--out", str(out), "--image-size", "32", *extra],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.integration
def test_generate_two_episodes_and_resume_after_kill(tmp_path):
    from vlatrim.data.lerobot import LeRobotDataset

    p = _run_cli(tmp_path / "a")
    assert p.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()
    ds = LeRobotDataset(tmp_path / "a")
    assert ds.num_episodes == 2 and ds.tasks == ["push the drawer closed"] and ds.image_shape == (32, 32, 3)
    assert ds.column("next.success")[[e.stop - 1 for e in ds.episodes]].all()  # every kept episode succeeds
    assert not ds.column("next.success")[[e.stop - 2 for e in ds.episodes]].any()  # ... at its last frame
    assert np.abs(ds.action).max() <= 1.0
    np.testing.assert_array_equal(ds.state[[e.start for e in ds.episodes]][:, :3], np.repeat(ds.state[:1, :3], 2, 0))  # hand starts in one place
    report = json.loads((tmp_path / "a/meta/vlatrim_generation.json").read_text())
    assert report["per_task"]["drawer-close-v3"]["kept"] == 2 and not (tmp_path / "a" / PROGRESS_DIR).exists()

    # Kill a second run after its first journalled attempt, then resume: same dataset as run a.
    p = _run_cli(tmp_path / "b")
    kill_after_first_line(p, tmp_path / "b" / PROGRESS_DIR / "attempts.jsonl", 240, poll_s=0.1)
    assert (tmp_path / "b" / PROGRESS_DIR).is_dir() and not (tmp_path / "b/meta/info.json").exists()
    p = _run_cli(tmp_path / "b")
    assert p.wait(timeout=300) == 0, (tmp_path / "b.log").read_text()
    report_b = json.loads((tmp_path / "b/meta/vlatrim_generation.json").read_text())
    assert report_b["resumed_attempts"] >= 1
    b = LeRobotDataset(tmp_path / "b")
    np.testing.assert_array_equal(b.state, ds.state)
    np.testing.assert_array_equal(b.action, ds.action)
    np.testing.assert_array_equal(b.images(), ds.images())


@pytest.mark.integration
def test_generate_as_video_matches_png_run(tmp_path):
    from vlatrim.data.lerobot import LeRobotDataset

    for name, extra in (("png", ()), ("video", ("--video",))):
        p = _run_cli(tmp_path / name, *extra)
        assert p.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()
    png, vid = LeRobotDataset(tmp_path / "png"), LeRobotDataset(tmp_path / "video")
    assert vid.image_is_video and not png.image_is_video and vid.image_shape == png.image_shape == (32, 32, 3)
    np.testing.assert_array_equal(vid.state, png.state)  # same settings, same episodes: non-image columns exact
    np.testing.assert_array_equal(vid.action, png.action)
    np.testing.assert_array_equal(vid.column("timestamp"), png.column("timestamp"))
    d = np.abs(vid.images().astype(np.int16) - png.images().astype(np.int16))
    # Rendered 32 px frames are mostly texture and edges: looser than the synthetic round trip
    # (96 px Meta-World frames measure 1.4 mean, benchmarks/results/video.json).
    assert d.mean() < 3.0 and np.percentile(d, 99) < 24, (d.mean(), np.percentile(d, 99))
    for key in ("mean", "std", "q50"):  # stats come from the rendered frames before encoding: identical
        np.testing.assert_array_equal(vid.stats["observation.images.corner"][key], png.stats["observation.images.corner"][key])
