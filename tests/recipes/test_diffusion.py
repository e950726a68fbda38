"""The diffusion family: digit data, rectified flow, the flow-matching sampler, diffusers round trips, metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jevons.framework.config.compose import compose_config
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.recipes.diffusion.conditioning import ClassConditioner, Condition
from jevons.recipes.diffusion.data import NO_DIGIT, DigitClips
from jevons.recipes.diffusion.family import DiffusionDataConfig, DiffusionFamily
from jevons.recipes.diffusion.generate import FlowSampler
from jevons.recipes.diffusion.metrics import classifier, features_and_predictions, frechet_distance
from jevons.recipes.diffusion.model import DiffusionModel
from jevons.recipes.diffusion.objective import RectifiedFlowObjective

SMALL = ["model.num_layers=1", "model.num_heads=2", "model.head_dim=16", "model.ffn_dim=32"]


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager.load(autoload=False)


@pytest.fixture(scope="module")
def family() -> DiffusionFamily:
    return DiffusionFamily()


def _config(manager, *overrides):
    return compose_config(manager, ["recipe=image_tiny", *SMALL, *overrides])


@pytest.fixture(scope="module")
def model(manager, family) -> DiffusionModel:
    torch.manual_seed(0)
    return family.build_model(_config(manager))


def test_image_and_video_shards_round_trip(manager, family) -> None:
    for source, split_sizes, frames in (("digits-images", (8086, 899), 1), ("moving-digits", (5400, 600), 16)):
        config = _config(manager, f"data.source={source}", "data.resolution=32", f"data.frames={frames}")
        folder = family.data_dir(config)
        sizes = tuple(
            sum(s["nsamples"] for s in json.loads((folder / f"{split}.json").read_text())["shardlist"])
            for split in ("train", "val")
        )
        assert sizes == split_sizes
        clips = DigitClips.from_folder(folder, "val", DiffusionDataConfig(source=source, resolution=32, frames=frames))
        assert len(clips) == split_sizes[1] and clips.lengths.shape == (split_sizes[1], 1)
        assert (clips.lengths[:, 0] == frames).all()
        raw = clips.samples.raw(3)
        assert set(raw) == {"frames.npy", "labels.json", "__key__", "__url__"}
        sample = clips[3]
        assert sample["video"].shape == (1, frames, 32, 32) and sample["video"].dtype == np.float32
        assert -1.0 <= sample["video"].min() and sample["video"].max() <= 1.0 and sample["video"].max() > 0.5
        assert sample["labels"].shape == (2,) and 0 <= sample["labels"][0] <= 9


def test_clips_resize_and_subsample_on_read(manager, family) -> None:
    folder = family.data_dir(_config(manager, "data.source=moving-digits", "data.frames=16"))
    full = DigitClips.from_folder(folder, "val", DiffusionDataConfig(source="moving-digits", resolution=32, frames=16))[
        0
    ]
    small = DigitClips.from_folder(folder, "val", DiffusionDataConfig(source="moving-digits", resolution=16, frames=8))[
        0
    ]
    assert small["video"].shape == (1, 8, 16, 16)
    expected = F.interpolate(
        torch.from_numpy(full["video"][0, ::2])[:, None],
        size=(16, 16),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[:, 0]
    assert torch.allclose(torch.from_numpy(small["video"][0]), expected, atol=2 / 255 * 2 + 1e-6)


def test_objective_equals_an_independent_rectified_flow_loss(model) -> None:
    torch.manual_seed(1)
    batch = {
        "video": torch.rand(3, 1, 1, 16, 16) * 2 - 1,
        "labels": torch.tensor([[1, NO_DIGIT], [4, NO_DIGIT], [9, 2]]),
    }
    objective = RectifiedFlowObjective(condition_dropout=0.0)
    torch.manual_seed(7)
    out = objective(model, batch)
    torch.manual_seed(7)
    sigma = torch.sigmoid(torch.randn(3))
    noise = torch.randn(3, 1, 1, 16, 16)
    noisy = (1 - sigma[:, None, None, None, None]) * batch["video"] + sigma[:, None, None, None, None] * noise
    condition = model.conditioner.table(batch["labels"]).reshape(3, 2 * model.conditioner.tokens, -1)
    velocity = model.transformer(noisy, sigma * 1000, condition, return_dict=False)[0]
    assert torch.allclose(out.loss, ((velocity - (noise - batch["video"])) ** 2).mean(), atol=1e-6)
    assert out.weight == 3


def test_condition_dropout_replaces_labels_with_no_digit() -> None:
    seen = []

    class Spy(torch.nn.Module):  # the family's model contract: a conditioner, clean(batch), forward
        def __init__(self) -> None:
            super().__init__()
            self.conditioner = ClassConditioner(text_dim=4, tokens=1)

        def clean(self, batch):
            return batch["video"]

        def forward(self, noisy, sigma, condition):
            seen.append(condition["labels"].clone())
            return torch.zeros_like(noisy)

    batch = {"video": torch.zeros(2000, 1, 1, 2, 2), "labels": torch.full((2000, 2), 3)}
    RectifiedFlowObjective(condition_dropout=0.25).train()(Spy(), batch)
    dropped = (seen[0] == NO_DIGIT).all(dim=1).float().mean().item()
    assert 0.2 < dropped < 0.3 and ((seen[0] == 3) | (seen[0] == NO_DIGIT)).all()


def test_sampler_shapes_and_determinism(model) -> None:
    sampler = FlowSampler(model, steps=3, guidance=2.0)
    labels = Condition(labels=torch.tensor([[0, NO_DIGIT], [5, NO_DIGIT]]))
    images = sampler(labels, (1, 1, 8, 8), seed=3)
    assert images.shape == (2, 1, 1, 8, 8) and images.abs().max() <= 1.0
    assert torch.equal(images, sampler(labels, (1, 1, 8, 8), seed=3))
    clips = sampler(labels, (1, 4, 8, 8), steps=2, guidance=1.0)
    assert clips.shape == (2, 1, 4, 8, 8)


def test_save_pretrained_then_from_pretrained_gives_equal_outputs(model, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    assert (tmp_path / "transformer" / "config.json").exists()
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "transformer").iterdir())
    loaded = DiffusionModel.from_pretrained(tmp_path, tokens=model.conditioner.tokens)
    x, sigma, labels = (
        torch.randn(2, 1, 1, 16, 16),
        torch.tensor([0.3, 0.8]),
        Condition(labels=torch.tensor([[2, NO_DIGIT], [7, 1]])),
    )
    with torch.no_grad():
        assert torch.equal(model(x, sigma, labels), loaded(x, sigma, labels))


def test_a_config_pointing_at_an_export_rebuilds_the_same_model(manager, model, family, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    rebuilt = family.build_model(
        _config(manager, f"model.pretrained={tmp_path}", "model.pretrained_subfolder=transformer")
    )
    assert all(module.training for module in rebuilt.modules())  # fine-tuning starts in train mode
    x, sigma, labels = (
        torch.randn(2, 1, 1, 16, 16),
        torch.tensor([0.3, 0.8]),
        Condition(labels=torch.tensor([[2, NO_DIGIT], [7, 1]])),
    )
    with torch.no_grad():
        assert torch.equal(model(x, sigma, labels), rebuilt(x, sigma, labels))  # the class table came along
    with pytest.raises(UsageError, match="class table of shape"):
        family.build_model(
            _config(
                manager,
                f"model.pretrained={tmp_path}",
                "model.pretrained_subfolder=transformer",
                "conditioning.tokens=2",
            )
        )


def test_video_sparse_tiny_is_the_4096_token_video_model_with_block_sparse_attention(manager) -> None:
    config = compose_config(manager, ["recipe=video_sparse_tiny"])
    assert config.plugins == ["block_sparse_attention"] and config.block_sparse_attention.max_density == 0.25
    tokens = config.data.frames * (config.data.resolution // config.model.patch_size[1]) ** 2
    assert tokens == 4096


def test_video_blade_tiny_distills_the_video_teacher_into_a_sparse_4_step_student(manager) -> None:
    teacher = Path(__file__).resolve().parents[2] / "benchmarks" / "teachers" / "video-32px-16f"
    config = compose_config(manager, ["recipe=video_blade_tiny", f"model.pretrained={teacher}"])
    assert config.plugins == ["block_sparse_attention", "step_distillation"]
    assert (config.step_distillation.method, config.step_distillation.steps) == ("tdm", 4)
    assert config.data.frames * (config.data.resolution // config.model.patch_size[1]) ** 2 == 4096
    with pytest.raises(UsageError, match="needs a dense teacher"):
        compose_config(manager, ["recipe=video_blade_tiny"])


def test_family_export_is_a_diffusers_folder_written_whole(model, family, tmp_path: Path) -> None:
    from types import SimpleNamespace

    files = family.export(SimpleNamespace(model=model), tmp_path / "export")
    assert {p.name for p in files} >= {"config.json", "conditioner.safetensors"}
    assert not (tmp_path / "export.partial").exists()
    from diffusers import WanTransformer3DModel

    transformer = WanTransformer3DModel.from_pretrained(tmp_path / "export" / "transformer")
    assert torch.equal(transformer.patch_embedding.weight, model.transformer.patch_embedding.weight)
    with pytest.raises(UsageError, match="exists; choose another out="):
        family.export(SimpleNamespace(model=model), tmp_path / "export")


def test_quality_metric_and_classifier(manager, family) -> None:
    config = _config(manager, "data.resolution=32")
    net = classifier(family.images_dir(config))
    real = family.real_reference(config, 600)
    labels = torch.from_numpy(np.stack([family.build_dataset(config, "val")[i]["labels"][0] for i in range(600)]))
    features, logits = features_and_predictions(net, real)
    assert (logits[:, 0].argmax(-1) == labels).float().mean() > 0.9  # a classifier worth trusting
    assert frechet_distance(features[:300, 0], features[300:, 0]) < 0.1 * frechet_distance(
        features[:300, 0], torch.randn(300, features.shape[-1]) * features.std() + features.mean()
    )


def test_a_short_run_lowers_the_loss(train, run_root) -> None:
    result = train(
        [
            "recipe=image_tiny",
            *SMALL,
            "data.batch_size=16",
            "data.num_workers=0",
            "trainer.max_steps=40",
            "trainer.log_every_n_steps=1",
            "trainer.limit_val_batches=0",
            "optimizer.warmup_steps=0",
            "optimizer.lr=3e-3",
            "trainer.progress_bar=false",
            f"run.root={run_root}",
        ]
    )
    with open(result.run_dir / "metrics.csv") as handle:
        losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    assert len(losses) == 40 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
