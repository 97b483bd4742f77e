"""LeRobotDataset v3.0 writer/reader: exact round trip, LeRobot-style directories, bad features."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlatrim.data.lerobot import (
    LeRobotDataset,
    LeRobotWriter,
    decode_png,
    encode_png,
    metaworld_features,
)
from vlatrim.errors import VlatrimError

SIZE = 8  # tiny images keep the test fast


def _episode(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "observation.images.corner": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        "observation.state": rng.standard_normal((n, 4)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, 4)).astype(np.float32),
        "next.success": np.arange(n) == n - 1,
    }


@pytest.fixture()
def written(tmp_path):
    rng = np.random.default_rng(0)
    eps = [_episode(rng, n) for n in (3, 5, 2)]
    tasks = ["pull the drawer open", "push the drawer closed", "pull the drawer open"]
    root = tmp_path / "ds"
    with LeRobotWriter(root, metaworld_features(SIZE), fps=80, robot_type="sawyer") as w:
        for ep, task in zip(eps, tasks):
            w.add_episode(ep, task)
    return root, eps, tasks


def test_round_trip_exact(written):
    root, eps, tasks = written
    ds = LeRobotDataset(root)
    assert (ds.num_frames, ds.num_episodes, ds.fps) == (10, 3, 80)
    assert ds.tasks == ["pull the drawer open", "push the drawer closed"]
    np.testing.assert_array_equal(ds.state, np.concatenate([e["observation.state"] for e in eps]))
    np.testing.assert_array_equal(ds.action, np.concatenate([e["action"] for e in eps]))
    assert ds.state.dtype == np.float32 and ds.action.dtype == np.float32
    np.testing.assert_array_equal(ds.images(), np.concatenate([e["observation.images.corner"] for e in eps]))
    np.testing.assert_array_equal(ds.episode_index, [0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(ds.frame_index, [0, 1, 2, 0, 1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(ds.task_index, [0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(ds.column("index"), np.arange(10))
    np.testing.assert_array_equal(ds.column("timestamp"), np.array([0, 1, 2, 0, 1, 2, 3, 4, 0, 1], np.float32) / 80)
    np.testing.assert_array_equal(ds.column("next.success"), np.concatenate([e["next.success"] for e in eps]))
    assert [(e.episode_index, e.start, e.stop, e.task_index) for e in ds.episodes] == [(0, 0, 3, 0), (1, 3, 8, 1), (2, 8, 10, 0)]
    assert ds.instructions([0, 4, 9]) == ["pull the drawer open", "push the drawer closed", "pull the drawer open"]
    f = ds[4]
    assert f["instruction"] == "push the drawer closed" and f["episode_index"] == 1 and f["frame_index"] == 1
    np.testing.assert_array_equal(f["image"], eps[1]["observation.images.corner"][1])
    assert f["image"].dtype == np.uint8 and f["image"].shape == (SIZE, SIZE, 3)


def test_metadata_follows_lerobot_v3(written):
    root, eps, _ = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 10, 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["features"]["observation.images.corner"] == {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]}
    assert info["splits"] == {"train": "0:3"}
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.schema.field("observation.images.corner").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 4)
    png = data["observation.images.corner"][0].as_py()["bytes"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    hf = json.loads(data.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.images.corner"] == {"_type": "Image"}
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["episode_index"], e["length"], e["dataset_from_index"], e["dataset_to_index"], e["data/chunk_index"], e["data/file_index"], e["tasks"]) for e in episodes] == [
        (0, 3, 0, 3, 0, 0, ["pull the drawer open"]),
        (1, 5, 3, 8, 0, 0, ["push the drawer closed"]),
        (2, 2, 8, 10, 0, 0, ["pull the drawer open"]),
    ]
    np.testing.assert_allclose(episodes[1]["stats/action/max"], eps[1]["action"].max(0), rtol=0, atol=0)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks["task"].to_pylist() == ["pull the drawer open", "push the drawer closed"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]


def test_stats_exact(written):
    root, eps, _ = written
    ds = LeRobotDataset(root)
    act = np.concatenate([e["action"] for e in eps]).astype(np.float64)
    s = ds.stats["action"]
    np.testing.assert_array_equal(s["min"], act.min(0))
    np.testing.assert_array_equal(s["max"], act.max(0))
    np.testing.assert_allclose(s["mean"], act.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s["std"], act.std(0), rtol=1e-12)
    np.testing.assert_allclose(s["q50"], np.quantile(act, 0.5, axis=0), rtol=1e-12)
    assert s["count"].tolist() == [10]
    img = np.concatenate([e["observation.images.corner"] for e in eps]).astype(np.float64) / 255
    si = ds.stats["observation.images.corner"]
    assert si["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(si["mean"][:, 0, 0], img.mean((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(si["std"][:, 0, 0], img.std((0, 1, 2)), rtol=1e-9)
    np.testing.assert_array_equal(si["min"][:, 0, 0], img.min((0, 1, 2)))
    np.testing.assert_array_equal(si["max"][:, 0, 0], img.max((0, 1, 2)))
    # The histogram quantile is the lower empirical quantile of the pixel values.
    np.testing.assert_array_equal(si["q50"][:, 0, 0], np.quantile(img.reshape(-1, 3), 0.5, axis=0, method="inverted_cdf"))


def test_png_round_trip_and_prencoded_images(tmp_path):
    rng = np.random.default_rng(1)
    im = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(im)), im)
    ep = _episode(rng, 4)
    images = ep["observation.images.corner"]
    ep["observation.images.corner"] = [encode_png(x) for x in images]  # as worker processes send them
    with LeRobotWriter(tmp_path / "ds", metaworld_features(SIZE), fps=10) as w:
        w.add_episode(ep, "t")
    np.testing.assert_array_equal(LeRobotDataset(tmp_path / "ds").images([3, 0]), images[[3, 0]])


def test_data_files_roll_over_at_episode_boundaries(tmp_path):
    rng = np.random.default_rng(2)
    eps = [_episode(rng, 4) for _ in range(3)]
    with LeRobotWriter(tmp_path / "ds", metaworld_features(SIZE), fps=10, data_file_mb=1e-6) as w:
        for e in eps:
            w.add_episode(e, "t")
    files = sorted(p.name for p in (tmp_path / "ds/data/chunk-000").iterdir())
    assert files == ["file-000.parquet", "file-001.parquet", "file-002.parquet"]
    ds = LeRobotDataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.images([5, 11]), np.stack([eps[1]["observation.images.corner"][1], eps[2]["observation.images.corner"][3]]))
    meta = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet")
    assert meta["data/file_index"].to_pylist() == [0, 1, 2]


def _lerobot_style_dir(root, eps, state=None):
    """A directory laid out as LeRobot writes it: HF `datasets` columns (variable-size lists),
    pandas-written tasks, episodes split over two data files, extra per-episode columns."""
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    feats = metaworld_features(SIZE)
    del feats["next.success"]
    info = {"codebase_version": "v3.0", "robot_type": None, "total_episodes": len(eps), "fps": 80,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None, "features": feats}
    (root / "meta/info.json").write_text(json.dumps(info))
    start, rows = 0, []
    for i, e in enumerate(eps):
        n = len(e["action"])
        table = pa.table({
            "observation.images.corner": pa.array([{"bytes": encode_png(x), "path": f"frame-{j:06d}.png"} for j, x in enumerate(e["observation.images.corner"])]),
            "observation.state": state if state is not None else pa.array(e["observation.state"].tolist(), pa.list_(pa.float32())),
            "action": pa.array(e["action"].tolist(), pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / 80),
            "frame_index": pa.array(np.arange(n)),
            "episode_index": pa.array(np.full(n, i)),
            "index": pa.array(np.arange(start, start + n)),
            "task_index": pa.array(np.full(n, 1 - i % 2)),
        })
        pq.write_table(table, root / f"data/chunk-000/file-{i:03d}.parquet")
        rows.append({"episode_index": i, "tasks": ["b" if i % 2 else "a"], "length": n, "data/chunk_index": 0, "data/file_index": i,
                     "dataset_from_index": start, "dataset_to_index": start + n, "stats/action/mean": [0.0] * 4})
        start += n
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [1, 0], "__index_level_0__": ["a", "b"]}), root / "meta/tasks.parquet")


def test_reads_lerobot_produced_layout(tmp_path):
    rng = np.random.default_rng(3)
    eps = [_episode(rng, 3), _episode(rng, 2)]
    _lerobot_style_dir(tmp_path, eps)
    ds = LeRobotDataset(tmp_path)
    assert ds.tasks == ["b", "a"]
    assert ds.instructions() == ["a"] * 3 + ["b"] * 2
    np.testing.assert_array_equal(ds.state, np.concatenate([e["observation.state"] for e in eps]))
    np.testing.assert_array_equal(ds.images(), np.concatenate([e["observation.images.corner"] for e in eps]))
    assert ds.stats == {}  # no stats.json: reported as empty, not invented


def test_rejects_mismatched_feature_by_name(tmp_path):
    rng = np.random.default_rng(4)
    _lerobot_style_dir(tmp_path / "a", [_episode(rng, 3)], state=pa.array([["1", "2", "3", "4"]] * 3))
    with pytest.raises(VlatrimError, match=r"feature 'observation.state' holds string, expected float32"):
        LeRobotDataset(tmp_path / "a")
    _lerobot_style_dir(tmp_path / "b", [_episode(rng, 3)], state=pa.array([[1.0, 2.0, 3.0]] * 3, pa.list_(pa.float32())))
    with pytest.raises(VlatrimError, match=r"feature 'observation.state' has \[3\] values per frame, expected \(4,\)"):
        LeRobotDataset(tmp_path / "b")


def test_rejects_missing_or_wrong_declared_features(written):
    root, _, _ = written
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    bad = json.loads(json.dumps(info))
    del bad["features"]["action"]
    info_path.write_text(json.dumps(bad))
    with pytest.raises(VlatrimError, match=r"lacks feature 'action'"):
        LeRobotDataset(root)
    bad = json.loads(json.dumps(info))
    bad["features"]["observation.state"]["shape"] = [4, 2]  # a state is a vector of any length, not a matrix
    info_path.write_text(json.dumps(bad))
    with pytest.raises(VlatrimError, match=r"feature 'observation.state' is float32\[4, 2\].*expected float32\[n\]"):
        LeRobotDataset(root)
    bad["features"]["observation.state"]["shape"] = [7]  # declared 7 values, the parquet holds 4
    info_path.write_text(json.dumps(bad))
    with pytest.raises(VlatrimError, match=r"observation.state"):
        LeRobotDataset(root)
    bad = json.loads(json.dumps(info))
    bad["features"]["observation.images.corner"]["dtype"] = "video"  # declared as video, but no videos
    info_path.write_text(json.dumps(bad))
    with pytest.raises(VlatrimError, match=r"video feature 'observation.images.corner' needs column 'videos/observation.images.corner/chunk_index'"):
        LeRobotDataset(root)
    bad = json.loads(json.dumps(info))
    bad["features"]["observation.extra"] = {"dtype": "float32", "shape": [2], "names": None}
    info_path.write_text(json.dumps(bad))
    with pytest.raises(VlatrimError, match=r"feature 'observation.extra' is declared in info.json but missing"):
        LeRobotDataset(root)
    bad = dict(info, codebase_version="v2.1")
    info_path.write_text(json.dumps(bad))
    with pytest.raises(VlatrimError, match="codebase_version 'v2.1'"):
        LeRobotDataset(root)


def test_reader_rejects_missing_directory_and_writer_bad_input(tmp_path):
    with pytest.raises(VlatrimError, match="does not exist"):
        LeRobotDataset(tmp_path / "nope")
    w = LeRobotWriter(tmp_path / "ds", metaworld_features(SIZE), fps=10)
    ep = _episode(np.random.default_rng(5), 3)
    with pytest.raises(VlatrimError, match=r"feature 'action' has shape \(3, 5\)"):
        w.add_episode({**ep, "action": np.zeros((3, 5), np.float32)}, "t")
    with pytest.raises(VlatrimError, match="lengths differ"):
        w.add_episode({**ep, "action": np.zeros((2, 4), np.float32)}, "t")
    with pytest.raises(VlatrimError, match="not in the dataset: bogus"):
        w.add_episode({**ep, "bogus": np.zeros(3)}, "t")
    with pytest.raises(VlatrimError, match="no episodes"):
        w.close()


# ------------------------------------------------------------------------------------------ video
VSIZE = 48  # video tests need a few macroblocks; still milliseconds to encode
# Lossy tolerance of the video round trip with the writer's defaults (H.264, CRF 12, yuv444p) on
# smooth frames with a moving box (measured 1.23 mean / 5 p99 / 43 max at 48 px): mean absolute
# error below 1.6 grey levels, 99th percentile below 8 (single pixels at the box's edges differ most).
VIDEO_MEAN_TOL, VIDEO_P99_TOL = 1.6, 8.0


def _video_episode(rng: np.random.Generator, n: int, size: int = VSIZE) -> dict[str, np.ndarray]:
    from test_utils_video import scene

    ep = _episode(rng, n)
    ep["observation.images.corner"] = scene(n, size, size, seed=int(rng.integers(1 << 30)))
    return ep


def _assert_close_images(got: np.ndarray, want: np.ndarray, mean: float = VIDEO_MEAN_TOL, p99: float = VIDEO_P99_TOL) -> None:
    d = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert got.shape == want.shape and got.dtype == np.uint8
    assert d.mean() < mean and np.percentile(d, 99) < p99, (d.mean(), np.percentile(d, 99))


@pytest.fixture()
def written_video(tmp_path):
    rng = np.random.default_rng(10)
    eps = [_video_episode(rng, 9), _video_episode(rng, 6)]
    eps[1]["observation.images.corner"] = [encode_png(x) for x in eps[1]["observation.images.corner"]]  # PNGs from workers
    root = tmp_path / "ds"
    with LeRobotWriter(root, metaworld_features(VSIZE, video=True), fps=80) as w:
        w.add_episode(eps[0], "open it")
        w.add_episode(eps[1], "close it")
    eps[1]["observation.images.corner"] = np.stack([decode_png(b) for b in eps[1]["observation.images.corner"]])
    return root, eps


def test_video_round_trip(written_video):
    root, eps = written_video
    ds = LeRobotDataset(root)
    assert ds.image_is_video and ds.image_shape == (VSIZE, VSIZE, 3) and (ds.num_frames, ds.num_episodes) == (15, 2)
    # Everything but the images is exact.
    np.testing.assert_array_equal(ds.state, np.concatenate([e["observation.state"] for e in eps]))
    np.testing.assert_array_equal(ds.action, np.concatenate([e["action"] for e in eps]))
    np.testing.assert_array_equal(ds.column("next.success"), np.concatenate([e["next.success"] for e in eps]))
    np.testing.assert_array_equal(ds.frame_index, [*range(9), *range(6)])
    assert ds.tasks == ["open it", "close it"] and ds.instructions([0, 14]) == ["open it", "close it"]
    want = np.concatenate([e["observation.images.corner"] for e in eps])
    _assert_close_images(ds.images(), want)
    # Any subset, any order, gives the same decoded frames as the full pass.
    full = ds.images()
    np.testing.assert_array_equal(ds.images([14, 0, 9, 8, 9]), full[[14, 0, 9, 8, 9]])
    np.testing.assert_array_equal(ds[10]["image"], full[10])
    # Stats come from the frames given, before the lossy encoding (as for image features: exact).
    np.testing.assert_allclose(ds.stats["observation.images.corner"]["mean"][:, 0, 0], want.reshape(-1, 3).mean(0) / 255, rtol=1e-12)
    with pytest.raises(VlatrimError, match="is stored as video: its frames have no per-frame bytes"):
        ds.image_bytes(0)


def test_video_layout_follows_lerobot_v3(written_video):
    root, _ = written_video
    info = json.loads((root / "meta/info.json").read_text())
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    ft = info["features"]["observation.images.corner"]
    assert ft["dtype"] == "video" and ft["shape"] == [VSIZE, VSIZE, 3]
    assert ft["info"]["video.pix_fmt"] == "yuv444p" and ft["info"]["video.codec"] == "h264" and ft["info"]["video.fps"] == 80 and ft["info"]["video.height"] == VSIZE
    assert "observation.images.corner" not in pq.read_schema(root / "data/chunk-000/file-000.parquet").names
    assert sorted(p.relative_to(root).as_posix() for p in (root / "videos").rglob("*.mp4")) == ["videos/observation.images.corner/chunk-000/file-000.mp4"]
    meta = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    key = "videos/observation.images.corner"
    # Both episodes in one file, back to back: episode 1 starts 9 frames in.
    assert [(m[f"{key}/file_index"], m[f"{key}/from_timestamp"], m[f"{key}/to_timestamp"]) for m in meta] == [(0, 0.0, 9 / 80), (0, 9 / 80, 15 / 80)]
    from vlatrim.utils.video import stream_info

    s = stream_info(root / "videos/observation.images.corner/chunk-000/file-000.mp4")
    assert s["frames"] == 15 and (s["height"], s["width"]) == (VSIZE, VSIZE) and s["codec"] == ft["info"]["video.codec"]


def test_video_tolerance_and_missing_files(written_video):
    root, _ = written_video
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    col = "videos/observation.images.corner/from_timestamp"
    shifted = t.set_column(t.schema.get_field_index(col), col, pa.array([0.0, 9.5 / 80]))  # half a frame off
    pq.write_table(shifted, path)
    ds = LeRobotDataset(root)
    np.testing.assert_array_equal(ds.images([0, 8]).shape, (2, VSIZE, VSIZE, 3))  # episode 0 is untouched
    with pytest.raises(VlatrimError, match=r"file-000.mp4' has no frame within 0.0001 s of t=0.118750 s"):
        ds.images([9])
    assert LeRobotDataset(root, tolerance_s=0.007).images([9]).shape == (1, VSIZE, VSIZE, 3)  # 6.25 ms off: within 7 ms
    (root / "videos/observation.images.corner/chunk-000/file-000.mp4").unlink()
    with pytest.raises(VlatrimError, match=r"video file 'videos/observation.images.corner/chunk-000/file-000.mp4' of feature 'observation.images.corner' \(episode 0\) is missing"):
        LeRobotDataset(root)


def test_video_files_roll_over_and_odd_sizes(tmp_path):
    rng = np.random.default_rng(11)
    eps = [_video_episode(rng, 60) for _ in range(3)]  # > libx264's lookahead, so bytes reach the file per episode
    with LeRobotWriter(tmp_path / "ds", metaworld_features(VSIZE, video=True), fps=10, video_file_mb=1e-6) as w:
        for e in eps:
            w.add_episode(e, "t")
    files = sorted(p.name for p in (tmp_path / "ds/videos/observation.images.corner/chunk-000").iterdir())
    assert files == ["file-000.mp4", "file-001.mp4", "file-002.mp4"]
    meta = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet")
    assert meta["videos/observation.images.corner/file_index"].to_pylist() == [0, 1, 2]
    assert meta["videos/observation.images.corner/from_timestamp"].to_pylist() == [0.0, 0.0, 0.0]
    _assert_close_images(LeRobotDataset(tmp_path / "ds").images(), np.concatenate([e["observation.images.corner"] for e in eps]))

    from vlatrim.utils.video import available_encoders

    if "libx264" not in available_encoders():
        pytest.skip("odd sizes need libx264 (yuv444p)")
    odd = [_video_episode(rng, 4, size=33)]
    with LeRobotWriter(tmp_path / "odd", metaworld_features(33, video=True), fps=10, video_pix_fmt="yuv420p") as w:  # 4:2:0 asked, odd size
        w.add_episode(odd[0], "t")
    ds = LeRobotDataset(tmp_path / "odd")
    assert ds.info["features"]["observation.images.corner"]["info"]["video.pix_fmt"] == "yuv444p"
    # 33 px, 4 frames: edges are a larger share of the pixels (measured 1.87 mean / 12 p99), so looser.
    _assert_close_images(ds.images(), odd[0]["observation.images.corner"], mean=2.5, p99=16)


def test_reads_lerobot_produced_av1_video_layout(tmp_path):
    """As LeRobot writes it: AV1 (libsvtav1, CRF 30, key frame every 2), a channels-first shape with
    names, two episodes back to back in file-000 and a third in file-001, frames in two data files,
    no image column. AV1 at LeRobot's settings is lossier than vlatrim's H.264 4:4:4."""
    import av

    from vlatrim.utils.video import VideoWriter

    if "libsvtav1" not in av.codecs_available:
        pytest.skip("no AV1 encoder in this PyAV build to make a LeRobot-style file")
    rng = np.random.default_rng(12)
    eps = [_video_episode(rng, n) for n in (6, 4, 5)]
    (tmp_path / "meta/episodes/chunk-000").mkdir(parents=True)
    (tmp_path / "data/chunk-000").mkdir(parents=True)
    key = "observation.images.corner"
    feats = metaworld_features(VSIZE)
    feats[key] = {"dtype": "video", "shape": [3, VSIZE, VSIZE], "names": ["channels", "height", "width"],
                  "info": {"video.codec": "av1", "video.pix_fmt": "yuv420p", "video.fps": 20}}
    info = {"codebase_version": "v3.0", "fps": 20, "features": feats, "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    files = [(0, [0, 1]), (1, [2])]
    rows, start = [], 0
    for file_index, members in files:
        with VideoWriter(tmp_path / f"videos/{key}/chunk-000/file-{file_index:03d}.mp4", fps=20, codec="libsvtav1", crf=30, gop=2) as w:
            offset = 0
            for i in members:
                for f in eps[i][key]:
                    w.write(f)
                n = len(eps[i]["action"])
                rows.append({"episode_index": i, "tasks": ["t"], "length": n, "data/chunk_index": 0, "data/file_index": min(i, 1),
                             "dataset_from_index": start, "dataset_to_index": start + n,
                             f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": file_index,
                             f"videos/{key}/from_timestamp": offset / 20, f"videos/{key}/to_timestamp": (offset + n) / 20})
                offset += n
                start += n
    for data_file, members in ((0, [0]), (1, [1, 2])):
        cols = {"observation.state": [], "action": [], "next.success": [], "timestamp": [], "frame_index": [], "episode_index": [], "index": [], "task_index": []}
        for i in members:
            n = len(eps[i]["action"])
            cols["observation.state"] += eps[i]["observation.state"].tolist()
            cols["action"] += eps[i]["action"].tolist()
            cols["next.success"] += eps[i]["next.success"].tolist()
            cols["timestamp"] += (np.arange(n, dtype=np.float32) / 20).tolist()
            cols["frame_index"] += list(range(n))
            cols["episode_index"] += [i] * n
            cols["index"] += [rows[i]["dataset_from_index"] + j for j in range(n)]
            cols["task_index"] += [0] * n
        table = pa.table({**cols, "observation.state": pa.array(cols["observation.state"], pa.list_(pa.float32())),
                          "action": pa.array(cols["action"], pa.list_(pa.float32())), "timestamp": pa.array(cols["timestamp"], pa.float32())})
        pq.write_table(table, tmp_path / f"data/chunk-000/file-{data_file:03d}.parquet")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "__index_level_0__": ["t"]}), tmp_path / "meta/tasks.parquet")

    ds = LeRobotDataset(tmp_path)
    assert ds.image_is_video and ds.image_shape == (VSIZE, VSIZE, 3) and ds.num_episodes == 3
    np.testing.assert_array_equal(ds.action, np.concatenate([e["action"] for e in eps]))
    # AV1 CRF 30 4:2:0 (LeRobot's defaults): measured 2.2 mean / 18 p99 on these 48 px frames.
    _assert_close_images(ds.images(), np.concatenate([e[key] for e in eps]), mean=3.0, p99=24)
    np.testing.assert_array_equal(ds.images([12, 6]), ds.images()[[12, 6]])


def test_robot_features_of_another_robot_round_trip(tmp_path):
    """A dataset of a robot that is not Meta-World's (two cameras, 7-d state and action) reads back with
    its own dims and the camera asked for."""
    from vlatrim.data.frames import read_demo_frames
    from vlatrim.data.lerobot import robot_features

    names = tuple(f"j{i}" for i in range(7))
    w = LeRobotWriter(tmp_path / "ds", robot_features(8, ("wrist", "top"), names, names), fps=10)
    rng = np.random.default_rng(0)
    frames = {"observation.images.wrist": rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8),
              "observation.images.top": rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8),
              "observation.state": rng.normal(size=(5, 7)).astype(np.float32),
              "action": rng.uniform(-1, 1, size=(5, 7)).astype(np.float32), "next.success": np.zeros(5, dtype=bool)}
    w.add_episode(frames, "stack the blocks")
    w.close()
    got = read_demo_frames(tmp_path / "ds", image_key="observation.images.top")
    assert got.states.shape == (5, 7) and got.actions.shape == (5, 7) and got.image_size == 8
    np.testing.assert_array_equal(got.images, frames["observation.images.top"])
    np.testing.assert_array_equal(got.actions, frames["action"])
    assert got.instructions == {0: "stack the blocks"}
