"""Training on precomputed VAE latents and text embeddings against encoding every batch online.

FastVideo and MUG-V precompute latents and text embeddings so that training
runs only the transformer; ``conditioning.online=true`` runs the VAE and the
text encoder inside every step instead. Both arms here are the same tiny Wan
pipeline (``recipes/diffusion/tiny_pipeline.py``: a 16-channel
``AutoencoderKLWan``, a two-layer UMT5, a two-layer Wan transformer), the same
``recipe=wan_t2v_tiny`` and the same batches of the same clips (batch 4, one
sampler seed): 12 real MP4s (PyAV, 64 x 48, moving blocks) with captions,
imported as 9-frame clips (``jevons data import videos``) and precomputed once
(``jevons data import latents``, not timed).

A step is the framework's: the objective's forward, backward, gradient
clipping, AdamW and scheduler steps (``common.train_step``). The arms
alternate step by step after a warm-up, and each figure is a median over
``--steps`` steps. In the online arm the VAE's ``encode`` and the text
encoder's forward are timed inside the step, giving their shares of it.

Figures: ``step_speedup_precomputed_vs_online`` (online step time / precomputed
step time), ``vae_share_of_online_step``, ``text_encoder_share_of_online_step``,
and both step times (milliseconds).

    python benchmarks/latent_precompute.py [--quick] [--steps N]
"""

from __future__ import annotations

import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from common import median, parse_args, train_step, write_result

FRAMES, HEIGHT, WIDTH, VIDEOS = 9, 48, 64, 12


def _videos(folder: Path) -> None:
    import av
    import numpy as np

    from jevons.recipes.diffusion.tiny_pipeline import captions

    folder.mkdir()
    texts = captions()
    for number in range(VIDEOS):
        with av.open(str(folder / f"clip{number:02d}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            for frame in range(20):
                image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
                left = (3 * frame + 5 * number) % (WIDTH - 8)
                image[12 + number % 3 * 8 : 28 + number % 3 * 8, left : left + 8] = (200, 20 * number, 100)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        (folder / f"clip{number:02d}.txt").write_text(texts[number * 19 % len(texts)])


def _prepare(root: Path) -> dict[str, Path]:
    from jevons.framework.data.importing.engine import run_import
    from jevons.recipes.diffusion.importer import VideoImporter, VideoImportOptions
    from jevons.recipes.diffusion.precompute import LatentImporter, LatentImportOptions
    from jevons.recipes.diffusion.tiny_pipeline import write_tiny_wan_pipeline

    pipeline = write_tiny_wan_pipeline(root / "pipeline")
    _videos(root / "videos")
    clips, latents = root / "clips", root / "latents"
    options = VideoImportOptions(
        out=str(clips), buckets=[f"{WIDTH}x{HEIGHT}"], fps=8, frames=FRAMES, max_clips=2, workers=0, progress=False
    )
    run_import(VideoImporter(options), [str(root / "videos")])
    run_import(
        LatentImporter(LatentImportOptions(out=str(latents), pipeline=str(pipeline), max_length=32, progress=False)),
        [str(clips)],
    )
    return {"pipeline": pipeline, "clips": clips, "latents": latents}


class Timed:
    """Wraps a callable and sums the seconds spent in it."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument("--steps", type=int, default=None))
    import torch

    from jevons.framework import distributed
    from jevons.framework.build import build
    from jevons.framework.config.compose import compose_config
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.plugin_manager import PluginManager

    torch.set_num_threads(1)  # one core per arm's step: the machine's second core stays quiet
    steps = args.steps or (6 if args.quick else 60)
    warmup = 2 if args.quick else 5
    with TemporaryDirectory() as workdir, distributed.initialized(ParallelConfig()):
        folders = _prepare(Path(workdir))
        manager = PluginManager.load(autoload=False)
        family = manager.family("diffusion")
        common = ["recipe=wan_t2v_tiny", f"model.pretrained={folders['pipeline']}", "data.batch_size=4", "seed=0"]
        arms: dict[str, Any] = {}
        for name, extra in (
            ("precomputed", [f"data.source={folders['latents']}"]),
            (
                "online",
                [
                    f"data.source={folders['clips']}",
                    "conditioning.online=true",
                    "data.square=false",
                    f"data.frames={FRAMES}",
                ],
            ),
        ):
            config = compose_config(manager, [*common, *extra])
            torch.manual_seed(0)
            arms[name] = build(manager, family, config)
        online = arms["online"].model
        vae = Timed(online.codec.encode)
        online.codec.encode = vae
        text = Timed(online.conditioner.encoder.embed)
        online.conditioner.encoder.embed = text
        batches = {}
        for name, built in arms.items():
            dataset, sampler = built.datasets["train"], built.batch_samplers["train"]
            batches[name] = [dataset.collate([dataset[i] for i in indices]) for indices in sampler]
        latent_shape = (4, 16, 3, 6, 8)  # the same clips in both arms: encoded now, or read back
        assert batches["precomputed"][0]["latents"].shape == latent_shape
        with torch.no_grad():
            assert online.clean(batches["online"][0]).shape == latent_shape
        times: dict[str, list[float]] = {name: [] for name in arms}
        vae_seconds, text_seconds = [], []
        for step in range(warmup + steps):
            for name, built in arms.items():
                batch = batches[name][step % len(batches[name])]
                vae.seconds = text.seconds = 0.0
                started = time.perf_counter()
                train_step(built.model, built.objective, built.optimization, batch, 1.0)
                elapsed = time.perf_counter() - started
                if step >= warmup:
                    times[name].append(elapsed)
                    if name == "online":
                        vae_seconds.append(vae.seconds)
                        text_seconds.append(text.seconds)
    precomputed, online_step = median(times["precomputed"]), median(times["online"])
    figures = {
        "step_speedup_precomputed_vs_online": online_step / precomputed,
        "vae_share_of_online_step": median([v / t for v, t in zip(vae_seconds, times["online"])]),
        "text_encoder_share_of_online_step": median([v / t for v, t in zip(text_seconds, times["online"])]),
        "precomputed_step_ms": 1000 * precomputed,
        "online_step_ms": 1000 * online_step,
    }
    details = {
        "steps_timed": steps,
        "warmup_steps": warmup,
        "batch": 4,
        "clip": f"{FRAMES} frames x {WIDTH}x{HEIGHT} px -> latents 16 x 3 x 6 x 8",
        "text_tokens": 32,
        "torch_threads": 1,
    }
    write_result("latent_precompute", args.quick, figures, {}, details)


if __name__ == "__main__":
    main()
