"""Video storage benchmark -> benchmarks/results/video.json.

On real Meta-World frames (scripted-expert demonstrations at 96 px, made with
vlatrim.sim.backends.metaworld.demos.generate_demos):
1. dataset images as PNGs in the parquet (the default) vs MP4 video (`vlatrim data metaworld --video`,
   H.264 yuv444p CRF 12), and beside it two other encodings: H.264 yuv420p CRF 18 and LeRobot's own
   default (AV1 libsvtav1, yuv420p, CRF 30, key frame every 2 frames): bytes on disk, encode frames/s
   (PNG dataset -> video dataset through LeRobotWriter), bulk read frames/s of
   `LeRobotDataset.images()`;
2. the fidelity of each video: pixel error of the decoded frames against the PNG (lossless) originals
   (mean, 99th percentile and max absolute error in grey levels, PSNR);
3. `vlatrim eval --video` clips: MP4 vs GIF of the same episode, bytes and write time.
Timings are medians of --repeats runs after one warm-up.

Usage: python benchmarks/bench_video.py [--tasks drawer-open,reach,button-press-topdown] [--episodes 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlatrim.data.lerobot import LeRobotDataset, LeRobotWriter, metaworld_features  # noqa: E402
from vlatrim.errors import VlatrimError  # noqa: E402
from vlatrim.sim.backends.metaworld.demos import DemoConfig, generate_demos  # noqa: E402
from vlatrim.utils.io import write_json_atomic  # noqa: E402
from vlatrim.utils.video import available_encoders, pick_encoder, stream_info, write_clip  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "video.json"


def dir_bytes(root: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern) if p.is_file())


VARIANTS = {  # name -> LeRobotWriter video options
    "h264_yuv444p_crf12 (vlatrim default)": {},
    "h264_yuv420p_crf18": {"video_pix_fmt": "yuv420p", "video_crf": 18},
    "av1_yuv420p_crf30_gop2 (LeRobot default)": {"video_codec": "libsvtav1", "video_crf": 30, "video_gop": 2},
}


def to_video(src: LeRobotDataset, images: np.ndarray, out: Path, **opts) -> float:
    """Write ``src`` again with the camera as video; returns seconds."""
    t0 = time.perf_counter()
    with LeRobotWriter(out, metaworld_features(src.image_shape[0], video=True), fps=src.fps, robot_type="sawyer", **opts) as w:
        for e in src.episodes:
            sl = slice(e.start, e.stop)
            w.add_episode({"observation.images.corner": images[sl], "observation.state": src.state[sl], "action": src.action[sl],
                           "next.success": src.column("next.success")[sl]}, src.tasks[e.task_index])
    return time.perf_counter() - t0


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="drawer-open,reach,button-press-topdown")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=None, help="an existing PNG dataset to use instead of generating one")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data:
            png_dir = Path(args.data)
        else:
            png_dir = tmp / "png"
            generate_demos(DemoConfig(tasks=args.tasks, episodes_per_task=args.episodes, image_size=96), png_dir, progress=False)
        png = LeRobotDataset(png_dir)
        n = png.num_frames
        png_decode_s, png_runs = timed(lambda: png.images(), args.repeats)
        ref = png.images()
        png_bytes = dir_bytes(png_dir / "data", "*.parquet")
        variants = {}
        for name, opts in VARIANTS.items():
            try:
                pick_encoder(opts.get("video_codec"))
            except VlatrimError as e:  # e.g. no libsvtav1 in this PyAV build
                variants[name] = {"skipped": str(e)}
                continue
            vid_dir = tmp / f"video{len(variants)}"
            encode_s = statistics.median(to_video(png, ref, tmp / f"enc{len(variants)}_{i}", **opts) for i in range(args.repeats))
            to_video(png, ref, vid_dir, **opts)
            vid = LeRobotDataset(vid_dir)
            vid_decode_s, vid_runs = timed(vid.images, args.repeats)
            d = np.abs(ref.astype(np.int16) - vid.images().astype(np.int16))
            mse = float((d.astype(np.float64) ** 2).mean())
            video_bytes = dir_bytes(vid_dir / "videos", "*.mp4")
            variants[name] = {
                "options": opts,
                "stream": stream_info(next((vid_dir / "videos").rglob("*.mp4"))),
                "video_bytes": video_bytes,
                "size_ratio_png_over_video": round(png_bytes / video_bytes, 2),
                "encode_frames_per_second": round(n / encode_s, 1),
                "read_all_frames_per_second": round(n / vid_decode_s, 1),
                "read_runs_seconds": [round(x, 4) for x in vid_runs],
                "mean_abs_error": round(float(d.mean()), 3),
                "p99_abs_error": float(np.percentile(d, 99)),
                "max_abs_error": int(d.max()),
                "psnr_db": round(10 * np.log10(255**2 / mse), 2) if mse > 0 else None,
            }

        # One eval-style clip: the longest episode, 30 fps.
        e = max(png.episodes, key=lambda e: e.length)
        clip = list(ref[e.start : e.stop])
        mp4_s, _ = timed(lambda: write_clip(tmp / "clip.mp4", clip, 30, "mp4"), args.repeats)
        gif_s, _ = timed(lambda: write_clip(tmp / "clip.gif", clip, 30, "gif"), args.repeats)

        result = {
            "benchmark": "video",
            "device": f"CPU: {platform.machine()}, {os.cpu_count()} cores; MUJOCO_GL={os.environ.get('MUJOCO_GL')}",
            "note": "shared machine: other engineers' jobs may have run concurrently (see load averages); timings are noisy",
            "command": "python benchmarks/bench_video.py " + " ".join(sys.argv[1:]),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "encoders": available_encoders(),
            "dataset": {
                "tasks": args.tasks, "episodes": png.num_episodes, "frames": n, "image_size": png.image_shape[0],
                "png_parquet_bytes": png_bytes,
                "png_read_all_frames_per_second": round(n / png_decode_s, 1),
                "png_read_runs_seconds": [round(x, 4) for x in png_runs],
            },
            "video_variants": variants,
            "eval_clip": {
                "frames": len(clip), "fps": 30,
                "mp4_bytes": (tmp / "clip.mp4").stat().st_size, "gif_bytes": (tmp / "clip.gif").stat().st_size,
                "mp4_write_seconds": round(mp4_s, 4), "gif_write_seconds": round(gif_s, 4),
            },
        }
    write_json_atomic(RESULTS, result)
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
