"""Video files through PyAV (FFmpeg's libraries): MP4 writing, timestamp-addressed decoding, GIFs.

MP4 is H.264 when PyAV's FFmpeg has an H.264 encoder (``libx264``, else ``libopenh264``); without
either it falls back to MPEG-4 Part 2 (``mpeg4``), which every FFmpeg has and common players read.
Frames are uint8 (H, W, 3) RGB. Encoders that subsample chroma (pixel format ``yuv420p``) need even
sides; ``VideoWriter`` either pads odd frames by one replicated row/column (``odd="pad"``, for
viewing) or switches to ``yuv444p`` (``odd="yuv444p"``, for datasets whose frame shape must stay
exact; libx264 only).

Decoding addresses frames by presentation time (seconds), as LeRobot does: a request is served by the
decoded frame nearest to it, and must lie within ``tolerance_s`` of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vlatrim.errors import VlatrimError
from vlatrim.registry import Registry

# Encoders in order of preference: H.264 (two implementations), then MPEG-4 Part 2 (always built in).
MP4_ENCODERS: tuple[str, ...] = ("libx264", "libopenh264", "mpeg4")
# Pixel formats that store chroma at half resolution and therefore need even frame sides.
_SUBSAMPLED = ("yuv420p", "yuv422p", "nv12")


def _av() -> Any:
    try:
        import av
    except ImportError:  # a declared dependency; a clear message if the install lacks it
        raise VlatrimError("video needs PyAV ('av' on PyPI): pip install 'av>=14'") from None
    return av


def available_encoders() -> list[str]:
    """The encoders of ``MP4_ENCODERS`` that this PyAV build can open for writing."""
    av = _av()
    out = []
    for name in MP4_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # UnknownCodecError (name not built in)
            continue
        out.append(name)
    return out


def pick_encoder(preferred: str | None = None) -> str:
    """An MP4 video encoder: ``preferred`` if given (it must exist), else the first available one.

    Raises:
        VlatrimError: ``preferred`` is not available (the message lists what is).
    """
    have = available_encoders()
    if preferred is not None:
        av = _av()
        try:
            av.codec.Codec(preferred, "w")
        except Exception:
            raise VlatrimError(f"video encoder {preferred!r} is not in this PyAV build; available: {', '.join(have) or '(none)'}") from None
        return preferred
    if not have:
        raise VlatrimError(f"this PyAV build has none of the video encoders {', '.join(MP4_ENCODERS)}")
    return have[0]


class VideoWriter:
    """Stream uint8 (H, W, 3) RGB frames into an MP4 file; frame k is shown at ``k / fps`` seconds.

    Args:
        path: the ``.mp4`` file to create (overwritten).
        fps: frames per second (an integer rate keeps every timestamp exact).
        codec: encoder name; default: the first of ``MP4_ENCODERS`` this PyAV has.
        pix_fmt: pixel format of the stream (``yuv420p`` plays everywhere).
        crf: constant-rate-factor quality for libx264 / libsvtav1 (lower = better; None: the encoder's
            default; other encoders ignore it).
        gop: maximum frames between key frames (smaller: faster random access, larger files).
        odd: what to do with an odd frame side under a chroma-subsampled ``pix_fmt``: ``"pad"``
            replicates the last row/column (the decoded video is then one pixel larger), or
            ``"yuv444p"`` switches the pixel format (exact size; needs libx264).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: int,
        codec: str | None = None,
        pix_fmt: str = "yuv420p",
        crf: int | None = 23,
        gop: int | None = None,
        odd: str = "pad",
    ) -> None:
        if fps <= 0:
            raise VlatrimError(f"video fps must be positive, got {fps}")
        if odd not in ("pad", "yuv444p"):
            raise VlatrimError(f"odd-size handling {odd!r} is not one of: pad, yuv444p")
        self.path = Path(path)
        self.fps = int(fps)
        self.codec = pick_encoder(codec)
        self.pix_fmt = pix_fmt
        self.crf, self.gop, self.odd = crf, gop, odd
        self.frames = 0  # frames written so far
        self.bytes = 0  # bytes of encoded packets muxed so far (the file is about this size)
        self.shape: tuple[int, int] | None = None  # (H, W) of the input frames
        self._pad = (0, 0)  # rows, columns added to each frame
        self._container: Any = None
        self._stream: Any = None

    def _open(self, h: int, w: int) -> None:
        av = _av()
        pad_h, pad_w = h % 2, w % 2
        if (pad_h or pad_w) and self.pix_fmt in _SUBSAMPLED:
            if self.odd == "yuv444p":
                if self.codec != "libx264":
                    raise VlatrimError(f"an odd frame size {h}x{w} needs yuv444p, which encoder {self.codec!r} lacks (only libx264 has it)")
                self.pix_fmt = "yuv444p"
            else:
                self._pad = (pad_h, pad_w)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, str] = {}
        if self.crf is not None and self.codec in ("libx264", "libsvtav1"):
            options["crf"] = str(self.crf)
        if self.gop is not None:
            options["g"] = str(self.gop)
        if self.codec == "mpeg4":  # its default bit rate blurs small frames badly: fixed quantiser 2
            options.update({"flags": "+qscale", "global_quality": str(2 * 118)})  # 118 = FF_QP2LAMBDA
        self._container = av.open(str(self.path), mode="w", format="mp4")  # explicit: temp names lack .mp4
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps), options=options)
        stream.width, stream.height = w + self._pad[1], h + self._pad[0]
        stream.pix_fmt = self.pix_fmt
        stream.time_base = Fraction(1, self.fps)  # pts k = frame k: timestamps exactly k / fps
        self._stream = stream
        self.shape = (h, w)

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 (H, W, 3) RGB frame (every frame must have the first one's size)."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise VlatrimError(f"video frames must be uint8 (H, W, 3), got {frame.dtype}{list(frame.shape)}")
        if self._container is None:
            self._open(frame.shape[0], frame.shape[1])
        elif frame.shape[:2] != self.shape:
            raise VlatrimError(f"video frame {self.frames} is {frame.shape[0]}x{frame.shape[1]}, the video is {self.shape[0]}x{self.shape[1]}")
        if any(self._pad):
            frame = np.pad(frame, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        vf = _av().VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames
        self._mux(self._stream.encode(vf))
        self.frames += 1

    def _mux(self, packets: Sequence[Any]) -> None:
        for p in packets:
            self.bytes += p.size
        self._container.mux(packets)

    def close(self) -> None:
        """Flush the encoder and finish the file (a writer that got no frame writes nothing)."""
        if self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def stream_info(path: str | os.PathLike) -> dict[str, Any]:
    """Codec, pixel format, size, rate and frame count of the first video stream of ``path``."""
    av = _av()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return {
            "codec": s.codec_context.name,
            "canonical_codec": s.codec.canonical_name if hasattr(s.codec, "canonical_name") else s.codec_context.name,
            "pix_fmt": s.codec_context.pix_fmt,
            "height": s.codec_context.height,
            "width": s.codec_context.width,
            "fps": float(s.average_rate) if s.average_rate else None,
            "frames": int(s.frames),
        }


class VideoReader:
    """Decode frames of one video file by presentation time.

    Args:
        path: the video file.
        tolerance_s: a requested time must be within this many seconds of the frame that serves it
            (LeRobot's default is 1e-4 s).
    """

    def __init__(self, path: str | os.PathLike, tolerance_s: float = 1e-4) -> None:
        self.path = Path(path)
        self.tolerance_s = float(tolerance_s)
        if not self.path.is_file():
            raise VlatrimError(f"video file {str(self.path)!r} does not exist")
        av = _av()
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as e:
            raise VlatrimError(f"video file {str(self.path)!r} cannot be read ({e})") from None
        self._stream.thread_type = "AUTO"  # FFmpeg's own decoding threads
        # One converter for every frame: a frame's own to_ndarray(format=...) sets up a new swscale
        # context each time, which costs more than decoding a 96 px frame (~6x slower for yuv444p).
        self._reformatter = av.video.reformatter.VideoReformatter()

    def _rgb(self, frame: Any) -> np.ndarray:
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()  # (H, W, 3) uint8

    def frames_at(self, times: Sequence[float] | np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) RGB frames shown at ``times`` (seconds, any order, repeats allowed).

        Seeks to the key frame at or before the earliest time and decodes forward to the latest.

        Raises:
            VlatrimError: no decoded frame lies within ``tolerance_s`` of a requested time.
        """
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if len(times) == 0:
            return np.empty((0, 0, 0, 3), np.uint8)
        order = np.argsort(times, kind="stable")
        sorted_t = times[order]
        lo, hi = sorted_t[0] - self.tolerance_s, sorted_t[-1] + self.tolerance_s
        tb = self._stream.time_base
        self._container.seek(max(int(lo / tb), 0), stream=self._stream, backward=True, any_frame=False)
        best_dt = np.full(len(times), np.inf)  # per sorted request: distance to the nearest frame so far
        best: list[np.ndarray | None] = [None] * len(times)
        nearest = np.full(len(times), np.nan)
        for frame in self._container.decode(self._stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * tb)
            if t > hi:
                break
            if t < lo:
                continue
            # requests this frame could serve: those within the tolerance of t
            a = np.searchsorted(sorted_t, t - self.tolerance_s, side="left")
            b = np.searchsorted(sorted_t, t + self.tolerance_s, side="right")
            if a == b:
                continue
            rgb = None
            for j in range(a, b):
                dt = abs(sorted_t[j] - t)
                if dt < best_dt[j]:
                    rgb = self._rgb(frame) if rgb is None else rgb
                    best_dt[j], best[j], nearest[j] = dt, rgb, t
        missing = np.flatnonzero(~np.isfinite(best_dt))
        if len(missing):
            j = int(missing[0])
            raise VlatrimError(
                f"video {str(self.path)!r} has no frame within {self.tolerance_s} s of t={sorted_t[j]:.6f} s "
                f"({len(missing)} of {len(times)} requested times unmatched); its timestamps do not fit the dataset's"
            )
        out = np.stack(best)  # (n, H, W, 3) in sorted order
        result = np.empty_like(out)
        result[order] = out
        return result

    def all_frames(self) -> tuple[np.ndarray, np.ndarray]:
        """Every frame: uint8 (N, H, W, 3) and their times in seconds float64 (N,)."""
        self._container.seek(0, stream=self._stream, backward=True)
        frames, times = [], []
        for frame in self._container.decode(self._stream):
            frames.append(self._rgb(frame))
            times.append(float(frame.pts * self._stream.time_base) if frame.pts is not None else np.nan)
        if not frames:
            raise VlatrimError(f"video file {str(self.path)!r} holds no frames")
        return np.stack(frames), np.asarray(times)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


# ------------------------------------------------------------------------------- whole-clip formats
# Video formats of `vlatrim eval --video-format`: name (also the file extension) -> writer of a clip.
VideoFormatWriter = Callable[[Path, Sequence[np.ndarray], int], None]
VIDEO_FORMATS: Registry[VideoFormatWriter] = Registry("video format")


@VIDEO_FORMATS.register("mp4")
def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: int) -> None:
    """An H.264 MP4 (yuv420p, CRF 23; odd sides padded by one replicated row/column)."""
    with VideoWriter(path, fps, odd="pad") as w:
        for f in frames:
            w.write(f)


@VIDEO_FORMATS.register("gif")
def write_gif(path: Path, frames: Sequence[np.ndarray], fps: int) -> None:
    """An animated, looping GIF (imageio; 256-colour palette)."""
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)


def write_clip(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: int, fmt: str = "mp4") -> Path:
    """Write ``frames`` to ``path`` (any name) in format ``fmt`` (a ``VIDEO_FORMATS`` name), atomically."""
    from vlatrim.utils.io import atomic_path

    writer = VIDEO_FORMATS.get(fmt)
    path = Path(path)
    with atomic_path(path) as tmp:
        writer(tmp, frames, fps)
    return path
