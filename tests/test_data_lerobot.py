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
    bad["features"]["observation.state"]["shape"] = [7]
    info_path.write_text(json.dumps(bad))
    with pytest.raises(VlatrimError, match=r"feature 'observation.state' is float32\[7\].*expected float32\[4\]"):
        LeRobotDataset(root)
    bad = json.loads(json.dumps(info))
    bad["features"]["observation.images.corner"]["dtype"] = "video"
    info_path.write_text(json.dumps(bad))
    with pytest.raises(VlatrimError, match=r"'observation.images.corner' is stored as video"):
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
