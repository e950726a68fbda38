"""Decoding users' media for ``jevons data import``: real files written by Pillow, PyAV and soundfile.

Every file is made here, small, by the same libraries the decoders read with, so the
tests check behaviour on real encodings (JPEG's EXIF, PNG palettes, H.264 and VP9
timestamps, FLAC headers) rather than on mocks.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from jevons.framework.data.media import REASONS, MediaError
from jevons.framework.data.media.audio import SAMPLE_RATE, load_mono, probe_seconds
from jevons.framework.data.media.images import fit, load_rgb, nearest_bucket
from jevons.framework.data.media.videos import VideoInfo, clip_starts, probe, read_clip

# ---------------------------------------------------------------------------------------------------------------------
# MediaError


def test_media_error_says_reason_and_detail_and_pickles_back_from_a_worker() -> None:
    error = MediaError("truncated", "a.png: image file is truncated")
    assert (error.reason, error.detail) == ("truncated", "a.png: image file is truncated")
    assert str(error) == "truncated: a.png: image file is truncated"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.detail, str(copy)) == (error.reason, error.detail, str(error))
    assert REASONS == ("missing file", "undecodable", "truncated", "too short", "too long")
    with pytest.raises(ValueError, match="not one of"):
        MediaError("broken", "x")


# ---------------------------------------------------------------------------------------------------------------------
# Images


def _noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_load_rgb_reads_common_formats_as_rgb(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"a{suffix}"
    _noise(24, 16).save(path)
    image = load_rgb(path)
    assert (image.mode, image.size) == ("RGB", (24, 16))


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    source = Image.new("RGB", (40, 20), (255, 255, 255))
    source.paste((0, 0, 0), (0, 0, 20, 20))  # stored left half black
    source.save(path, exif=exif, quality=95)
    image = load_rgb(path)
    assert image.size == (20, 40)  # width and height swapped
    pixels = np.asarray(image)
    assert pixels[:15].mean() < 30 and pixels[25:].mean() > 225  # rotated clockwise: the stored left is now on top


def test_load_rgb_composites_transparency_onto_white(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    palette.paste(1, (0, 0, 2, 4))  # left half red, right half index 0 (black, made transparent)
    palette.save(tmp_path / "palette.png", transparency=0)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 2, 4))
    rgba.save(tmp_path / "rgba.png")
    la = Image.new("LA", (4, 4), (0, 0))
    la.save(tmp_path / "la.png")

    for name, opaque in [("palette.png", (255, 0, 0)), ("rgba.png", (0, 0, 255))]:
        image = load_rgb(tmp_path / name)
        assert image.mode == "RGB"
        pixels = np.asarray(image)
        assert (pixels[:, :2] == opaque).all(), name
        assert (pixels[:, 2:] == 255).all(), name
    assert (np.asarray(load_rgb(tmp_path / "la.png")) == 255).all()


def test_load_rgb_scales_sixteen_bit_grayscale_and_converts_gray_and_cmyk(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"  # what the test relies on Pillow to open it as
    deep = load_rgb(tmp_path / "deep.png")
    assert deep.mode == "RGB"
    assert np.asarray(deep)[0, :, 0].tolist() == [0, 100, 255]

    Image.new("L", (3, 2), 77).save(tmp_path / "gray.png")
    assert (np.asarray(load_rgb(tmp_path / "gray.png")) == 77).all()
    Image.new("CMYK", (3, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert (np.asarray(load_rgb(tmp_path / "cmyk.jpg")) > 250).all()  # no ink: white


def test_load_rgb_reports_truncated_undecodable_and_missing_files(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _noise(64, 64).save(buffer, "PNG")
    data = buffer.getvalue()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # Pillow: OSError("image file is truncated")
    (tmp_path / "text.png").write_text("not an image\n")
    buffer = io.BytesIO()
    _noise(64, 64).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:300])  # inside the headers: OSError("Truncated File Read")

    for name, reason in [
        ("cut.png", "truncated"),
        ("cut.jpg", "truncated"),
        ("text.png", "undecodable"),
        ("absent.png", "missing file"),
    ]:
        with pytest.raises(MediaError) as caught:
            load_rgb(tmp_path / name)
        assert caught.value.reason == reason, (name, str(caught.value))


def test_nearest_bucket_compares_aspect_ratios_in_log_space() -> None:
    buckets = [(512, 512), (768, 384), (384, 768), (640, 480)]
    assert nearest_bucket(1000, 1000, buckets) == (512, 512)
    assert nearest_bucket(1920, 1080, buckets) == (768, 384)  # 1.78: log-distance to 2.0 beats 1.33
    assert nearest_bucket(1080, 1920, buckets) == (384, 768)
    assert nearest_bucket(800, 600, buckets) == (640, 480)
    assert nearest_bucket(3, 2, [(2, 1), (1, 1)]) == (2, 1)  # |log 1.5 - log 2| < |log 1.5 - 0|
    assert nearest_bucket(10, 10, [(2, 1), (1, 2)]) == (2, 1)  # a tie: the first
    with pytest.raises(ValueError):
        nearest_bucket(10, 10, [])


def test_fit_covers_then_crops_the_centre() -> None:
    halves = np.zeros((20, 40, 3), dtype=np.uint8)
    halves[:, 20:] = 255  # left half black, right half white
    out = fit(Image.fromarray(halves), 10, 10)  # scaled to 20x10, columns 5..15 kept
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert out[:, :4].max() < 30 and out[:, 6:].min() > 225  # the middle: half black, half white

    assert fit(_noise(37, 23), 16, 24).shape == (24, 16, 3)  # enlarged and cropped, odd sizes
    assert fit(_noise(300, 200), 30, 20).shape == (20, 30, 3)  # same aspect, shrunk
    assert fit(Image.new("L", (5, 5), 9), 5, 5).tolist() == np.full((5, 5, 3), 9).tolist()  # unchanged


# ---------------------------------------------------------------------------------------------------------------------
# Videos: 32 frames, 64x48, 16 fps; frame i is a uniform gray of 8 * i, so a decoded frame says which it was.

FRAMES, FPS, WIDTH, HEIGHT = 32, 16, 64, 48


def _write_video(path: Path, codec: str) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.gop_size = 8  # keyframes at frames 0, 8, 16, 24: a seek to 1.1 s must land back on frame 16
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((HEIGHT, WIDTH, 3), 8 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _source_indices(clip: np.ndarray) -> list[int]:
    """Which source frame each clip frame is, from its gray level (codecs keep it within a few levels)."""
    levels = clip.reshape(len(clip), -1).mean(axis=1)
    indices = np.round(levels / 8).astype(int)
    assert np.abs(levels - 8 * indices).max() <= 6, levels
    return indices.tolist()


def _encoder(*names: str) -> str:
    for name in names:
        if name in av.codecs_available:
            return name
    pytest.skip(f"this PyAV build has none of the encoders {names}")


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4", _encoder("libx264", "mpeg4"))


@pytest.fixture(scope="module")
def webm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.webm", _encoder("libvpx-vp9", "libvpx"))


def test_probe_reads_metadata(mp4: Path, webm: Path) -> None:
    assert probe(mp4) == VideoInfo(frames=32, fps=16.0, duration=2.0, width=64, height=48)
    info = probe(webm)  # WebM records no frame count: it comes from duration x rate
    assert (info.frames, info.fps, info.width, info.height) == (32, 16.0, 64, 48)
    assert info.duration == pytest.approx(2.0, abs=0.01)


def test_clip_starts_lays_whole_clips_from_zero() -> None:
    info = VideoInfo(frames=32, fps=16.0, duration=2.0, width=64, height=48)
    assert clip_starts(info, fps=8, frames=4, max_clips=10) == [0.0, 0.5, 1.0, 1.5]
    assert clip_starts(info, fps=8, frames=4, max_clips=2) == [0.0, 0.5]
    assert clip_starts(info, fps=16, frames=32, max_clips=3) == [0.0]  # exactly one clip's length
    assert clip_starts(info, fps=8, frames=6, max_clips=10) == [0.0, 0.75]
    with pytest.raises(MediaError, match=r"too short: 2.00 s, a clip needs 2.50 s") as caught:
        clip_starts(info, fps=8, frames=20, max_clips=10)
    assert caught.value.reason == "too short"


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_read_clip_picks_frames_by_time(container: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(container)
    clip = read_clip(path, start=0.0, fps=8, frames=5, width=32, height=32)
    assert clip.shape == (5, 32, 32, 3) and clip.dtype == np.uint8
    assert _source_indices(clip) == [0, 2, 4, 6, 8]  # half the source rate: every other frame
    clip = read_clip(path, start=1.0, fps=8, frames=4, width=16, height=12)  # after a seek
    assert _source_indices(clip) == [16, 18, 20, 22]
    clip = read_clip(path, start=1.1, fps=8, frames=4, width=16, height=12)  # between frames: the nearest ones
    assert _source_indices(clip) == [18, 20, 22, 24]
    clip = read_clip(path, start=0.5, fps=32, frames=6, width=16, height=12)  # twice the source rate
    assert _source_indices(clip) == [8, 8, 9, 9, 10, 10]
    assert _source_indices(read_clip(path, start=1.75, fps=16, frames=4, width=8, height=8)) == [28, 29, 30, 31]


def test_read_clip_reports_a_clip_past_the_end(mp4: Path) -> None:
    with pytest.raises(MediaError) as caught:
        read_clip(mp4, start=1.5, fps=8, frames=8, width=16, height=16)
    assert caught.value.reason == "truncated"


def test_truncated_and_broken_videos_raise_media_errors(tmp_path: Path, mp4: Path, webm: Path) -> None:
    data = mp4.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # MP4 writes its index (moov) last: cannot open
    with pytest.raises(MediaError) as caught:
        probe(tmp_path / "cut.mp4")
    assert caught.value.reason in {"undecodable", "truncated"}
    with pytest.raises(MediaError):
        read_clip(tmp_path / "cut.mp4", start=0.0, fps=8, frames=4, width=16, height=16)

    data = webm.read_bytes()
    (tmp_path / "cut.webm").write_bytes(data[: len(data) // 2])  # the header (and its duration) survives the cut
    assert probe(tmp_path / "cut.webm").frames == 32
    with pytest.raises(MediaError) as caught:
        read_clip(tmp_path / "cut.webm", start=0.0, fps=16, frames=32, width=16, height=16)
    assert caught.value.reason == "truncated"

    (tmp_path / "text.mp4").write_text("not a video\n")

    def read(path: Path) -> object:
        return read_clip(path, 0.0, 8, 4, 16, 16)

    for call in (probe, read):
        with pytest.raises(MediaError) as caught:
            call(tmp_path / "text.mp4")
        assert caught.value.reason == "undecodable"
        with pytest.raises(MediaError) as caught:
            call(tmp_path / "absent.mp4")
        assert caught.value.reason == "missing file"


# ---------------------------------------------------------------------------------------------------------------------
# Audio


def _sine(seconds: float, rate: int, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def _peak_hz(signal: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[np.argmax(spectrum)])


def test_load_mono_downmixes_and_resamples_keeping_pitch(tmp_path: Path) -> None:
    sine = _sine(0.5, 44100)
    soundfile.write(tmp_path / "stereo.wav", np.stack([sine, sine], axis=1), 44100)
    audio = load_mono(tmp_path / "stereo.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == round(0.5 * SAMPLE_RATE)
    assert abs(_peak_hz(audio, SAMPLE_RATE) - 440) <= 2.5  # FFT bins are 2 Hz wide at 0.5 s
    assert np.abs(audio[1000:-1000]).max() == pytest.approx(0.5, abs=0.02)  # equal channels: level kept

    soundfile.write(tmp_path / "left.wav", np.stack([sine, np.zeros_like(sine)], axis=1), 44100)
    assert np.abs(load_mono(tmp_path / "left.wav", sample_rate=44100)).max() == pytest.approx(0.25, abs=1e-3)


def test_load_mono_reads_a_segment_and_flac_at_the_target_rate(tmp_path: Path) -> None:
    ramp = (np.arange(16000) / 16000).astype(np.float32) - 0.5  # the value says where in the file it is
    soundfile.write(tmp_path / "ramp.flac", ramp, 16000, subtype="PCM_24")
    assert probe_seconds(tmp_path / "ramp.flac") == pytest.approx(1.0)
    whole = load_mono(tmp_path / "ramp.flac")
    np.testing.assert_allclose(whole, ramp, atol=1e-6)  # same rate: no resampling
    segment = load_mono(tmp_path / "ramp.flac", offset=0.25, duration=0.5)
    assert len(segment) == 8000
    np.testing.assert_allclose(segment, ramp[4000:12000], atol=1e-6)
    assert len(load_mono(tmp_path / "ramp.flac", offset=0.75, duration=1.0)) == 4000  # to the end, as soundfile
    assert len(load_mono(tmp_path / "ramp.flac", sample_rate=8000, offset=0.5)) == 4000
    with pytest.raises(MediaError, match="too short") as caught:
        load_mono(tmp_path / "ramp.flac", offset=1.0)
    assert caught.value.reason == "too short"


def test_audio_errors(tmp_path: Path) -> None:
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for call in (load_mono, probe_seconds):
        with pytest.raises(MediaError) as caught:
            call(tmp_path / "noise.wav")
        assert caught.value.reason == "undecodable"
        with pytest.raises(MediaError) as caught:
            call(tmp_path / "absent.flac")
        assert caught.value.reason == "missing file"
