"""LeRobotDataset v3.0 directories: a writer and a reader (pyarrow + PyAV; no LeRobot install needed).

Layout (what LeRobot v3.0 reads and writes)::

    meta/info.json                                 codebase_version "v3.0", fps, features, paths
    meta/stats.json                                per feature: min/max/mean/std/count/q01/q10/q50/q90/q99
    meta/tasks.parquet                             task text (pandas index "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet       one row per episode: episode_index, tasks, length,
                                                   data/chunk_index, data/file_index,
                                                   dataset_from_index, dataset_to_index, stats/...
    data/chunk-000/file-000.parquet                one row per frame (more files past ~100 MB)
    videos/<key>/chunk-000/file-000.mp4            only for features of dtype "video"

Frame columns follow LeRobot: ``observation.images.<cam>`` is LeRobot's ``image`` dtype, a struct
``{bytes: PNG, path: null}`` (Hugging Face ``datasets.Image``), or LeRobot's ``video`` dtype: no
column, the frames of consecutive episodes are consecutive frames of an MP4 file, and the episode row
holds ``videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}``; frame t of an episode
is shown at ``from_timestamp + timestamp[t]`` in that file. Vectors are fixed-size lists;
``timestamp`` float32; ``frame_index``/``episode_index``/``index``/``task_index`` int64. Image stats
are per channel, shape (3, 1, 1), on the 0..1 scale, as LeRobot computes them.

The reader accepts directories written by LeRobot itself with the same features (fixed-size or
variable-size list columns, several data files, tasks stored by pandas) and rejects a missing or
mismatched feature with a message that names it.
"""

from __future__ import annotations

import io
import json
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlatrim.errors import VlatrimError
from vlatrim.utils.io import write_json_atomic

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/" + CHUNK_FILE
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"  # LeRobot's default
VIDEO_TOLERANCE_S = 1e-4  # LeRobot's default tolerance_s between a frame's timestamp and the video's
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot's default)
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's q01 ... q99

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."

# Frame-bookkeeping features every LeRobot dataset has (LeRobot's DEFAULT_FEATURES).
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

# What vlatrim's training and evaluation need from a dataset: key -> (dtype, shape). The image
# feature is any `observation.images.<cam>` of dtype image and shape (H, W, 3).
# None in a shape: any length (a robot's state and action have the dims of that robot; a policy family
# checks them against its model).
REQUIRED_FEATURES: dict[str, tuple[str, tuple[int | None, ...]]] = {
    STATE_KEY: ("float32", (None,)),
    ACTION_KEY: ("float32", (None,)),
    **{k: (v["dtype"], (1,)) for k, v in DEFAULT_FEATURES.items()},
}


def robot_features(image_size: int, cameras: tuple[str, ...] = ("corner",), state_names: tuple[str, ...] = (),
                   action_names: tuple[str, ...] = (), video: bool = False) -> dict[str, dict[str, Any]]:
    """The feature table (``meta/info.json`` ``features``) of a robot dataset: camera images, state,
    action and per-frame success, plus LeRobot's bookkeeping columns.

    Args:
        image_size: square image side in pixels.
        cameras: camera names; image keys are ``observation.images.<camera>``.
        state_names: one name per state dimension (their number is the state dim).
        action_names: one name per action dimension.
        video: store the cameras as LeRobot's ``video`` dtype (MP4 files) instead of PNGs in the parquet.
    """
    images = {IMAGE_PREFIX + cam: {"dtype": "video" if video else "image", "shape": [image_size, image_size, 3],
                                   "names": ["height", "width", "channels"]} for cam in cameras}
    return {
        **images,
        STATE_KEY: {"dtype": "float32", "shape": [len(state_names)], "names": list(state_names)},
        ACTION_KEY: {"dtype": "float32", "shape": [len(action_names)], "names": list(action_names)},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
        **{k: dict(v) for k, v in DEFAULT_FEATURES.items()},
    }


def metaworld_features(image_size: int, camera: str = "corner", video: bool = False) -> dict[str, dict[str, Any]]:
    """The feature table of a vlatrim Meta-World dataset: one camera, the 4-d state (hand xyz + gripper
    opening) and the 4-d action (hand displacement + gripper), as LeRobot's Meta-World datasets hold."""
    return robot_features(image_size, (camera,), ("hand_x", "hand_y", "hand_z", "gripper"),
                          ("dx", "dy", "dz", "gripper"), video)


# ----------------------------------------------------------------------------------------- helpers
def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) image (level 1: ~3x faster than the default, ~10% larger)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """uint8 (H, W, 3) array of an encoded image (PNG or anything Pillow reads)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _arrow_type(ft: Mapping[str, Any]) -> pa.DataType:
    dtype, shape = ft["dtype"], tuple(ft["shape"])
    if dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if dtype == "string":
        return pa.string()
    base = pa.from_numpy_dtype(np.dtype(dtype))
    if shape == (1,):
        return base
    if len(shape) == 1:
        return pa.list_(base, shape[0])
    raise VlatrimError(f"feature dtype/shape {dtype}{list(shape)} is not supported by the writer")


def _hf_feature(ft: Mapping[str, Any]) -> dict[str, Any]:
    # The Hugging Face `datasets` schema LeRobot attaches to its parquet files (schema metadata key
    # "huggingface"), so `datasets.Dataset.from_parquet` restores Image / Sequence types.
    dtype, shape = ft["dtype"], tuple(ft["shape"])
    if dtype == "image":
        return {"_type": "Image"}
    if shape == (1,):
        return {"dtype": dtype, "_type": "Value"}
    return {"feature": {"dtype": dtype, "_type": "Value"}, "length": shape[0], "_type": "Sequence"}


def _numeric_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot stats of an (N, D) array over frames."""
    x = x.astype(np.float64)
    out = {
        "min": x.min(0),
        "max": x.max(0),
        "mean": x.mean(0),
        "std": x.std(0),
        "count": np.array([len(x)]),
    }
    for q, v in zip(QUANTILES, np.quantile(x, QUANTILES, axis=0)):
        out[f"q{round(q * 100):02d}"] = v
    return out


def _hist_stats(hist: np.ndarray, n_frames: int) -> dict[str, np.ndarray]:
    """Per-channel stats of uint8 images from their pixel histograms (3, 256), scaled to 0..1.

    Exact (a histogram of a uint8 channel is the whole distribution); shapes (3, 1, 1) as LeRobot.
    """
    levels = np.arange(256, dtype=np.float64) / 255.0
    total = hist.sum(1, keepdims=True).astype(np.float64)  # (3, 1)
    p = hist / total
    mean = (p * levels).sum(1)
    std = np.sqrt(np.maximum((p * levels**2).sum(1) - mean**2, 0.0))
    cdf = np.cumsum(p, 1)
    nz = hist > 0
    out = {
        "min": levels[nz.argmax(1)],
        "max": levels[255 - nz[:, ::-1].argmax(1)],
        "mean": mean,
        "std": std,
    }
    out = {k: v.reshape(3, 1, 1) for k, v in out.items()}
    out["count"] = np.array([n_frames])
    for q in QUANTILES:
        # Lowest level whose cumulative share reaches q (the "lower" quantile of the pixel values).
        out[f"q{round(q * 100):02d}"] = levels[(cdf >= q - 1e-12).argmax(1)].reshape(3, 1, 1)
    return out


def _tolist(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


# ------------------------------------------------------------------------------------------ writer
class LeRobotWriter:
    """Streams episodes into a new LeRobotDataset v3.0 directory.

    Write into a directory from ``utils.io.atomic_dir`` so a failed run leaves nothing behind;
    ``close()`` writes the metadata, and a directory without ``meta/info.json`` is not a dataset.

    Features of dtype ``video`` are encoded into MP4 files as episodes arrive: H.264 (libx264) at
    full colour resolution (``yuv444p``) and CRF 12 by default. On 96 px Meta-World frames that is
    13x smaller than PNGs at 38.7 dB PSNR, where LeRobot's 4:2:0 defaults lose ~8 dB on these
    small, textured frames (benchmarks/results/video.json). LeRobot itself encodes AV1 (libsvtav1);
    it decodes H.264 as well. Stats are computed from the frames given, before the lossy encoding.

    Args:
        root: the dataset directory (created; must be empty or absent).
        features: feature table, e.g. ``metaworld_features(96)``; the default frame features are
            added when missing.
        fps: frames per second of the recording (timestamps are ``frame_index / fps``).
        robot_type: free-form robot name stored in ``info.json``.
        data_file_mb: start a new data file once the current one holds this many MB (LeRobot: 100).
        video_file_mb: start a new video file once the current one holds this many MB (LeRobot: 500).
        video_codec: encoder of video features (default: the first of libx264, libopenh264, mpeg4).
        video_pix_fmt: ``yuv444p`` (libx264 only; full colour resolution) or ``yuv420p`` (LeRobot's
            default, plays in browsers; needs even sides, so odd sizes use ``yuv444p``). Encoders other
            than libx264 always use ``yuv420p``.
        video_crf: libx264 quality (lower is better and larger).
        video_gop: frames between key frames (LeRobot uses 2 for fast random access; larger files).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        features: Mapping[str, Mapping[str, Any]],
        fps: int,
        robot_type: str | None = None,
        data_file_mb: float = 100.0,
        video_file_mb: float = 500.0,
        video_codec: str | None = None,
        video_pix_fmt: str = "yuv444p",
        video_crf: int = 12,
        video_gop: int = 10,
    ) -> None:
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            raise VlatrimError(f"dataset directory {str(self.root)!r} is not empty")
        if fps <= 0:
            raise VlatrimError(f"fps must be positive, got {fps}")
        self.features = {k: dict(v) for k, v in features.items()}
        for k, v in DEFAULT_FEATURES.items():
            self.features.setdefault(k, dict(v))
        self.fps, self.robot_type = int(fps), robot_type
        self.video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        if video_pix_fmt not in ("yuv444p", "yuv420p"):
            raise VlatrimError(f"video pixel format {video_pix_fmt!r} is not one of: yuv444p, yuv420p")
        self._video_opts = {"codec": None, "crf": video_crf, "gop": video_gop, "pix_fmt": video_pix_fmt}
        for key, ft in self.features.items():
            if "/" in key:
                raise VlatrimError(f"feature name {key!r} must not contain '/'")
            if ft["dtype"] == "video":
                self._video_info(key, ft, video_codec)
            else:
                _arrow_type(ft)  # rejects unsupported dtypes up front
        self.data_file_bytes = int(data_file_mb * 2**20)
        self.video_file_bytes = int(video_file_mb * 2**20)
        columns = {k: ft for k, ft in self.features.items() if ft["dtype"] != "video"}  # videos live in mp4s
        self.schema = pa.schema(
            [(k, _arrow_type(ft)) for k, ft in columns.items()],
            metadata={"huggingface": json.dumps({"info": {"features": {k: _hf_feature(ft) for k, ft in columns.items()}}})},
        )
        self.image_keys = [k for k, ft in self.features.items() if ft["dtype"] in ("image", "video")]
        self._vector_keys = [
            k for k, ft in self.features.items() if ft["dtype"] not in ("image", "video", "string")
        ]
        self._videos: dict[str, Any] = {}  # key -> open VideoWriter of the current file
        self._video_file = {k: 0 for k in self.video_keys}  # key -> index of the current video file
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []
        self._values: dict[str, list[np.ndarray]] = {k: [] for k in self._vector_keys}
        self._hist = {k: np.zeros((3, 256), np.int64) for k in self.image_keys}
        self._n_frames = 0
        self._file_index = 0
        self._writer: pq.ParquetWriter | None = None
        self._closed = False

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def add_episode(self, frames: Mapping[str, Any], task: str) -> int:
        """Append one episode and return its episode_index.

        Args:
            frames: feature key -> per-frame values of length T: numeric arrays (T, *shape); for
                image and video features either uint8 (T, H, W, 3) or a list of T encoded PNGs (so
                worker processes can encode in parallel). The bookkeeping features (timestamp,
                frame_index, episode_index, index, task_index) are filled in when absent.
            task: the episode's task text (its natural-language instruction).
        """
        if self._closed:
            raise RuntimeError("writer is closed")
        unknown = set(frames) - set(self.features)
        if unknown:
            raise VlatrimError(f"episode has features not in the dataset: {', '.join(sorted(unknown))}")
        lengths = {k: len(v) for k, v in frames.items()}
        if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise VlatrimError(f"episode feature lengths differ or are empty: {lengths}")
        n = next(iter(lengths.values()))
        ep = len(self._episodes)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        auto = {
            "timestamp": np.arange(n, dtype=np.float32) / np.float32(self.fps),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, ep, np.int64),
            "index": np.arange(self._n_frames, self._n_frames + n, dtype=np.int64),
            "task_index": np.full(n, task_index, np.int64),
        }
        columns: dict[str, pa.Array] = {}
        ep_stats: dict[str, dict[str, np.ndarray]] = {}
        video_meta: dict[str, Any] = {}
        for key, ft in self.features.items():
            value = frames.get(key, auto.get(key))
            if value is None:
                raise VlatrimError(f"episode {ep} is missing feature {key!r}")
            if ft["dtype"] == "image":
                columns[key] = self._image_column(key, ft, value)
                continue
            if ft["dtype"] == "video":
                video_meta.update(self._add_video(key, ft, value))
                continue
            arr = np.asarray(value, dtype=np.dtype(ft["dtype"]))
            shape = tuple(ft["shape"])
            want = (n,) if shape == (1,) else (n, *shape)
            if arr.shape != want and not (shape == (1,) and arr.shape == (n, 1)):
                raise VlatrimError(f"feature {key!r} has shape {arr.shape}, expected {want}")
            arr = arr.reshape(want)
            flat = arr.reshape(n, -1)
            self._values[key].append(flat)
            ep_stats[key] = _numeric_stats(flat)
            if shape == (1,):
                columns[key] = pa.array(arr, type=_arrow_type(ft))
            else:
                columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), shape[0])
        table = pa.table([columns[k] for k in self.schema.names], schema=self.schema)
        file_index = self._file_index  # the file this episode lands in (_write_rows may roll over)
        self._write_rows(table)
        self._episodes.append(
            {
                "episode_index": ep,
                "tasks": [task],
                "length": n,
                "data/chunk_index": file_index // CHUNKS_SIZE,
                "data/file_index": file_index % CHUNKS_SIZE,
                "dataset_from_index": self._n_frames,
                "dataset_to_index": self._n_frames + n,
                **video_meta,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
                **{f"stats/{k}/{s}": np.asarray(v).reshape(-1).tolist() for k, d in ep_stats.items() for s, v in d.items()},
            }
        )
        self._n_frames += n
        return ep

    def _count_pixels(self, key: str, shape: tuple[int, ...], im: np.ndarray) -> None:
        if im.shape != shape:
            raise VlatrimError(f"feature {key!r} image has shape {list(im.shape)}, expected {list(shape)}")
        for c in range(3):
            self._hist[key][c] += np.bincount(im[..., c].reshape(-1), minlength=256)

    def _image_column(self, key: str, ft: Mapping[str, Any], value: Any) -> pa.Array:
        shape = tuple(ft["shape"])
        if isinstance(value, np.ndarray):
            if value.dtype != np.uint8 or value.shape[1:] != shape:
                raise VlatrimError(f"feature {key!r} images are {value.dtype}{list(value.shape[1:])}, expected uint8{list(shape)}")
            images = list(value)
            blobs = [encode_png(im) for im in images]
        else:
            blobs = [bytes(b) for b in value]
            images = None
        # Stats need pixels; decoding is cheap next to the simulator that produced them.
        for i, blob in enumerate(blobs):
            self._count_pixels(key, shape, images[i] if images is not None else decode_png(blob))
        return pa.StructArray.from_arrays(
            [pa.array(blobs, pa.binary()), pa.nulls(len(blobs), pa.string())], names=["bytes", "path"]
        )

    def _video_info(self, key: str, ft: dict[str, Any], codec: str | None) -> None:
        """Check a video feature and fill its ``info`` block as LeRobot does (codec, pix_fmt, ...)."""
        from vlatrim.utils.video import pick_encoder

        shape = tuple(ft["shape"])
        if len(shape) != 3 or shape[2] != 3:
            raise VlatrimError(f"video feature {key!r} must have shape [H, W, 3], got {list(shape)}")
        codec = pick_encoder(codec or self._video_opts["codec"])
        self._video_opts["codec"] = codec
        odd = shape[0] % 2 or shape[1] % 2
        if odd and codec != "libx264":
            raise VlatrimError(f"video feature {key!r} is {shape[0]}x{shape[1]}: odd sizes need libx264 (yuv444p), not {codec!r}")
        pix_fmt = self._video_opts["pix_fmt"] if codec == "libx264" else "yuv420p"
        ft["info"] = {
            "video.height": shape[0],
            "video.width": shape[1],
            "video.codec": {"libx264": "h264", "libopenh264": "h264"}.get(codec, codec),
            "video.pix_fmt": "yuv444p" if odd else pix_fmt,  # 4:2:0 needs even sides
            "video.is_depth_map": False,
            "video.fps": self.fps,
            "video.channels": 3,
            "has_audio": False,
        }

    def _add_video(self, key: str, ft: Mapping[str, Any], value: Any) -> dict[str, Any]:
        """Encode one episode's frames at the end of the current video file; its episode columns."""
        from vlatrim.utils.video import VideoWriter

        shape = tuple(ft["shape"])
        if isinstance(value, np.ndarray):
            if value.dtype != np.uint8 or value.shape[1:] != shape:
                raise VlatrimError(f"feature {key!r} images are {value.dtype}{list(value.shape[1:])}, expected uint8{list(shape)}")
            images: Iterable[np.ndarray] = value
        else:
            images = (decode_png(bytes(b)) for b in value)
        w = self._videos.get(key)
        if w is not None and w.bytes >= self.video_file_bytes:
            # Roll over at an episode boundary, so every episode lives in exactly one file (as LeRobot).
            w.close()
            w = None
            self._video_file[key] += 1
        if w is None:
            f = self._video_file[key]
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=f // CHUNKS_SIZE, file_index=f % CHUNKS_SIZE)
            opts = self._video_opts
            w = self._videos[key] = VideoWriter(path, self.fps, codec=opts["codec"], pix_fmt=ft["info"]["video.pix_fmt"],
                                                crf=opts["crf"], gop=opts["gop"], odd="yuv444p")
        first = w.frames
        for im in images:
            self._count_pixels(key, shape, im)
            w.write(im)
        f = self._video_file[key]
        return {
            f"videos/{key}/chunk_index": f // CHUNKS_SIZE,
            f"videos/{key}/file_index": f % CHUNKS_SIZE,
            f"videos/{key}/from_timestamp": first / self.fps,
            f"videos/{key}/to_timestamp": w.frames / self.fps,
        }

    def _write_rows(self, table: pa.Table) -> None:
        path = self.root / DATA_PATH.format(
            chunk_index=self._file_index // CHUNKS_SIZE, file_index=self._file_index % CHUNKS_SIZE
        )
        if self._writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(path, self.schema, compression="snappy")
        self._writer.write_table(table)
        if path.stat().st_size + table.nbytes >= self.data_file_bytes:
            # Close at an episode boundary, so every episode lives in exactly one file (as LeRobot).
            self._writer.close()
            self._writer = None
            self._file_index += 1

    def close(self) -> Path:
        """Finish the data file and write tasks, episodes, stats and info. Returns the root."""
        if self._closed:
            return self.root
        if not self._episodes:
            raise VlatrimError(f"no episodes were written to {str(self.root)!r}")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for w in self._videos.values():
            w.close()
        self._closed = True
        self._write_tasks()
        self._write_episodes()
        stats = {k: _numeric_stats(np.concatenate(v)) for k, v in self._values.items()}
        stats.update({k: _hist_stats(h, self._n_frames) for k, h in self._hist.items()})
        write_json_atomic(self.root / STATS_PATH, _tolist(stats))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._n_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": round(self.data_file_bytes / 2**20),
            "video_files_size_in_mb": 500,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": self.features,
        }
        # info.json last: its presence marks a complete dataset.
        write_json_atomic(self.root / INFO_PATH, info, indent=4)
        return self.root

    def _write_tasks(self) -> None:
        # LeRobot keeps tasks as a pandas DataFrame indexed by the task text ("task") with one column
        # task_index; the pandas metadata below makes `pd.read_parquet` restore exactly that.
        texts = sorted(self._tasks, key=self._tasks.get)
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
                {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
            ],
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.3",
        }
        table = pa.table(
            {"task_index": pa.array([self._tasks[t] for t in texts], pa.int64()), "task": pa.array(texts, pa.string())}
        ).replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
        path = self.root / TASKS_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def _write_episodes(self) -> None:
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), path)

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        if self._writer is not None:
            self._writer.close()
        for w in self._videos.values():
            w.close()


# ------------------------------------------------------------------------------------------ reader
@dataclass(frozen=True)
class Episode:
    """One episode's place in the reader's frame order: frames ``start`` .. ``stop - 1``."""

    episode_index: int
    start: int
    stop: int
    task_index: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def _column_to_numpy(col: pa.ChunkedArray, key: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A feature column as (N,) for shape (1,) or (N, *shape), checking its arrow type."""
    typ = col.type
    want = np.dtype(dtype)
    if shape == (1,):
        if pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ):  # (1,)-lists occur in the wild
            col = pc.list_flatten(col)
            typ = col.type
        if pa.types.is_nested(typ) or (typ != pa.from_numpy_dtype(want) and not _castable(typ, want)):
            raise VlatrimError(f"feature {key!r} is stored as {typ}, expected {dtype}")
        arr = col.to_numpy()
        if len(arr) != len(col):
            raise VlatrimError(f"feature {key!r} has {len(arr)} values for {len(col)} frames")
        return arr.astype(want, copy=False)
    if not (pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ) or pa.types.is_large_list(typ)):
        raise VlatrimError(f"feature {key!r} is stored as {typ}, expected a list of {shape[0]} {dtype}")
    if pa.types.is_fixed_size_list(typ) and typ.list_size != int(np.prod(shape)):
        raise VlatrimError(f"feature {key!r} has {typ.list_size} values per frame, expected {shape}")
    if not pa.types.is_fixed_size_list(typ):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != int(np.prod(shape))).any():
            raise VlatrimError(f"feature {key!r} has {sorted(set(lengths.tolist()))} values per frame, expected {shape}")
    values = pc.list_flatten(col)
    if not _castable(values.type, want):
        raise VlatrimError(f"feature {key!r} holds {values.type}, expected {dtype}")
    return values.to_numpy().astype(want, copy=False).reshape(len(col), *shape)


def _castable(typ: pa.DataType, want: np.dtype) -> bool:
    # float64 -> float32 and int32 -> int64 occur in LeRobot datasets converted from older versions.
    if np.issubdtype(want, np.floating):
        return pa.types.is_floating(typ)
    if np.issubdtype(want, np.integer):
        return pa.types.is_integer(typ)
    if want == np.bool_:
        return pa.types.is_boolean(typ)
    return False


def _hwc_shape(ft: Mapping[str, Any]) -> tuple[int, int, int]:
    """(H, W, 3) of an image/video feature; some LeRobot datasets declare it channels-first."""
    shape = tuple(int(x) for x in ft["shape"])
    names = list(ft.get("names") or [])
    if (names[:1] in (["channels"], ["channel"]) or shape[2] != 3) and shape[0] == 3:
        return (shape[1], shape[2], 3)
    return shape  # type: ignore[return-value]



# Placeholders each path template of info.json may use (LeRobot's own templates use exactly these).
TEMPLATE_FIELDS = {"data_path": ("chunk_index", "file_index"), "video_path": ("video_key", "chunk_index", "file_index")}


def _one_line(e: BaseException) -> str:
    """The first line of an exception's message (pyarrow's and Pillow's messages run over lines)."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def _read_meta_json(root: Path, rel: str, required: bool = True) -> dict[str, Any] | None:
    """A JSON object from ``root / rel``, refusing a missing file (when ``required``), bytes that are not
    UTF-8, malformed JSON and any value that is not an object, each in one line naming the file."""
    path = root / rel
    if not path.is_file():
        if not required:
            return None
        raise VlatrimError(f"dataset {str(root)!r} has no {rel} (not a LeRobot v3 dataset directory)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise VlatrimError(f"{rel} in dataset {str(root)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at "
                           f"offset {e.start}); expected a JSON object") from None
    except OSError as e:
        raise VlatrimError(f"{rel} in dataset {str(root)!r} cannot be read ({e.strerror or _one_line(e)})") from None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        where = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        raise VlatrimError(f"{rel} in dataset {str(root)!r} is not valid JSON ({where}); expected a JSON object") from None
    if not isinstance(value, dict):
        raise VlatrimError(f"{rel} in dataset {str(root)!r} holds a JSON {_json_kind(value)}; expected a JSON object")
    return value


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null")


def _check_template(root: Path, key: str, template: Any) -> str:
    """A path template of info.json (``data_path`` / ``video_path``): a string whose placeholders are the
    ones LeRobot defines and whose paths stay inside the dataset directory."""
    valid = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS[key])
    where = f"meta/info.json in dataset {str(root)!r}"
    if not isinstance(template, str) or not template:
        raise VlatrimError(f"{where} has {key} {template!r}; expected a relative path template using {valid}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise VlatrimError(f"{where} has {key} {template!r}, which is not a path template ({e}); valid "
                           f"placeholders: {valid}") from None
    bad = [f for f in fields if f not in TEMPLATE_FIELDS[key]]
    if bad:
        raise VlatrimError(f"{where} has {key} {template!r} with unknown placeholder {{{bad[0]}}}; valid: {valid}")
    try:
        example = template.format(video_key="observation.images.x", chunk_index=0, file_index=0)
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise VlatrimError(f"{where} has {key} {template!r}, which cannot be filled in ({_one_line(e)}); valid "
                           f"placeholders: {valid}, with integer formats such as {{chunk_index:03d}}") from None
    _inside(root, example, f"{where}: {key} {template!r}")
    return template


def _inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel``, refusing a path that is absolute or climbs out of ``root`` (``..``)."""
    norm = os.path.normpath(rel)
    if os.path.isabs(rel) or os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
        raise VlatrimError(f"{what} leads outside the dataset directory; every path a dataset names must be "
                           "relative and stay inside it")
    return root / norm


def _check_features(root: Path, features: Any) -> dict[str, dict[str, Any]]:
    where = f"meta/info.json in dataset {str(root)!r}"
    if not isinstance(features, dict) or not features:
        got = f"features as a JSON {_json_kind(features)}" if features else "no features"
        raise VlatrimError(f"{where} has {got}; expected an object mapping feature names to {{dtype, shape}}")
    for key, ft in features.items():
        if not isinstance(ft, dict) or not isinstance(ft.get("dtype"), str):
            raise VlatrimError(f"{where}: feature {key!r} is {ft!r}; expected an object with a dtype string and a shape list")
        shape = ft.get("shape", [1])
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise VlatrimError(f"{where}: feature {key!r} has shape {shape!r}; expected a list of non-negative integers")
        try:
            np.dtype(ft["dtype"]) if ft["dtype"] not in ("image", "video", "string") else None
        except TypeError:
            raise VlatrimError(f"{where}: feature {key!r} has dtype {ft['dtype']!r}; expected image, video, string or a "
                               "numpy type name such as float32") from None
    return features


def _check_fps(root: Path, fps: Any) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf"):
        raise VlatrimError(f"meta/info.json in dataset {str(root)!r} has fps {fps!r}; expected a positive number of "
                           "frames per second")
    return fps


class LeRobotDataset:
    """Read a LeRobotDataset v3.0 directory whose images are PNGs in the parquet or MP4 videos.

    Non-image columns are loaded once as numpy arrays (cheap: a few floats per frame); images stay as
    PNG bytes or video files and are decoded on request, one frame or many at a time. A video frame
    is the one shown at ``from_timestamp + timestamp`` of its episode, within ``tolerance_s``.

    Args:
        root: the dataset directory (with ``meta/info.json``).
        image_key: which ``observation.images.<cam>`` feature to serve; default: the only one, or
            ``observation.images.corner`` when there are several.
        required: feature key -> (dtype, shape) that must be present with exactly that type;
            defaults to what vlatrim needs (4-d float32 state and action plus the frame bookkeeping).
        tolerance_s: for video features, the largest allowed gap between a frame's timestamp and the
            decoded frame serving it (LeRobot's default, 1e-4 s).

    Raises:
        VlatrimError: not a v3.0 directory, a missing file, or a missing / mismatched feature.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_key: str | None = None,
        required: Mapping[str, tuple[str, tuple[int | None, ...]]] = REQUIRED_FEATURES,
        tolerance_s: float = VIDEO_TOLERANCE_S,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise VlatrimError(f"dataset directory {str(self.root)!r} does not exist")
        info = _read_meta_json(self.root, INFO_PATH)
        version = str(info.get("codebase_version", "?"))
        if not version.startswith("v3."):
            raise VlatrimError(f"dataset {str(self.root)!r} has codebase_version {version!r}; vlatrim reads v3.x (convert it with LeRobot's v2.1 -> v3.0 script)")
        self.info: dict[str, Any] = info
        self.features: dict[str, dict[str, Any]] = _check_features(self.root, info.get("features"))
        fps = _check_fps(self.root, info.get("fps"))
        self.fps = int(fps) if float(fps).is_integer() else fps
        # Path templates: checked even where the reader finds files itself (data/ is globbed), so a
        # dataset that names a path outside its directory is refused whatever reads it.
        self._templates = {key: _check_template(self.root, key, info[key])
                           for key in TEMPLATE_FIELDS if info.get(key) is not None}
        self.image_key = self._pick_image_key(image_key)
        self.image_is_video = self.features[self.image_key].get("dtype") == "video"
        self.image_shape = _hwc_shape(self.features[self.image_key])
        self.tolerance_s = float(tolerance_s)
        for key, (dtype, shape) in required.items():
            ft = self.features.get(key)
            want = "[" + ", ".join("n" if d is None else str(d) for d in shape) + "]"
            if ft is None:
                raise VlatrimError(f"dataset {str(self.root)!r} lacks feature {key!r} (needs {dtype}{want})")
            have = tuple(ft.get("shape", ()))
            if ft.get("dtype") != dtype or len(have) != len(shape) or any(
                    d is not None and d != h for d, h in zip(shape, have)):
                raise VlatrimError(f"feature {key!r} is {ft.get('dtype')}{list(have)} in {str(self.root)!r}, expected "
                                   f"{dtype}{want}")

        files = sorted((self.root / "data").glob("chunk-*/file-*.parquet"))
        if not files:
            raise VlatrimError(f"dataset {str(self.root)!r} has no data/chunk-*/file-*.parquet files")
        self._files = files
        numeric = [k for k, ft in self.features.items() if ft.get("dtype") not in ("image", "video", "string")]
        tables = []
        for f in files:
            names = set(self._parquet(f, pq.read_schema).names)
            for key in numeric if self.image_is_video else [*numeric, self.image_key]:
                if key not in names:
                    raise VlatrimError(f"feature {key!r} is declared in info.json but missing from {f.relative_to(self.root)}")
            tables.append(self._parquet(f, pq.read_table, columns=numeric))
        table = self._parquet(self.root / "data", lambda _: pa.concat_tables(tables))
        self.num_frames = table.num_rows
        self._columns: dict[str, np.ndarray] = {}
        for key in numeric:
            ft = self.features[key]
            try:
                self._columns[key] = _column_to_numpy(table[key], key, ft["dtype"], tuple(ft["shape"]))
            except (pa.ArrowException, ValueError) as e:  # values a damaged file decodes to (nulls, odd lengths)
                raise VlatrimError(f"feature {key!r} in the data files of dataset {str(self.root)!r} cannot be read "
                                   f"({_one_line(e)}); expected {ft['dtype']}{list(ft['shape'])} per frame") from None
        # Row offsets of each data file, to find a frame's image without loading them all.
        self._offsets = np.cumsum([0] + [t.num_rows for t in tables])
        self._image_cache: dict[int, pa.Array] = {}

        self.tasks = self._read_tasks()
        self.episodes = self._episode_bounds()
        self.stats = self._read_stats()
        # Video features: per episode (in self.episodes order) its video file and start time in it.
        self._video_paths: list[Path] = []
        self._video_from = np.zeros(0)
        if self.image_is_video:
            self._video_paths, self._video_from = self._video_index()

    # -- set-up ------------------------------------------------------------------------------------
    def _parquet(self, path: Path, read: Any, **kw: Any) -> Any:
        """``read(path, **kw)``, with a damaged or unreadable parquet file refused in one line naming it."""
        try:
            result = read(path, **kw)
            if isinstance(result, (pa.Table, pa.Schema)):
                _ = result.schema.names if isinstance(result, pa.Table) else result.names  # decoded here, not later
            return result
        except (pa.ArrowException, OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
            rel = path.relative_to(self.root) if path.is_relative_to(self.root) else path
            raise VlatrimError(f"{str(rel)!r} in dataset {str(self.root)!r} is not a readable parquet file "
                               f"({_one_line(e)}); regenerate or re-download the dataset") from None

    def _pick_image_key(self, image_key: str | None) -> str:
        cams = [k for k, ft in self.features.items() if k.startswith(IMAGE_PREFIX)]
        if image_key is None:
            if not cams:
                raise VlatrimError(f"dataset {str(self.root)!r} lacks an image feature 'observation.images.<camera>'")
            image_key = cams[0] if len(cams) == 1 else (IMAGE_PREFIX + "corner" if IMAGE_PREFIX + "corner" in cams else cams[0])
        ft = self.features.get(image_key)
        if ft is None:
            raise VlatrimError(f"dataset {str(self.root)!r} lacks feature {image_key!r}; image features: {', '.join(cams) or '(none)'}")
        shape = tuple(ft.get("shape", ()))
        if ft.get("dtype") not in ("image", "video") or len(shape) != 3 or 3 not in (shape[0], shape[2]):
            raise VlatrimError(f"feature {image_key!r} is {ft.get('dtype')}{list(shape)}, expected image[H, W, 3] or video[H, W, 3]")
        return image_key

    def _read_tasks(self) -> list[str]:
        path = self.root / TASKS_PATH
        if not path.is_file():
            raise VlatrimError(f"dataset {str(self.root)!r} has no {TASKS_PATH}")
        t = self._parquet(path, pq.read_table)
        text_col = next((c for c in ("task", "__index_level_0__") if c in t.column_names), None)
        if text_col is None or "task_index" not in t.column_names:
            raise VlatrimError(f"{TASKS_PATH} in {str(self.root)!r} needs a task text index and a task_index column; has {t.column_names}")
        if not pa.types.is_integer(t["task_index"].type) or t["task_index"].null_count:
            raise VlatrimError(f"{TASKS_PATH} in {str(self.root)!r} has task_index of type {t['task_index'].type} with "
                               f"{t['task_index'].null_count} nulls; expected integers")
        idx = t["task_index"].to_numpy()
        try:
            texts = t[text_col].to_pylist()
        except (pa.ArrowException, UnicodeDecodeError, ValueError) as e:
            raise VlatrimError(f"{TASKS_PATH} in {str(self.root)!r} holds task texts that cannot be read "
                               f"({type(e).__name__}: {_one_line(e)}); expected UTF-8 strings") from None
        if len(idx) and (idx.min() < 0 or idx.max() >= len(idx) + 1_000_000):
            bad = int(idx.min() if idx.min() < 0 else idx.max())
            raise VlatrimError(f"{TASKS_PATH} in {str(self.root)!r} has task_index {bad}; expected 0, 1, ... (one per task)")
        out = [""] * (int(idx.max()) + 1 if len(idx) else 0)
        for i, text in zip(idx.tolist(), texts):
            if not isinstance(text, str):
                raise VlatrimError(f"{TASKS_PATH} in {str(self.root)!r} has task {i} of {type(text).__name__} "
                                   f"{text!r}; expected the task's text")
            out[i] = text
        used = np.unique(self._columns["task_index"]) if "task_index" in self._columns else []
        missing = [int(i) for i in used if not 0 <= i < len(out) or not out[i]]
        if missing:
            raise VlatrimError(f"task_index {missing[0]} in {str(self.root)!r} has no entry in {TASKS_PATH}")
        return out

    def _episode_bounds(self) -> list[Episode]:
        ep = self._columns["episode_index"]
        change = np.flatnonzero(np.diff(ep)) + 1
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [len(ep)]])
        if len(np.unique(ep[starts])) != len(starts):
            raise VlatrimError(f"dataset {str(self.root)!r}: frames of an episode are not contiguous")
        episodes = [
            Episode(int(ep[a]), int(a), int(b), int(self._columns["task_index"][a])) for a, b in zip(starts, stops)
        ]
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if files:  # cross-check lengths against the episodes table (LeRobot's source of truth)
            meta = self._parquet(self.root / "meta" / "episodes", lambda _: pa.concat_tables(
                [self._parquet(f, pq.read_table, columns=["episode_index", "length"]) for f in files]))
            lengths = dict(zip(meta["episode_index"].to_pylist(), meta["length"].to_pylist()))
            for e in episodes:
                if lengths.get(e.episode_index) != e.length:
                    raise VlatrimError(f"episode {e.episode_index} has {e.length} frames in data/ but {lengths.get(e.episode_index)} in meta/episodes")
        return episodes

    def _video_index(self) -> tuple[list[Path], np.ndarray]:
        """Video file and ``from_timestamp`` of every episode, from ``meta/episodes``."""
        key = self.image_key
        cols = [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise VlatrimError(f"dataset {str(self.root)!r} stores {key!r} as video but has no meta/episodes files to locate it")
        tables = []
        for f in files:
            names = self._parquet(f, pq.read_schema).names
            missing = [c for c in cols if c not in names]
            if missing:
                raise VlatrimError(f"video feature {key!r} needs column {missing[0]!r} in {f.relative_to(self.root)}")
            tables.append(self._parquet(f, pq.read_table, columns=["episode_index", *cols]))
        meta = self._parquet(self.root / "meta" / "episodes", lambda _: pa.concat_tables(tables)).to_pydict()
        row = {e: i for i, e in enumerate(meta["episode_index"])}
        template = self._templates.get("video_path") or VIDEO_PATH
        paths, starts = [], []
        for e in self.episodes:
            i = row.get(e.episode_index)
            if i is None:
                raise VlatrimError(f"episode {e.episode_index} of {str(self.root)!r} has no row in meta/episodes (needed to find its video)")
            chunk, file, start = meta[cols[0]][i], meta[cols[1]][i], meta[cols[2]][i]
            if not (isinstance(chunk, int) and isinstance(file, int) and isinstance(start, (int, float))):
                raise VlatrimError(f"episode {e.episode_index} of {str(self.root)!r} has video columns "
                                   f"{cols[0]}={chunk!r}, {cols[1]}={file!r}, {cols[2]}={start!r} in meta/episodes; "
                                   "expected integers and a start time in seconds")
            rel = template.format(video_key=key, chunk_index=chunk, file_index=file)
            path = _inside(self.root, rel, f"video file {rel!r} of feature {key!r} (episode {e.episode_index}, from "
                                           f"the video_path of meta/info.json in dataset {str(self.root)!r})")
            if not path.is_file():
                raise VlatrimError(f"video file {str(path.relative_to(self.root))!r} of feature {key!r} (episode {e.episode_index}) is missing from {str(self.root)!r}")
            paths.append(path)
            starts.append(float(start))
        return paths, np.asarray(starts, np.float64)

    def _read_stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / STATS_PATH
        if not path.is_file():
            return {}
        raw = _read_meta_json(self.root, STATS_PATH)
        out: dict[str, dict[str, np.ndarray]] = {}
        for k, d in raw.items():
            if not isinstance(d, dict):
                raise VlatrimError(f"{STATS_PATH} in dataset {str(self.root)!r} has {_json_kind(d)} for feature {k!r}; "
                                   "expected an object of statistics (min, max, mean, std, count, q01 ... q99)")
            out[k] = {}
            for s, v in d.items():
                try:
                    out[k][s] = np.asarray(v, dtype=np.float64)
                except (ValueError, TypeError):
                    raise VlatrimError(f"{STATS_PATH} in dataset {str(self.root)!r} has {k}/{s} = {str(v)[:40]}; "
                                       "expected a number or an array of numbers") from None
        return out

    # -- column access -----------------------------------------------------------------------------
    def column(self, key: str) -> np.ndarray:
        """A whole non-image feature: (N,) for scalars, (N, D) for vectors (no copy)."""
        try:
            return self._columns[key]
        except KeyError:
            raise VlatrimError(f"dataset {str(self.root)!r} has no column {key!r}; columns: {', '.join(self._columns)}") from None

    @property
    def state(self) -> np.ndarray:
        """float32 (N, S): the robot's state (Meta-World: hand xyz + gripper opening)."""
        return self._columns[STATE_KEY]

    @property
    def action(self) -> np.ndarray:
        """float32 (N, A): the actions (Meta-World: hand displacement + gripper)."""
        return self._columns[ACTION_KEY]

    @property
    def episode_index(self) -> np.ndarray:
        return self._columns["episode_index"]

    @property
    def frame_index(self) -> np.ndarray:
        return self._columns["frame_index"]

    @property
    def task_index(self) -> np.ndarray:
        return self._columns["task_index"]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def instructions(self, indices: Iterable[int] | None = None) -> list[str]:
        """Task text of each frame in ``indices`` (all frames when None)."""
        ti = self.task_index if indices is None else self.task_index[np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)]
        return [self.tasks[int(i)] for i in ti]

    # -- images ------------------------------------------------------------------------------------
    def _file_images(self, file_no: int) -> pa.Array:
        arr = self._image_cache.get(file_no)
        if arr is None:
            col = self._parquet(self._files[file_no], pq.read_table, columns=[self.image_key])[self.image_key]
            col = self._parquet(self._files[file_no], lambda _: col.combine_chunks())
            if not pa.types.is_struct(col.type) or col.type.get_field_index("bytes") < 0:
                raise VlatrimError(f"feature {self.image_key!r} is stored as {col.type}, expected LeRobot's image struct {{bytes, path}}")
            arr = col.field("bytes")
            self._image_cache[file_no] = arr
        return arr

    def image_bytes(self, index: int) -> bytes:
        """The encoded (PNG) image of frame ``index`` (image features only, not video)."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range 0..{self.num_frames - 1}")
        if self.image_is_video:
            raise VlatrimError(f"feature {self.image_key!r} is stored as video: its frames have no per-frame bytes; use images()")
        f = int(np.searchsorted(self._offsets, index, side="right") - 1)
        blob = self._file_images(f)[index - int(self._offsets[f])].as_py()
        if blob is not None and not isinstance(blob, bytes):
            raise VlatrimError(f"frame {index} of {str(self.root)!r} holds {type(blob).__name__} image bytes; expected PNG bytes")
        if blob is None:
            raise VlatrimError(f"frame {index} of {str(self.root)!r} has no embedded image bytes (path-only images are not supported)")
        return blob

    def image(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) image of frame ``index``."""
        if self.image_is_video:
            return self.images([index])[0]
        return self._decode(index, self.image_bytes(index))

    def _decode(self, index: int, blob: bytes) -> np.ndarray:
        try:
            return decode_png(blob)
        except Exception as e:  # Pillow raises many types on damaged bytes (OSError, SyntaxError, zlib.error, ...)
            f = int(np.searchsorted(self._offsets, index, side="right") - 1)
            raise VlatrimError(f"frame {index} of dataset {str(self.root)!r} ({self._files[f].relative_to(self.root)}) "
                               f"holds an image that cannot be decoded ({type(e).__name__}: {_one_line(e)}); expected "
                               "PNG bytes") from None

    def _video_images(self, idx: np.ndarray) -> np.ndarray:
        from vlatrim.utils.video import VideoReader

        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_frames):
            bad = int(idx[(idx < 0) | (idx >= self.num_frames)][0])
            raise IndexError(f"frame {bad} out of range 0..{self.num_frames - 1}")
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        starts = np.asarray([e.start for e in self.episodes])
        ep_of = np.searchsorted(starts, idx, side="right") - 1  # (n,) position in self.episodes
        # Time of each frame in its video file: the episode's start there + the frame's timestamp.
        t = self._video_from[ep_of] + self._columns["timestamp"][idx].astype(np.float64)
        readers: dict[Path, VideoReader] = {}
        try:
            for e in np.unique(ep_of):
                sel = np.flatnonzero(ep_of == e)
                path = self._video_paths[e]
                try:
                    reader = readers.get(path) or readers.setdefault(path, VideoReader(path, self.tolerance_s))
                    frames = reader.frames_at(t[sel])  # (k, H', W', 3)
                except VlatrimError:
                    raise
                except Exception as err:  # PyAV / FFmpeg on damaged bytes: InvalidDataError, EOFError, ...
                    raise VlatrimError(f"video {str(path.relative_to(self.root))!r} of dataset {str(self.root)!r} cannot "
                                       f"be decoded ({type(err).__name__}: {_one_line(err)}); expected an MP4 video "
                                       "(regenerate or re-download the dataset)") from None
                if frames.shape[1:] != self.image_shape:
                    raise VlatrimError(f"video {str(path.relative_to(self.root))!r} has {frames.shape[1]}x{frames.shape[2]} frames, feature {self.image_key!r} is {list(self.image_shape)}")
                out[sel] = frames
        finally:
            for r in readers.values():
                r.close()
        return out

    def images(self, indices: Sequence[int] | np.ndarray | None = None, threads: int = 4) -> np.ndarray:
        """uint8 (n, H, W, 3) images of frames ``indices`` (all frames when None), decoded in threads.

        Video features are decoded one episode at a time (a seek to the key frame before the first
        requested frame, then forward), each video file opened once per call.
        """
        idx = np.arange(self.num_frames) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.image_is_video:
            return self._video_images(idx)
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        blobs = [self.image_bytes(int(i)) for i in idx]

        def work(i: int) -> None:
            im = self._decode(int(idx[i]), blobs[i])
            if im.shape != self.image_shape:
                raise VlatrimError(f"frame {int(idx[i])} image has shape {list(im.shape)}, expected {list(self.image_shape)}")
            out[i] = im

        if len(idx) > 64 and threads > 1:  # Pillow releases the GIL while decoding
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, range(len(idx))))
        else:
            for i in range(len(idx)):
                work(i)
        return out

    # -- frames ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One frame: image, state, action, task_index, instruction, episode_index, frame_index, ..."""
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range 0..{self.num_frames - 1}")
        index %= self.num_frames
        frame = {k: v[index] for k, v in self._columns.items()}
        frame["image"] = self.image(index)
        frame["state"] = self.state[index]
        frame["action"] = self.action[index]
        frame["instruction"] = self.tasks[int(self.task_index[index])]
        return frame

    def __repr__(self) -> str:
        return f"LeRobotDataset({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, tasks={len(self.tasks)}, image={self.image_key}{list(self.image_shape)})"
