"""framework/compat.py: each private Lightning or diffusers API it wraps behaves as the framework assumes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl
import torch

from jevons.framework.compat import lightning_logged_step, lightning_should_update_logs, wan_qkv_projections


class _Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen: list[tuple[int, bool, int]] = []

    def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def on_train_batch_end(self, *args: object) -> None:
        trainer = self.trainer
        self.seen.append((trainer.global_step, lightning_should_update_logs(trainer), lightning_logged_step(trainer)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_logs_exactly_on_the_steps_compat_says_and_at_the_step_it_gives(tmp_path: Path) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(12, 3), torch.randn(12, 1))
    module = _Regression()
    trainer = pl.Trainer(
        max_steps=6,
        log_every_n_steps=2,
        logger=pl.loggers.CSVLogger(tmp_path, name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    with open(tmp_path / "metrics.csv") as handle:
        logged = [int(row["step"]) for row in csv.DictReader(handle) if row.get("loss")]
    assert [step for step, should, _ in module.seen] == [1, 2, 3, 4, 5, 6]
    assert [logged_step for _, should, logged_step in module.seen if should] == logged == [1, 3, 5]


def test_wan_qkv_projections_are_the_attention_modules_own_projections() -> None:
    from diffusers.models.transformers.transformer_wan import WanAttention

    torch.manual_seed(0)
    attn = WanAttention(dim=16, heads=2, dim_head=8)
    hidden = torch.randn(3, 5, 16)  # (B, S, C)
    query, key, value = wan_qkv_projections(attn, hidden)
    assert torch.equal(query, attn.to_q(hidden)) and torch.equal(key, attn.to_k(hidden))
    assert torch.equal(value, attn.to_v(hidden)) and query.shape == (3, 5, 16)


def test_pluggy_subset_caller_reaches_exactly_the_kept_plugins_whatever_their_function_names() -> None:
    import pluggy

    from jevons.framework.compat import pluggy_subset_caller

    spec, impl = pluggy.HookspecMarker("probe"), pluggy.HookimplMarker("probe")

    class Specs:
        @spec
        def ping(self) -> None: ...

    class Named:
        @impl
        def ping(self) -> str:
            return "named"

    class Renamed:
        @impl(specname="ping")
        def answer(self) -> str:
            return "renamed"

    manager = pluggy.PluginManager("probe")
    manager.add_hookspecs(Specs)
    manager.register(Named(), name="named")
    manager.register(Renamed(), name="renamed")
    assert pluggy_subset_caller(manager, "ping", {"named"})() == ["named"]
    assert pluggy_subset_caller(manager, "ping", {"renamed"})() == ["renamed"]
    assert sorted(pluggy_subset_caller(manager, "ping", {"named", "renamed"})()) == ["named", "renamed"]


def test_tensorboard_add_summary_writes_an_animated_gif_tensorboard_reads_back(tmp_path: Path) -> None:
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from jevons.recipes.diffusion.evaluate import log_to_tensorboard

    writer = SummaryWriter(str(tmp_path))
    frames = np.random.default_rng(0).integers(0, 255, (5, 8, 12, 3), dtype=np.uint8)
    log_to_tensorboard(writer, "samples", frames, step=7)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    (image,) = events.Images("samples")
    assert (image.step, image.width, image.height) == (7, 12, 8)
    assert image.encoded_image_string[:6] == b"GIF89a"  # an animation, as add_video writes it
