"""Text-to-video on VAE latents: a tiny Wan pipeline folder, real MP4s with captions, precompute, train,
resume, sample, export, and diffusers' WanPipeline running the export to the same video."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jevons.framework import distributed
from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.recipes.diffusion.conditioning import Condition, TextConditioner

FRAMES, HEIGHT, WIDTH = 9, 48, 64  # the clips conftest's wan_t2v fixture imports


def _recipe(wan_t2v: dict[str, Path], *extra: str) -> list[str]:
    return [
        "recipe=wan_t2v_tiny",
        f"model.pretrained={wan_t2v['pipeline']}",
        f"data.source={wan_t2v['latents']}",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=0",
        *extra,
    ]


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]


def test_precompute_stores_normalised_latents_and_trimmed_embeddings(wan_t2v: dict[str, Path]) -> None:
    from safetensors.torch import load

    from jevons.framework.data.reader import ShardDataset
    from jevons.framework.data.shards import decode_npy, read_index
    from jevons.recipes.diffusion.pipeline import LatentCodec, load_vae
    from jevons.recipes.diffusion.text import PromptEncoder

    meta = json.loads((wan_t2v["latents"] / "meta.json").read_text())
    assert meta["kind"] == "latents" and meta["latent_shapes"] == {"16x3x6x8": 8}
    assert meta["samples"] == {"train": 6, "val": 2}  # the import's split is kept: clip3's two clips
    pixels = ShardDataset(read_index(wan_t2v["clips"] / "val.json"), lambda s: s).raw(0)
    stored = ShardDataset(read_index(wan_t2v["latents"] / "val.json"), lambda s: s).raw(0)
    assert stored["txt"] == pixels["txt"]
    tensors = load(stored["latent.safetensors"])
    assert tensors["latents"].dtype == torch.bfloat16
    codec = LatentCodec(load_vae(wan_t2v["pipeline"] / "vae"))
    frames = torch.from_numpy(decode_npy(pixels["frames.npy"])).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    expected = codec.encode(frames)[0]
    assert torch.allclose(tensors["latents"].float(), expected, atol=0.02 * expected.abs().max().item())
    encoder = PromptEncoder.from_folders(wan_t2v["pipeline"] / "tokenizer", wan_t2v["pipeline"] / "text_encoder")
    caption = pixels["txt"].decode()
    real_tokens = int(encoder.tokenizer(caption, truncation=True, max_length=32).attention_mask.__len__())
    assert tensors["text"].shape == (real_tokens, 32)  # trimmed at the mask
    assert torch.allclose(tensors["text"].float(), encoder.trimmed([caption], 32)[0], atol=2e-2)


def test_train_resume_sample_export_and_wanpipeline_runs_it_to_the_same_video(
    wan_t2v: dict[str, Path], train: Callable[..., Any], crasher: Callable[[int], Any], tmp_path: Path
) -> None:
    import av
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline

    from jevons.framework.cli.jevons import main as jevons
    from jevons.framework.inference import load_run
    from jevons.recipes.diffusion.components import prompt_encoder, sample_shape

    common = _recipe(wan_t2v, "trainer.max_steps=20", "checkpoint.every_n_steps=10", "optimizer.warmup_steps=0")
    straight = train([*common, f"run.dir={tmp_path / 'straight'}"])
    interrupted = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="injected crash at step 13"):
        train([*common, f"run.dir={interrupted}", "plugins=[crasher]"], plugins=[crasher(13)])
    resumed = train([*common, f"run.dir={interrupted}", "checkpoint.resume=auto"])
    assert resumed.summary["resumed_from_step"] == 10
    losses = _losses(straight.run_dir)
    assert len(losses) == 20 and _losses(interrupted) == losses  # exact, not approximately

    samples = tmp_path / "samples"
    assert jevons(["sample", f"run_dir={interrupted}", f"out={samples}", "prompt=a red ball", "rows=2", "steps=3"]) == 0
    movies = sorted(samples.glob("*.mp4"))
    assert len(movies) == 2
    with av.open(str(movies[0])) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == FRAMES and decoded[0].shape == (HEIGHT, WIDTH, 3)

    out = tmp_path / "export"
    assert jevons(["export", f"run_dir={interrupted}", f"out={out}"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["flow_shift"] == 3.0
    pipeline = WanPipeline.from_pretrained(str(out))
    prompt, negative, steps, guidance = "a small cat walking across a snowy road", "a blurry frame", 4, 3.0
    with distributed.initialized(ParallelConfig()):
        run = load_run(interrupted)
        encoder = prompt_encoder(run.config)
        run.model.conditioner.negative.copy_(encoder.embed([negative], 32)[0])
        condition = Condition(embeddings=encoder.embed([prompt], 32))
        shape = sample_shape(run.config)
        assert shape == (16, 3, 6, 8)  # (C, (F - 1) / 4 + 1, H / 8, W / 8)

        def ours(**noise: Any) -> np.ndarray:
            latents = run.generator(condition, shape, steps=steps, guidance=guidance, seed=5, **noise)
            return ((run.model.to_pixels(latents) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()

        seeded = ours()
        noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(11))
        given = ours(noise=noise)
    common_call = {
        "prompt": prompt,
        "negative_prompt": negative,
        "height": HEIGHT,
        "width": WIDTH,
        "num_frames": FRAMES,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "output_type": "np",
        "max_sequence_length": 32,
    }
    theirs = pipeline(**common_call, generator=torch.Generator().manual_seed(5)).frames
    theirs_given = pipeline(**common_call, latents=noise).frames
    assert seeded.shape == theirs.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    assert np.abs(seeded - theirs).max() < 1e-4 and np.abs(given - theirs_given).max() < 1e-4
    assert np.abs(seeded - given).max() > 1e-2  # different noise: a different video (the check has teeth)


def test_online_encoding_trains_on_the_pixel_import(
    wan_t2v: dict[str, Path], train: Callable[..., Any], tmp_path: Path
) -> None:
    result = train(
        _recipe(
            wan_t2v,
            f"data.source={wan_t2v['clips']}",
            "conditioning.online=true",
            "data.resolution=48",
            "data.frames=9",
            "sample.height=48",
            "sample.width=48",
            "trainer.max_steps=3",
            f"run.dir={tmp_path / 'online'}",
        )
    )
    assert len(_losses(result.run_dir)) == 3


def test_text_prompt_dropout_uses_the_negative_prompt_embedding() -> None:
    negative, prompts = torch.randn(6, 4), torch.randn(3, 6, 4)
    conditioner = TextConditioner(negative, prompts, ["a", "b", "c"])
    batch = {"text_embeddings": torch.randn(5, 6, 4)}
    dropped = conditioner.drop(conditioner.from_batch(batch), torch.tensor([True, False, True, False, False]))
    assert torch.equal(dropped["embeddings"][0], negative) and torch.equal(dropped["embeddings"][2], negative)
    assert torch.equal(dropped["embeddings"][1], batch["text_embeddings"][1])
    drawn = Condition.cat([conditioner.draw(torch.Generator().manual_seed(s)) for s in range(20)])
    assert set(conditioner.group(drawn).tolist()) == {0, 1, 2}
    assert torch.equal(drawn["embeddings"][0], prompts[conditioner.group(drawn)[0]])


def test_a_pipeline_folder_sets_the_sampler_and_refuses_what_it_cannot_run(
    wan_t2v: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    manager = PluginManager.load()
    config = compose_config(manager, _recipe(wan_t2v))
    assert (config.sample.scheduler, config.sample.shift) == ("unipc", 3.0)  # the folder's UniPC and flow_shift
    assert compose_config(manager, _recipe(wan_t2v, "sample.shift=5")).sample.shift == 5.0
    assert config.model.channels == 16 and config.model.text_dim == 32  # read from transformer/config.json

    edited = tmp_path / "edited"
    shutil.copytree(wan_t2v["pipeline"], edited)
    index = json.loads((edited / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (edited / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match="scheduler is DDIMScheduler; Jevons' diffusion family runs"):
        compose_config(manager, _recipe(wan_t2v, f"model.pretrained={edited}"))
    index["scheduler"] = ["diffusers", "UniPCMultistepScheduler"]
    (edited / "model_index.json").write_text(json.dumps(index))
    encoder_config = json.loads((edited / "text_encoder" / "config.json").read_text())
    (edited / "text_encoder" / "config.json").write_text(
        json.dumps({**encoder_config, "auto_map": {"AutoModel": "x.Y"}})
    )
    with pytest.raises(UsageError, match="never runs trust_remote_code"):
        PluginManager.load().family("diffusion").build_model(
            compose_config(manager, _recipe(wan_t2v, f"model.pretrained={edited}"))
        )
    with pytest.raises(UsageError, match="holds pixels and captions: precompute its latents"):
        compose_config(manager, _recipe(wan_t2v, f"data.source={wan_t2v['clips']}"))


def test_wan2_1_t2v_1_3b_composes_and_its_transformer_has_the_released_parameter_count(
    wan_t2v: dict[str, Path],
) -> None:
    from jevons.recipes.diffusion.model import build_transformer

    texts = wan_t2v["pipeline"]
    config = compose_config(
        PluginManager.load(),
        [
            "recipe=wan2_1_t2v_1_3b",
            f"model.text_encoder={texts / 'text_encoder'}",  # the tiny umT5 stands in: composing reads configs
            f"model.tokenizer={texts / 'tokenizer'}",
            f"model.vae={texts / 'vae'}",  # the tiny 16-channel AutoencoderKLWan stands in for Wan's
            f"data.source={wan_t2v['clips']}",  # captioned data, encoded online
            "conditioning.online=true",
        ],
    )
    cfg = config.model
    assert (cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.ffn_dim, cfg.text_dim, cfg.channels) == (
        30,
        12,
        128,
        8960,
        4096,
        16,
    )
    assert config.conditioning.kind == "text" and config.conditioning.max_length == 512
    with torch.device("meta"):
        transformer = build_transformer(cfg)
    assert sum(p.numel() for p in transformer.parameters()) == 1_418_996_800


def test_tp2_equals_tp1_on_the_text_conditioned_latent_model(
    wan_t2v: dict[str, Path], command: Callable[..., Any], tmp_path: Path
) -> None:
    """Self- and cross-attention (to the text embeddings) sharded over two gloo ranks: the same losses."""
    losses = {}
    for tp in (1, 2):
        run_dir = tmp_path / f"tp{tp}"
        args = [
            "train",
            *_recipe(wan_t2v, "trainer.max_steps=6", "optimizer.warmup_steps=0", "checkpoint.every_n_steps=null"),
        ]
        result = command([*args, f"launcher.nproc={tp}", f"parallel.tensor={tp}", f"run.dir={run_dir}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        losses[tp] = _losses(run_dir)
    assert len(losses[1]) == 6 and np.allclose(losses[2], losses[1], rtol=1e-5, atol=1e-6), losses


def test_blade_sparse_student_distils_the_dense_text_conditioned_teacher(
    wan_t2v: dict[str, Path], train: Callable[..., Any], tmp_path: Path
) -> None:
    """block_sparse_attention + step_distillation (TDM) on wan_t2v_tiny, data-free from the prompts: the
    student's self-attention is sparse, cross-attention to the text stays dense, the teacher is dense."""
    result = train(
        _recipe(
            wan_t2v,
            "plugins=[block_sparse_attention,step_distillation]",
            "block_sparse_attention.block_size=4",
            "block_sparse_attention.max_density=0.5",
            "step_distillation.steps=2",
            "step_distillation.teacher_steps=4",
            "step_distillation.val_samples=2",
            "step_distillation.guard_per_class=2",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.limit_val_batches=1",
            "data.batch_size=2",
            f"run.dir={tmp_path / 'blade'}",
        )
    )
    assert result.summary["steps"] == 3 and result.summary["val_loss"] is not None
    figures = result.summary["plugin_figures"]
    assert figures["step_distillation"]["student_steps"] == 2, figures
    assert figures["block_sparse_attention"], figures


def test_a_shape_mismatch_inside_a_run_names_the_recipe_component_and_shapes(
    train: Callable[..., Any], tmp_path: Path
) -> None:
    """The reported crash: a 16-channel model on 1-channel digits. Built-in data has no meta.json for the
    family to adopt channels from, so the mismatch surfaces in the first step, as one message."""
    from jevons.framework.errors import ModelInputError

    with pytest.raises(ModelInputError) as raised:
        train(
            [
                "recipe=video_tiny",
                "model.channels=16",
                "data.num_workers=0",
                "trainer.max_steps=1",
                "trainer.limit_val_batches=0",
                "trainer.progress_bar=false",
                f"run.dir={tmp_path / 'mismatch'}",
            ]
        )
    message = str(raised.value)
    assert message.startswith("recipe video_tiny: the diffusion transformer's patch embedding")
    assert "takes 16-channel samples" in message and "(8, 1, 8, 16, 16)" in message


def test_an_image_vae_encodes_each_frame_normalised_and_decodes_back(tmp_path: Path) -> None:
    """``AutoencoderKL`` (text-to-image): frames are images; latents are ``(z - shift) * scale``."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    from jevons.recipes.diffusion.components import vae_geometry
    from jevons.recipes.diffusion.pipeline import LatentCodec, load_vae

    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=[8, 8],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=0.5,
        shift_factor=0.25,
    ).save_pretrained(tmp_path / "vae")
    assert vae_geometry(tmp_path / "vae") == (4, 1, 2)
    codec = LatentCodec(load_vae(tmp_path / "vae"))
    pixels = torch.rand(2, 3, 3, 8, 8) * 2 - 1  # (B, C, F, H, W): three images per sample
    latents = codec.encode(pixels)
    assert latents.shape == (2, 4, 3, 4, 4) == (2, *codec.latent_shape(3, 8, 8))
    raw = codec.vae.encode(pixels[:, :, 1]).latent_dist.mode()
    assert torch.allclose(latents[:, :, 1], (raw - 0.25) * 0.5, atol=1e-6)
    decoded = codec.decode(latents)
    assert decoded.shape == pixels.shape and decoded.abs().max() <= 1.0
    expected = codec.vae.decode(latents[:, :, 1] / 0.5 + 0.25).sample.clamp(-1, 1)
    assert torch.allclose(decoded[:, :, 1], expected, atol=1e-5)


def test_boss_straightens_a_text_conditioned_student_on_a_bellman_optimal_schedule(
    wan_t2v: dict[str, Path], train: Callable[..., Any], tmp_path: Path
) -> None:
    result = train(
        _recipe(
            wan_t2v,
            "plugins=[step_distillation]",
            "step_distillation.method=boss",
            "step_distillation.steps=2",
            "step_distillation.teacher_steps=4",
            "step_distillation.calibration_samples=3",
            "step_distillation.pool_size=4",
            "step_distillation.val_samples=2",
            "step_distillation.guard_per_class=2",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1",
            "data.batch_size=2",
            f"run.dir={tmp_path / 'boss'}",
        )
    )
    assert result.summary["steps"] == 2 and result.summary["val_loss"] is not None
    assert result.summary["plugin_figures"]["step_distillation"]["student_steps"] == 2
