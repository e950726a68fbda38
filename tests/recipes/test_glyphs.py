"""The glyph testbed: fonts and classes, a deterministic build with every class in both splits, the
committed feature network's held-out-font accuracy, metrics that rank degradations by severity, and a
run that trains and validates on glyphs."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jevons.framework.config.compose import compose_config
from jevons.framework.data.cache import COMPLETE
from jevons.framework.data.reader import ShardDataset
from jevons.framework.data.shards import decode_npy, read_index
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.recipes.diffusion.glyph_quality import (
    add_noise,
    features_and_logits,
    frechet_interval,
    gaussian_blur,
    glyph_feature_net,
    glyph_quality,
    paired_distance,
    precision_recall,
)
from jevons.recipes.diffusion.glyphs import (
    GLYPH_CLASSES,
    GLYPH_FONTS,
    GLYPH_IMAGES,
    NO_GLYPH,
    _covers,
    _font_folder,
    _own_name,
    build_glyphs,
    font_split,
    glyph_fonts,
    glyph_samples,
    render_clip,
)
from jevons.recipes.diffusion.metrics import frechet_distance


@pytest.fixture(scope="module")
def glyph_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a one-variant ``glyph-images`` build (704 images), where the full source
    would be: runs with ``data.root`` set to it train on glyphs without the two-minute full build."""
    root = tmp_path_factory.mktemp("glyph-data")
    folder = root / f"{GLYPH_IMAGES.name}-v{GLYPH_IMAGES.version}"
    build_glyphs(folder, progress=False, clip=False, variants=1)
    (folder / COMPLETE).write_text("test build, 1 variant\n")
    return root


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """1,536 images ``(N, 3, 32, 32)`` in [-1, 1] from the held-out fonts, and their classes."""
    val_fonts = [i for i in range(len(glyph_fonts())) if font_split(i) == "val"]
    samples = list(glyph_samples(16, clip=False, fonts=val_fonts))
    images = np.stack([s["frames.npy"][0] for _, s, _ in samples])  # (N, 32, 32, 3) uint8
    labels = torch.tensor([s["labels.json"][0] for _, s, _ in samples])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0, labels


def _read(folder: Path, split: str) -> list[tuple[str, np.ndarray, list[int]]]:
    data = ShardDataset(
        read_index(folder / f"{split}.json"),
        lambda s: (s["__key__"], decode_npy(s["frames.npy"]), json.loads(s["labels.json"])),
    )
    return [data[i] for i in range(len(data))]


def test_fonts_cover_every_class_and_confusable_pairs_are_dropped() -> None:
    names = [path.name for path in glyph_fonts()]
    assert len(names) == 22 and "DejaVuSans.ttf" in names and "cmr10.ttf" in names
    # their character maps name the letters, but the glyphs are symbols, boxes, or missing
    for excluded in ("cmsy10.ttf", "cmex10.ttf", "LastResortHE-Regular.ttf", "STIXNonUni.ttf", "DejaVuSansDisplay.ttf"):
        assert excluded not in names
    assert not any(name.startswith("STIXSiz") for name in names)
    scanned = [p.name for p in sorted(_font_folder().glob("*.ttf")) if _covers(p, GLYPH_CLASSES)]
    assert scanned == list(GLYPH_FONTS)  # the pinned list is what the coverage check finds
    assert not _own_name("Alpha", "A") and _own_name("twooldstyle", "two") and _own_name("A.alt", "A")
    assert len(GLYPH_CLASSES) == NO_GLYPH == 32 >= 30
    assert not set("O0I1") & set(GLYPH_CLASSES)
    assert [font_split(i) for i in range(len(names))].count("val") == 3  # fonts 0, 10 and 20


def test_build_is_deterministic_and_every_class_is_in_both_splits(glyph_root: Path) -> None:
    folder = glyph_root / "glyph-images-v1"
    splits = {split: _read(folder, split) for split in ("train", "val")}
    assert {split: len(items) for split, items in splits.items()} == {"train": 19 * 32, "val": 3 * 32}
    for items in splits.values():
        assert {labels[0] for _, _, labels in items} == set(range(32))
        assert all(labels[1] == NO_GLYPH for _, _, labels in items)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["channels"] == 3 and "".join(meta["classes"]) == GLYPH_CLASSES
    assert not set(meta["fonts"]["train"]) & set(meta["fonts"]["val"])
    # rendered again, font 3 alone, the samples are the same bytes: each has its own generator
    again = {s["__key__"]: s["frames.npy"] for _, s, _ in glyph_samples(1, clip=False, fonts=[3])}
    built = {key: frames for key, frames, _ in splits["train"] if key.startswith("f03_")}
    assert again.keys() == built.keys() and all(np.array_equal(again[k], built[k]) for k in again)
    other_seed = next(glyph_samples(1, clip=False, seed=7, fonts=[3]))[1]["frames.npy"]
    assert not np.array_equal(other_seed, built["f03_A_000"])


def test_clips_move() -> None:
    samples = list(glyph_samples(1, clip=True, fonts=[10]))  # a held-out font: the glyph-clips source's samples
    assert [split for split, _, _ in samples] == ["val"] * 32
    assert all(s["frames.npy"].shape == (16, 32, 32, 3) and lengths == [16] for _, s, lengths in samples)
    clip = render_clip(glyph_fonts()[1], "R", np.random.default_rng(5))
    assert clip.shape == (16, 32, 32, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, render_clip(glyph_fonts()[1], "R", np.random.default_rng(5)))
    steps = np.abs(np.diff(clip.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    assert (steps > 0.5).all()  # every frame differs from the last: the glyph moves


def test_feature_network_knows_held_out_fonts(held_out) -> None:
    images, labels = held_out
    _, logits = features_and_logits(glyph_feature_net(), images[:, :, None])
    accuracy = float((logits[:, 0].argmax(-1) == labels).float().mean())
    assert accuracy >= 0.9, f"held-out-font accuracy {accuracy:.3f}"


def test_quality_ranks_blur_and_noise_by_severity(held_out) -> None:
    images, _ = held_out
    net = glyph_feature_net()
    reference, probe = images[0::2, :, None], images[1::2]
    for degrade, severities in ((gaussian_blur, (0.5, 1.0, 2.0)), (add_noise, (0.05, 0.1, 0.2))):
        scores = [glyph_quality(net, probe[:, :, None], reference, resamples=20)]
        scores += [glyph_quality(net, degrade(probe, s)[:, :, None], reference, resamples=20) for s in severities]
        fds = [q.fd for q in scores]
        assert all(a < b for a, b in itertools.pairwise(fds)), f"{degrade.__name__}: {fds}"
        assert scores[0].fd_low <= scores[0].fd <= scores[0].fd_high
        assert scores[-1].precision < scores[0].precision  # the worst is off the real manifold


def test_clips_are_resampled_whole_and_manifolds_are_per_clip(held_out) -> None:
    images, _ = held_out
    clips = images[:320].reshape(20, 16, 3, 32, 32).transpose(1, 2)  # (20, 3, 16, 32, 32): 20 "clips"
    quality = glyph_quality(glyph_feature_net(), clips[:10], clips[10:], resamples=20)
    assert quality.samples == 10 and quality.fd_low <= quality.fd <= quality.fd_high
    a = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    assert frechet_interval(a, a, resamples=5, frames=16)[0] == pytest.approx(0.0, abs=1e-9)


def test_metrics_on_known_features() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(800, 16, generator=generator), torch.randn(800, 16, generator=generator)
    fd, low, high = frechet_interval(a + 1.0, b, resamples=50)
    assert fd == pytest.approx(frechet_distance(a + 1.0, b), rel=1e-6)  # the eigenvalue form equals sqrtm's
    assert low < fd < high and 14.0 < fd < 18.0  # a shift of 1 in 16 dimensions: 16
    same, shifted = precision_recall(b, a), precision_recall(b + 1.0, a)
    assert min(same) > 0.7 and max(shifted) < 0.5 * min(same)  # k = 3 in 16 dimensions: about 0.8 for equal sets
    precision, recall = precision_recall(a + 10.0, b)
    assert precision == 0.0 and recall == 0.0
    assert paired_distance(a, a) == 0.0 and paired_distance(
        a, a + torch.tensor([3.0, 4.0] + [0.0] * 14)
    ) == pytest.approx(5.0)


def test_a_run_trains_on_glyphs_and_scores_them(train, run_root, glyph_root) -> None:
    result = train(
        [
            "recipe=image_tiny",
            "data.source=glyph-images",
            f"data.root={glyph_root}",
            "data.resolution=32",
            "model.num_layers=1",
            "data.batch_size=8",
            "data.num_workers=0",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            "trainer.limit_val_batches=1",
            "sample.steps=2",
            "sample.fd_samples=64",
            "sample.eval_batch=32",
            "trainer.progress_bar=false",
            f"run.root={run_root}",
        ]
    )
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["model"]["channels"] == 3 and config["conditioning"]["classes"] == 32
    with open(result.run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/fd")]
    assert rows and {"val/fd_low", "val/fd_high", "val/precision", "val/recall", "val/accuracy"} <= rows[-1].keys()
    assert float(rows[-1]["val/fd_low"]) <= float(rows[-1]["val/fd"]) <= float(rows[-1]["val/fd_high"])


def test_the_real_reference_spans_every_held_out_font(glyph_root: Path) -> None:
    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, ["recipe=image_glyphs", f"data.root={glyph_root}"])
    family = manager.family("diffusion")
    reference, held_out = family.real_reference(config, 48), family.build_dataset(config, "val")
    assert reference.shape == (48, 3, 1, 32, 32) and len(held_out) == 96  # stored font by font, 32 each
    assert np.array_equal(reference[0].numpy(), held_out[0]["video"])
    assert np.array_equal(reference[-1].numpy(), held_out[95]["video"])  # the last font's last glyph


def test_class_count_must_match_the_data() -> None:
    manager = PluginManager.load(autoload=False)
    with pytest.raises(UsageError, match="has 32 classes but conditioning.classes=10"):
        compose_config(manager, ["recipe=image_tiny", "data.source=glyph-images", "conditioning.classes=10"])
    with pytest.raises(UsageError, match="sample.fd_samples=3: quality metrics need at least 8 samples"):
        compose_config(manager, ["recipe=image_glyphs", "sample.fd_samples=3"])
