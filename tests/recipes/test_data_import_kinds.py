"""Each kind of ``jevons data import`` on real files made with the real libraries (Pillow, PyAV, soundfile,
pyarrow), every bad input counted by reason, and 10 training steps of the family's recipe on the import."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jevons.framework.data.importing.engine import run_import
from jevons.framework.data.reader import ShardDataset
from jevons.framework.data.shards import decode_npy, read_index
from jevons.recipes.diffusion.importer import ImageImporter, MediaImportOptions, VideoImporter, VideoImportOptions
from jevons.recipes.llm.importer import TextImporter, TextImportOptions
from jevons.recipes.speech.importer import AudioImporter, AudioImportOptions

TEN_STEPS = ("trainer.max_steps=10", "trainer.val_check_interval=10", "trainer.limit_val_batches=1")


def _report(out: Path) -> dict[str, Any]:
    return json.loads((out / "import_report.json").read_text())


def _raw(out: Path, split: str = "train") -> list[dict[str, Any]]:
    dataset = ShardDataset(read_index(out / f"{split}.json"), lambda s: s, "strict")
    return [dataset.raw(i) for i in range(len(dataset))]


def _run_config(result: Any) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((Path(result.run_dir) / "config.yaml").read_text())


def _smooth_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A colour gradient with a random tint: smooth, so JPEG and WebP keep it close."""
    y, x = np.mgrid[0:height, 0:width]
    tint = rng.uniform(0, 255, size=3)
    return np.stack(
        [(x * 255 // width + tint[0]) % 256, (y * 255 // height + tint[1]) % 256, np.full_like(x, int(tint[2]))], -1
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of captioned PNG, JPEG (EXIF-rotated), WebP, palette and RGBA images with four bad files, and an
    imagefolder ``metadata.jsonl`` with labels and a missing file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("images")
    for number in range(12):
        image = Image.fromarray(_smooth_image(rng, 48, 32))
        kind = ("png", "jpg", "webp")[number % 3]
        image.save(folder / f"img{number:02d}.{kind}")
        (folder / f"img{number:02d}.txt").write_text(f"a gradient, number {number}")
    rotated = Image.fromarray(_smooth_image(rng, 40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    rotated.save(folder / "rotated.jpg", exif=exif)
    (folder / "rotated.txt").write_text("a rotated photo")
    Image.fromarray(_smooth_image(rng, 32, 32)).convert("P").save(folder / "palette.png")
    (folder / "palette.txt").write_text("a palette image")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16, :, :] = (255, 0, 0, 255)  # opaque red top half, transparent bottom half
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    (folder / "rgba.txt").write_text("red over nothing")
    whole = (folder / "img00.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])  # truncated
    (folder / "cut.txt").write_text("a cut file")
    (folder / "notes.png").write_text("not an image")  # undecodable
    (folder / "notes.txt").write_text("a text file named .png")
    Image.fromarray(_smooth_image(rng, 32, 32)).save(folder / "uncaptioned.png")  # empty caption
    (folder / "copy.png").write_bytes(whole)  # duplicate: img00's bytes and caption
    (folder / "copy.txt").write_text("a gradient, number 0")

    labelled = tmp_path_factory.mktemp("labelled")
    rows = []
    for number in range(6):
        Image.fromarray(_smooth_image(rng, 32, 32)).save(labelled / f"digit{number}.png")
        rows.append({"file_name": f"digit{number}.png", "text": f"class {number % 3}", "label": number % 3})
    rows.append({"file_name": "gone.png", "text": "deleted", "label": 1})  # missing file
    (labelled / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder, labelled


def test_images_import_counts_bad_files_and_trains(
    images: tuple[Path, Path], tmp_path: Path, train: Callable[..., Any], smoke: dict[str, list[str]]
) -> None:
    folder, labelled = images
    out = tmp_path / "images"
    options = MediaImportOptions(
        out=str(out),
        resolution=16,
        workers=0,
        val_fraction=0.25,
        records_per_shard=8,
        progress=False,
        max_skipped_fraction=0.5,
    )
    run_import(ImageImporter(options), [str(folder), str(labelled)])
    report = _report(out)
    assert report["skipped"] == {
        "duplicate": 1,
        "empty caption": 1,
        "missing file": 1,
        "truncated": 1,
        "undecodable": 1,
    }
    assert report["samples"]["train"] + report["samples"]["val"] == 12 + 3 + 6
    samples = {s["txt"].decode(): s for split in ("train", "val") for s in _raw(out, split)}
    rgba = decode_npy(samples["red over nothing"]["frames.npy"])
    assert rgba.shape == (1, 16, 16, 3) and rgba.dtype == np.uint8
    assert tuple(rgba[0, 2, 8]) == (255, 0, 0) and tuple(rgba[0, 13, 8]) == (255, 255, 255)  # alpha onto white
    assert json.loads(samples["class 2"]["labels.json"]) == [2, 10]
    assert json.loads(samples["a palette image"]["labels.json"]) == [10, 10]  # no label: the unconditional class
    meta = json.loads((out / "meta.json").read_text())
    assert meta["channels"] == 3 and meta["num_labels"] == 3 and meta["sizes"] == {"16x16": 21}
    assert read_index(out / "train.json").length_names == ["tokens", "frames"]

    result = train(
        [*smoke["diffusion"], f"data.source={out}", "sample.fd_samples=0", *TEN_STEPS, f"run.root={tmp_path}"]
    )
    assert result.summary["steps"] == 10
    assert _run_config(result)["model"]["channels"] == 3  # taken from the import


def test_images_keep_aspect_ratio_buckets(images: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = images
    options = MediaImportOptions(
        out=str(tmp_path / "out"),
        buckets=["32x16", "16x16", "16x32"],
        workers=0,
        progress=False,
        max_skipped_fraction=0.5,
    )
    run_import(ImageImporter(options), [str(folder)])
    sizes = json.loads((tmp_path / "out" / "meta.json").read_text())["sizes"]
    # 48x32 gradients are nearest 32x16, the square ones 16x16, and the EXIF-rotated 40x20 photo stands up: 16x32.
    assert sizes == {"16x16": 2, "16x32": 1, "32x16": 12}
    lengths = {tuple(row) for row in read_index(tmp_path / "out" / "train.json").lengths.tolist()}
    assert lengths <= {(2, 1), (1, 1)}, "tokens: one per 16 x 16 patch"


def _write_video(path: Path, frames: int, fps: int, codec: str, size: tuple[int, int] = (32, 32)) -> None:
    """Frame ``i`` is uniformly gray at level ``8 * i``, so a clip shows which frames were read."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for number in range(frames):
            image = np.full((size[1], size[0], 3), min(255, 8 * number), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_videos_import_clips_and_trains(tmp_path: Path, train: Callable[..., Any], smoke: dict[str, list[str]]) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for number in range(6):
        _write_video(folder / f"clip{number}.mp4", 32, 16, "libx264")
        (folder / f"clip{number}.txt").write_text(f"fading up, take {number}")
    _write_video(folder / "web.webm", 32, 16, "libvpx-vp9")  # no frame count in the container
    (folder / "web.txt").write_text("fading up on the web")
    _write_video(folder / "short.mp4", 4, 16, "libx264")  # too short for one clip
    (folder / "short.txt").write_text("a blink")
    out = tmp_path / "out"
    options = VideoImportOptions(
        out=str(out),
        resolution=16,
        fps=8,
        frames=5,
        max_clips=2,
        workers=0,
        val_fraction=0.2,
        progress=False,
        max_skipped_fraction=0.5,
    )
    run_import(VideoImporter(options), [str(folder)])
    report = _report(out)
    assert report["skipped"] == {"too short": 1}
    assert (
        report["samples"]["train"] + report["samples"]["val"] == 7 * 2
    )  # two 5-frame clips at 8 fps of each 2 s video
    clips = {s["__key__"]: decode_npy(s["frames.npy"]) for split in ("train", "val") for s in _raw(out, split)}
    second = next(v for k, v in clips.items() if k.endswith("web-c1"))
    assert second.shape == (5, 16, 16, 3)
    levels = second[:, 8, 8, 0].astype(int)
    assert np.abs(levels - 8 * np.array([10, 12, 14, 16, 18])).max() <= 6, levels  # 8 fps from 16: every other frame

    result = train(
        [
            *smoke["diffusion"],
            "recipe=video_tiny",
            "data.frames=4",
            f"data.source={out}",
            "sample.fd_samples=0",
            *TEN_STEPS,
            f"run.root={tmp_path}",
        ]
    )
    assert result.summary["steps"] == 10


def test_audio_import_resamples_filters_and_trains(
    tmp_path: Path, train: Callable[..., Any], smoke: dict[str, list[str]]
) -> None:
    import soundfile

    folder = tmp_path / "audio"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog again".split()
    for number in range(16):
        seconds = 0.6 + 0.1 * (number % 5)
        rate, suffix = (44100, "wav") if number % 2 else (16000, "flac")
        audio = 0.1 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)
        channels = np.stack([audio, audio], -1) if number % 2 else audio  # stereo WAVs are mixed to mono
        soundfile.write(folder / f"utt{number:02d}.{suffix}", channels, rate)
        (folder / f"utt{number:02d}.txt").write_text(" ".join(rng.choice(words, size=4)).upper() + "!")
    soundfile.write(folder / "blip.flac", np.zeros(800), 16000)  # 0.05 s: too short
    (folder / "blip.txt").write_text("blip")
    soundfile.write(folder / "speech.flac", np.zeros(16000 * 3), 16000)  # too long for max_seconds=2
    (folder / "speech.txt").write_text("a long one")
    (folder / "noise.wav").write_bytes(b"RIFF not really a wave file")  # undecodable
    (folder / "noise.txt").write_text("noise")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        json.dumps({"audio_filepath": "audio/speech.flac", "text": "the middle second", "offset": 1.0, "duration": 1.0})
        + "\n"
        + json.dumps({"audio_filepath": "audio/missing.flac", "text": "gone", "duration": 1.0})
        + "\n"
        + json.dumps({"audio_filepath": "audio/utt00.flac", "text": "bad times", "offset": "soon"})
        + "\n"
    )
    out = tmp_path / "out"
    options = AudioImportOptions(
        out=str(out),
        min_seconds=0.5,
        max_seconds=2.0,
        workers=0,
        val_fraction=0.25,
        progress=False,
        max_skipped_fraction=0.5,
    )
    run_import(AudioImporter(options), [str(folder), str(manifest)])
    report = _report(out)
    assert report["skipped"] == {"missing file": 1, "too long": 1, "too short": 1, "undecodable": 2}
    samples = {s["txt"].decode(): s for split in ("train", "val") for s in _raw(out, split)}
    assert len(samples) == 17 and "the middle second" in samples
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sample_rate"] == 16000 and set(meta["vocabulary"]) <= set(" abcdefghijklmnopqrstuvwxyz'")
    lengths = read_index(out / "train.json").lengths
    assert lengths.shape[1] == 2 and lengths[:, 0].min() >= 50  # 10 ms frames of at least 0.6 s

    result = train([*smoke["speech"], f"data.source={out}", *TEN_STEPS, f"run.root={tmp_path}"])
    assert result.summary["steps"] == 10


def test_text_import_trains_the_llm(tmp_path: Path, train: Callable[..., Any], smoke: dict[str, list[str]]) -> None:
    from pydoc_data import topics

    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = sorted(set(topics.topics.values()))[:200]
    pq.write_table(pa.table({"content": texts}), tmp_path / "topics.parquet")
    out = tmp_path / "out"
    run_import(
        TextImporter(TextImportOptions(out=str(out), text_field="content", vocab_size=400, workers=0, progress=False)),
        [str(tmp_path / "topics.parquet")],
    )
    assert _report(out)["skipped"] == {}
    result = train([*smoke["llm"], f"data.source={out}", *TEN_STEPS, f"run.root={tmp_path}"])
    assert result.summary["steps"] == 10
    assert _run_config(result)["model"]["vocab_size"] is None  # the tokenizer's, from the import


def test_images_for_the_mixed_modal_family_train_it(
    images: tuple[Path, Path], tmp_path: Path, train: Callable[..., Any], smoke: dict[str, list[str]], command: Any
) -> None:
    from jevons.recipes.mixed_modal.importer import MixedModalImageImporter, MixedModalImageOptions

    folder, labelled = images
    out = tmp_path / "out"
    options = MixedModalImageOptions(
        out=str(out), codebook_size=16, workers=0, val_fraction=0.25, progress=False, max_skipped_fraction=0.5
    )
    run_import(MixedModalImageImporter(options), [str(folder), str(labelled)])
    assert _report(out)["skipped"] == {
        "duplicate": 1,
        "empty caption": 1,
        "missing file": 1,
        "truncated": 1,
        "undecodable": 1,
    }
    vocabulary = json.loads((out / "vocab.json").read_text())
    assert {"gradient", ",", "number", "class", "2"} <= set(vocabulary["words"]) and vocabulary["image_tokens"] == 64
    assert np.load(out / "codebook.npy").shape == (16, 4)
    sample = json.loads(_raw(out)[0]["json"])
    assert len(bytes.fromhex(sample["codes"])) == 64 and max(bytes.fromhex(sample["codes"])) < 16

    overrides = [o for o in smoke["mixed_modal"] if not o.startswith("generate.captions=")]
    result = train(
        [
            *overrides,
            f"data.source={out}",
            "generate.captions=[a gradient , number 3]",
            *TEN_STEPS,
            f"run.root={tmp_path}",
        ]
    )
    assert result.summary["steps"] == 10

    # On the command line, images go to the diffusion family unless family= says otherwise.
    cli = command(
        [
            "jevons",
            "data",
            "import",
            "images",
            str(labelled),
            f"out={tmp_path / 'cli'}",
            "family=mixed_modal",
            "codebook_size=8",
            "workers=0",
            "progress=false",
            "val_fraction=0.3",
            "max_skipped_fraction=0.5",
        ],
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads((tmp_path / "cli" / "meta.json").read_text())["family"] == "mixed_modal"
