"""Train the glyph testbed's feature network once, commit it, and record what it measures.

    python benchmarks/glyph_features.py [--quick]

Builds ``glyph-images`` if missing (about 30 seconds on 2 cores), trains
:class:`~jevons.recipes.diffusion.glyph_quality.GlyphFeatureNet` on the train
fonts (Adam, cosine learning rate, random shifts of up to 2 px and random
colour-channel orders, seed 0), and writes it to
``recipes/diffusion/assets/glyph_features.safetensors``, where every glyph
benchmark loads it from. Then, on the held-out fonts:

* the classification accuracy (target >= 0.9): the network has to know glyphs
  it never saw a font of, or its features say little about samples;
* the ranking of degradations: one half of the held-out images against the
  other, clean, blurred (sigma 0.5, 1, 2 px) and with added noise (std 0.05,
  0.1, 0.2 of the pixel range): Fréchet distance with its 95% bootstrap
  interval (recentred on the estimate: resampling inflates the distance),
  precision and recall. Each must score worse step by step;
* the font-shift floor: the train fonts against the held-out ones, clean
  (what a perfect model of the train fonts scores).

``--quick`` trains one epoch on a tenth of the data and does not replace the
committed network.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from common import parse_args, repository_path, write_result

EPOCHS = 20
BATCH = 128
LR = 2e-3
BLURS = (0.5, 1.0, 2.0)
NOISES = (0.05, 0.1, 0.2)
TARGETS = {"feature_net_val_accuracy": ">=0.9", "blur_ranking_monotone": "==1", "noise_ranking_monotone": "==1"}


def _split(folder: Path, split: str) -> tuple[Any, Any]:
    import numpy as np
    import torch

    from jevons.recipes.diffusion.data import DigitClips
    from jevons.recipes.diffusion.family import DiffusionDataConfig

    data = DigitClips.from_folder(folder, split, DiffusionDataConfig(source=str(folder), resolution=32, frames=1))
    images = torch.from_numpy(np.stack([data[i]["video"][:, 0] for i in range(len(data))]))  # (N, 3, 32, 32)
    labels = torch.tensor([int(data[i]["labels"][0]) for i in range(len(data))])
    return images, labels


def _augment(images: Any, generator: Any) -> Any:
    """Random shifts of up to 2 px (edge pixels repeated) and a random order of the colour channels."""
    import torch
    import torch.nn.functional as F

    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 5, (2,), generator=generator))
    shifted = padded[:, :, dy : dy + 32, dx : dx + 32]
    return shifted[:, torch.randperm(3, generator=generator)]


def train(images: Any, labels: Any, epochs: int) -> Any:
    import torch
    import torch.nn.functional as F

    from jevons.recipes.diffusion.glyph_quality import GlyphFeatureNet

    torch.manual_seed(0)
    net = GlyphFeatureNet()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    steps = epochs * -(-len(images) // BATCH)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps, pct_start=0.1)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        started, total = time.perf_counter(), 0.0
        for start in range(0, len(order), BATCH):
            index = order[start : start + BATCH]
            _, logits = net(_augment(images[index], generator))
            loss = F.cross_entropy(logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(index)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f} ({time.perf_counter() - started:.0f} s)")
    return net.eval()


def _score(net: Any, probe: Any, reference: Any) -> dict[str, float]:
    from jevons.recipes.diffusion.glyph_quality import glyph_quality

    quality = glyph_quality(net, probe[:, :, None], reference[:, :, None])
    return {k: v for k, v in quality.as_dict().items() if k in ("fd", "fd_low", "fd_high", "precision", "recall")}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    import torch
    from safetensors.torch import save_file

    from jevons.framework.data.cache import data_root, ensure_built
    from jevons.recipes.diffusion.glyph_quality import WEIGHTS, add_noise, features_and_logits, gaussian_blur
    from jevons.recipes.diffusion.glyphs import GLYPH_IMAGES

    torch.set_num_threads(2)
    started = time.perf_counter()
    folder = ensure_built(GLYPH_IMAGES, data_root())
    built = time.perf_counter() - started
    train_images, train_labels = _split(folder, "train")
    val_images, val_labels = _split(folder, "val")
    if args.quick:
        train_images, train_labels = train_images[::10], train_labels[::10]
    started = time.perf_counter()
    net = train(train_images, train_labels, 1 if args.quick else EPOCHS)
    trained = time.perf_counter() - started
    if not args.quick:
        WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS))

    _, logits = features_and_logits(net, val_images[:, :, None])
    predicted = logits[:, 0].argmax(-1)
    accuracy = float((predicted == val_labels).float().mean())
    train_accuracy = float(
        (features_and_logits(net, train_images[::5, :, None])[1][:, 0].argmax(-1) == train_labels[::5]).float().mean()
    )
    reference, probe = val_images[0::2], val_images[1::2]
    arms = {"clean": probe}
    arms |= {f"blur sigma {s:g}": gaussian_blur(probe, s) for s in BLURS}
    arms |= {f"noise std {s:g}": add_noise(probe, s) for s in NOISES}
    scores = {arm: _score(net, images, reference) for arm, images in arms.items()}
    floor = _score(net, train_images[torch.randperm(len(train_images))[: len(val_images)]], val_images)

    def monotone(names: list[str]) -> bool:
        fds = [scores[name]["fd"] for name in names]
        return all(a < b for a, b in itertools.pairwise(fds))

    blur_monotone = monotone(["clean", *(f"blur sigma {s:g}" for s in BLURS)])
    noise_monotone = monotone(["clean", *(f"noise std {s:g}" for s in NOISES)])
    rows = [
        [
            arm,
            f"{s['fd']:.3f}",
            f"[{s['fd_low']:.3f}, {s['fd_high']:.3f}]",
            f"{s['precision']:.3f}",
            f"{s['recall']:.3f}",
        ]
        for arm, s in [*scores.items(), ("train fonts vs held-out fonts", floor)]
    ]
    figures = {
        "feature_net_val_accuracy": accuracy,
        "feature_net_train_accuracy": train_accuracy,
        "blur_ranking_monotone": float(blur_monotone),
        "noise_ranking_monotone": float(noise_monotone),
        "fd_clean": scores["clean"]["fd"],
        "fd_train_fonts_vs_val_fonts": floor["fd"],
        **{f"fd_blur_sigma_{s:g}".replace(".", "_"): scores[f"blur sigma {s:g}"]["fd"] for s in BLURS},
        **{f"fd_noise_std_{s:g}".replace(".", "_"): scores[f"noise std {s:g}"]["fd"] for s in NOISES},
    }
    details = {
        "data": f"glyph-images ({repository_path(folder)}): {len(train_images)} train, {len(val_images)} held-out "
        f"images; built in {built:.0f} s",
        "training": f"{1 if args.quick else EPOCHS} epochs, batch {BATCH}, Adam one-cycle lr {LR}, {trained:.0f} s",
        "weights": repository_path(WEIGHTS) if not args.quick else "not written (--quick)",
        "ranking": f"{len(probe)} held-out images against the other {len(reference)}; FD intervals: 95% "
        f"bootstrap, 200 resamples of both sets, percentiles recentred on the estimate; precision and recall with k = 3",
        "tables": {
            "Degradations of held-out glyphs": {
                "columns": ["probe", "Fréchet distance", "95% interval", "precision", "recall"],
                "rows": rows,
            }
        },
    }
    write_result("glyph_features", args.quick, figures, TARGETS, details)


if __name__ == "__main__":
    main()
