"""Damaged datasets: every verb that reads one refuses it in one ``vlatrim:`` line (exit 2), with no
traceback, nothing written and the dataset untouched; plus byte-corruption properties (hypothesis)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_reference_model import make_vla
from vlatrim.cli.main import main
from vlatrim.data.lerobot import LeRobotDataset, LeRobotWriter, metaworld_features
from vlatrim.errors import VlatrimError

SIZE = 32  # the tiny reference VLA's image size
TEMPLATE = "chunk-{chunk_index:03d}/file-{file_index:03d}"


def write_dataset(root: Path, video: bool = False, episodes: int = 4, frames: int = 5) -> Path:
    w = LeRobotWriter(root, metaworld_features(SIZE, video=video), fps=10)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (frames, SIZE, SIZE, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(frames, 4)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(frames, 4)).astype(np.float32),
                       "next.success": np.zeros(frames, dtype=bool)}, ["open the drawer", "press the button"][e % 2])
    w.close()
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def edit_info(root: Path, **changes) -> None:
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# name -> (dataset kind, damage, what the one line must say)
DAMAGES = {
    "truncated data parquet": ("image", lambda r: truncate(r / "data/chunk-000/file-000.parquet"),
                               "'data/chunk-000/file-000.parquet' in dataset {root!r} is not a readable parquet file "
                               "(Parquet magic bytes not found in footer."),
    "zero-byte tasks.parquet": ("image", lambda r: (r / "meta/tasks.parquet").write_bytes(b""),
                                "'meta/tasks.parquet' in dataset {root!r} is not a readable parquet file"),
    "info.json a list": ("image", lambda r: (r / "meta/info.json").write_text("[1, 2]"),
                         "meta/info.json in dataset {root!r} holds a JSON list; expected a JSON object"),
    "info.json not UTF-8": ("image", lambda r: (r / "meta/info.json").write_bytes(b'{"fps": "\xff\xfe"}'),
                            "meta/info.json in dataset {root!r} is not UTF-8 text (byte 0xff at offset 9); "
                            "expected a JSON object"),
    "fps a word": ("image", lambda r: edit_info(r, fps="fast"),
                   "meta/info.json in dataset {root!r} has fps 'fast'; expected a positive number of frames per second"),
    "stats.json a list": ("image", lambda r: (r / "meta/stats.json").write_text("[]"),
                          "meta/stats.json in dataset {root!r} holds a JSON list; expected a JSON object"),
    "unknown placeholder in video_path": (
        "video", lambda r: edit_info(r, video_path="videos/{video_key}/{camera}.mp4"),
        "meta/info.json in dataset {root!r} has video_path 'videos/{{video_key}}/{{camera}}.mp4' with unknown "
        "placeholder {{camera}}; valid: {{video_key}}, {{chunk_index}}, {{file_index}}"),
    "unknown placeholder in data_path": (
        "image", lambda r: edit_info(r, data_path="data/{split}/" + TEMPLATE + ".parquet"),
        "with unknown placeholder {{split}}; valid: {{chunk_index}}, {{file_index}}"),
    "video_path climbing out with ../": (
        "video", lambda r: edit_info(r, video_path="../outside/videos/{video_key}/" + TEMPLATE + ".mp4"),
        "meta/info.json in dataset {root!r}: video_path '../outside/videos/{{video_key}}/chunk-{{chunk_index:03d}}/"
        "file-{{file_index:03d}}.mp4' leads outside the dataset directory; every path a dataset names must be "
        "relative and stay inside it"),
    "absolute video_path": (
        "video", lambda r: edit_info(r, video_path=str(r.parent / "outside") + "/videos/{video_key}/" + TEMPLATE + ".mp4"),
        "leads outside the dataset directory; every path a dataset names must be relative and stay inside it"),
    "data_path climbing out with ../": (
        "image", lambda r: edit_info(r, data_path="../outside/data/" + TEMPLATE + ".parquet"),
        "meta/info.json in dataset {root!r}: data_path '../outside/data/chunk-{{chunk_index:03d}}/"
        "file-{{file_index:03d}}.parquet' leads outside the dataset directory; every path a dataset names must be relative and stay inside it"),
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("clean")
    return {"image": write_dataset(base / "image"), "video": write_dataset(base / "video", video=True)}


@pytest.fixture(scope="module")
def vla_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("policy") / "vla"
    make_vla("tiny-bert").save_pretrained(d)
    return d


def damaged(clean: dict[str, Path], tmp_path: Path, name: str) -> tuple[Path, str]:
    kind, damage, message = DAMAGES[name]
    root = tmp_path / "ds"
    shutil.copytree(clean[kind], root)
    # A whole dataset just outside, so that a path that escapes would find real files to read.
    shutil.copytree(clean[kind], tmp_path / "outside")
    damage(root)
    return root, message.format(root=str(root))


@pytest.mark.parametrize("name", list(DAMAGES))
def test_reader_refuses_damaged_dataset_in_one_line(clean, tmp_path, name):
    root, message = damaged(clean, tmp_path, name)
    before = snapshot(root)
    with pytest.raises(VlatrimError) as e:
        LeRobotDataset(root)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert snapshot(root) == before


def verb_args(verb: str, root: Path, out: Path, vla: Path) -> list[str]:
    return {
        "train": ["train", "--data", str(root), "--out", str(out), "--preset", "tiny", "--steps", "1"],
        "recover": ["recover", "--model", str(vla), "--data", str(root), "--out", str(out), "--steps", "1",
                    "--batch-size", "2", "--device", "cpu"],
        "analyze": ["analyze", "--model", str(vla), "--data", str(root), "--out", str(out), "--batches", "1",
                    "--batch-size", "2"],
        "study": ["study", "--data", str(root), "--out", str(out), "--preset", "tiny"],
    }[verb]


@pytest.mark.parametrize("verb", ["train", "recover", "analyze", "study"])
@pytest.mark.parametrize("name", list(DAMAGES))
def test_verbs_refuse_damaged_dataset_and_write_nothing(clean, vla_dir, tmp_path, capsys, verb, name):
    root, message = damaged(clean, tmp_path, name)
    before, model_before = snapshot(root), snapshot(vla_dir)
    out = tmp_path / "out"
    rc = main(verb_args(verb, root, out, vla_dir))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("vlatrim: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    # Nothing written: no run directory, no study_config.json, no .partial; inputs untouched.
    assert not out.exists() and not Path(f"{out}.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "outside"]
    assert snapshot(root) == before and snapshot(vla_dir) == model_before


def test_study_leaves_no_study_config_behind(clean, tmp_path, capsys):
    root, _ = damaged(clean, tmp_path, "stats.json a list")
    out = tmp_path / "study"
    out.mkdir()  # an empty --out the study would otherwise start writing into
    assert main(["study", "--data", str(root), "--out", str(out), "--preset", "tiny"]) == 2
    assert "meta/stats.json" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_paths_inside_the_dataset_still_read(clean, tmp_path):
    """Templates that stay inside the root (``videos/../videos/...`` normalises inside) are accepted."""
    root = tmp_path / "ds"
    shutil.copytree(clean["video"], root)
    edit_info(root, video_path="videos/../videos/{video_key}/" + TEMPLATE + ".mp4")
    ds = LeRobotDataset(root)
    assert ds.images([0]).shape == (1, SIZE, SIZE, 3)


# ------------------------------------------------------------------------------ corrupted bytes
# Each example rewrites a few bytes (or cuts the file short) and expects either a dataset that
# still reads or one VlatrimError line; never another exception. Examples are few and derandomized,
# so the suite stays fast and repeatable.
CORRUPT = st.one_of(
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6)
    .map(lambda edits: ("bytes", edits)),
    st.floats(0, 1, exclude_max=True).map(lambda cut: ("cut", cut)),
)
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def corrupt(path: Path, how) -> None:
    data = bytearray(path.read_bytes())
    kind, arg = how
    if kind == "cut":
        del data[int(arg * len(data)):]
    else:
        for where, value in arg:
            data[int(where * len(data))] = value
    path.write_bytes(bytes(data))


def _reads_or_refuses(root: Path) -> None:
    try:
        ds = LeRobotDataset(root)
        ds.images()  # every image decoded: damage in the image bytes shows here
        ds.instructions()
    except VlatrimError as e:
        assert "\n" not in str(e) and str(e)


@pytest.mark.parametrize("rel", ["meta/info.json", "meta/stats.json", "data/chunk-000/file-000.parquet",
                                 "meta/tasks.parquet"])
@PROPERTY
@given(how=CORRUPT)
def test_corrupted_bytes_read_or_refuse_in_one_line(clean, rel, how):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        shutil.copytree(clean["image"], root)
        corrupt(root / rel, how)
        _reads_or_refuses(root)


@pytest.mark.parametrize("rel", ["meta/info.json", "meta/stats.json", "data/chunk-000/file-000.parquet"])
@settings(parent=PROPERTY, max_examples=8)
@given(how=CORRUPT)
def test_train_on_corrupted_bytes_trains_or_refuses_in_one_line(clean, capsys, rel, how):
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "ds", Path(tmp) / "run"
        shutil.copytree(clean["image"], root)
        corrupt(root / rel, how)
        capsys.readouterr()
        rc = main(["train", "--data", str(root), "--out", str(out), "--preset", "tiny", "--steps", "1",
                   "--batch-size", "2", "--checkpoint-every", "1"])
        err = capsys.readouterr().err
        assert rc in (0, 2), err
        if rc == 2:
            assert err.startswith("vlatrim: ") and err.count("\n") == 1 and "Traceback" not in err, err
            assert not out.exists()
