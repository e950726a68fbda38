"""Video files as training clips: probed from metadata, cut into clips, decoded only where a clip lies.

Why it works this way:

* **Probe without decoding.** An import plans clips for every file before it
  reads one, and a folder may hold hours of video, so :func:`probe` reads only
  what the container and stream headers say (as ``ffprobe`` does without
  ``-count_frames``). Containers differ in what they record: MP4 stores a frame
  count (the sample table), Matroska/WebM stores none (``stream.frames`` is 0 and
  the stream has no duration of its own, only the segment's), so the frame count
  is then ``round(duration * fps)``. The rate is ``average_rate`` (FFmpeg's
  ``avg_frame_rate``), falling back to ``guessed_rate`` and ``base_rate``
  (``r_frame_rate``) where a container leaves it unset.
* **Clips on a fixed grid.** :func:`clip_starts` lays non-overlapping clips from
  t = 0, so the same file and settings always give the same clips, and a
  resumed import the same samples.
* **Seek, then decode forward.** Compressed video can only be decoded from a
  keyframe, so :func:`read_clip` seeks to the last keyframe at or before the clip
  (``avformat_seek_file``/``av_seek_frame`` with ``AVSEEK_FLAG_BACKWARD``, as
  :meth:`av.container.InputContainer.seek` with ``backward=True`` does) and
  decodes forward, dropping frames before the clip, and stops as soon as the
  clip is complete rather than decoding to the end of the file.
* **Resampled in time by nearest frame.** Clips are sampled at the training
  ``fps``, not the file's: each target time takes the first frame shown at or
  after it, within half a source frame interval (FFmpeg's ``fps`` filter rounds
  to the nearest frame the same way), so a 30 fps file read at 8 fps skips
  frames and a 24 fps file read at 30 fps repeats some. Times are measured from
  the stream's ``start_time``, so a file whose timestamps do not start at 0
  (MPEG-TS, edited MP4) still has its first frame at t = 0.
* **Errors by what happened.** A file that fails to open or decode at once is
  "undecodable"; one that ends (or breaks) partway through a clip the metadata
  promised is "truncated", the usual sign of an interrupted copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.video.stream import VideoStream
from PIL import Image

from jevons.framework.data.media import MediaError, require_file
from jevons.framework.data.media.images import fit

__all__ = ["VideoInfo", "clip_starts", "probe", "read_clip"]


@dataclass(frozen=True)
class VideoInfo:
    """What a video file's metadata says: frame count, rate (frames per second), seconds, frame size."""

    frames: int
    fps: float
    duration: float
    width: int
    height: int


def probe(path: Path) -> VideoInfo:
    """The metadata of the first video stream of ``path``, read from the headers without decoding a frame.

    Raises :class:`MediaError` "missing file", "truncated" (the file ends inside its headers) or "undecodable".
    """
    path = Path(path)
    require_file(path)
    try:
        with _open(path) as container:
            stream = _video_stream(container, path)
            rate = _frame_rate(stream)
            if rate is None:
                raise MediaError("undecodable", f"{path}: the video stream has no frame rate")
            fps = float(rate)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            elif stream.frames > 0:
                duration = stream.frames / fps
            else:
                raise MediaError("undecodable", f"{path}: the container records no duration")
            frames = stream.frames if stream.frames > 0 else round(duration * fps)
            width, height = stream.width, stream.height
    except FileNotFoundError as error:  # av.error.FileNotFoundError too; removed between the check and the open
        raise MediaError("missing file", f"{path}: {error}") from error
    except av.error.EOFError as error:
        raise MediaError("truncated", f"{path}: the file ends inside its headers ({error})") from error
    except av.FFmpegError as error:
        raise MediaError("undecodable", f"{path}: {error}") from error
    if width <= 0 or height <= 0:
        raise MediaError("undecodable", f"{path}: the video stream has no frame size ({width}x{height})")
    return VideoInfo(frames=frames, fps=fps, duration=duration, width=width, height=height)


def clip_starts(info: VideoInfo, fps: float, frames: int, max_clips: int) -> list[float]:
    """Start times (seconds) of up to ``max_clips`` non-overlapping clips of ``frames`` frames at ``fps``, from t = 0.

    A clip lasts ``frames / fps`` seconds; clip ``k`` starts at ``k * frames / fps``. Raises
    :class:`MediaError` "too short" when not even one clip fits in ``info.duration``.
    """
    if fps <= 0 or frames <= 0 or max_clips <= 0:
        raise ValueError(f"fps, frames and max_clips must be positive, got {fps}, {frames}, {max_clips}")
    clip_seconds = frames / fps
    # The epsilon: a 2 s file holds exactly one 2 s clip even when 2.0 / (32 / 16) rounds to 0.9999999.
    count = min(max_clips, math.floor(info.duration / clip_seconds + 1e-6))
    if count < 1:
        raise MediaError("too short", f"{info.duration:.2f} s, a clip needs {clip_seconds:.2f} s")
    return [k * clip_seconds for k in range(count)]


def read_clip(path: Path, start: float, fps: float, frames: int, width: int, height: int) -> np.ndarray:
    """``frames`` frames of ``path`` sampled at ``fps`` from ``start`` seconds, each fitted to ``width`` x ``height``.

    Frame ``i`` is the first decoded frame shown at or after ``start + i / fps`` (less half
    a source frame interval); a frame is used twice when ``fps`` exceeds the file's rate.
    Each is scaled to cover the size and centre-cropped (:func:`~.images.fit`). Returns a
    uint8 array of shape ``(frames, height, width, 3)``.

    Raises :class:`MediaError` "missing file", "undecodable" (nothing could be decoded) or
    "truncated" (the file ends or breaks before the clip is complete).
    """
    if fps <= 0 or frames <= 0:
        raise ValueError(f"fps and frames must be positive, got {fps}, {frames}")
    if start < 0:
        raise ValueError(f"a clip cannot start before the file does, got start={start}")
    path = Path(path)
    require_file(path)
    targets = [start + i / fps for i in range(frames)]
    picked: list[np.ndarray] = []
    decoded = 0
    last_time: float | None = None
    try:
        with _open(path) as container:
            stream = _video_stream(container, path)
            time_base = stream.time_base
            if time_base is None:
                raise MediaError("undecodable", f"{path}: the video stream has no time base")
            origin = stream.start_time or 0
            rate = _frame_rate(stream)
            slack = 0.5 / float(rate) if rate else 0.0
            if start > 0:
                # Lands on the last keyframe at or before the clip; the frames up to the clip are decoded and dropped.
                container.seek(origin + math.floor(start / time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                decoded += 1
                if frame.pts is None:  # no timestamp to place it by
                    continue
                last_time = float((frame.pts - origin) * time_base)
                fitted: np.ndarray | None = None
                while len(picked) < frames and last_time >= targets[len(picked)] - slack:
                    if fitted is None:  # converted once, however many targets it fills
                        fitted = fit(Image.fromarray(frame.to_ndarray(format="rgb24")), width, height)
                    picked.append(fitted)
                if len(picked) == frames:
                    break
    except FileNotFoundError as error:  # av.error.FileNotFoundError too; removed between the check and the open
        raise MediaError("missing file", f"{path}: {error}") from error
    except av.FFmpegError as error:
        if decoded:
            raise MediaError("truncated", f"{path}: decoding broke after {decoded} frames ({error})") from error
        reason = "truncated" if isinstance(error, av.error.EOFError) else "undecodable"
        raise MediaError(reason, f"{path}: {error}") from error
    if len(picked) < frames:
        ends = "no frames" if last_time is None else f"its last frame at {last_time:.2f} s"
        raise MediaError(
            "truncated",
            f"{path}: {ends} from {start:.2f} s; a clip of {frames} frames at {fps:g} fps needs "
            f"frames up to {targets[-1]:.2f} s",
        )
    return np.stack(picked)


def _open(path: Path) -> InputContainer:
    # Metadata in another encoding than UTF-8 (old cameras' titles) must not make a playable file undecodable.
    return av.open(str(path), "r", metadata_errors="replace")


def _video_stream(container: InputContainer, path: Path) -> VideoStream:
    if not container.streams.video:
        raise MediaError("undecodable", f"{path}: no video stream")
    return container.streams.video[0]


def _frame_rate(stream: VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:  # None and 0/1 (unset) fall through
            return rate
    return None
