"""What the cascade did in a run: sampling steps per stage and sampling time (``plugin_figures.lowres_cascade``)."""

from __future__ import annotations

import pytorch_lightning as pl

from jevons.framework.attribution import Figure
from jevons.plugins.lowres_cascade.cascade import CascadeSampler


class CascadeReport(pl.Callback):
    """Sampling steps per stage and sampling time of the cascade's generator during the run's evaluations."""

    def __init__(self) -> None:
        self.sampler: CascadeSampler | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        generator = getattr(pl_module, "generator", None)
        self.sampler = generator if isinstance(generator, CascadeSampler) else None

    def report(self) -> dict[str, Figure]:
        calls = self.sampler.calls if self.sampler is not None else []
        if not calls:
            return {"sampling": "the cascade sampled nothing in this run"}
        last = calls[-1]
        # Cost of a network evaluation grows with its tokens: (res / final res)^2 of a full-resolution one.
        final = last.resolutions[-1]
        relative = sum(steps * (res / final) ** 2 for res, steps in zip(last.resolutions, last.steps))
        figures: dict[str, Figure] = {f"steps_at_{res}px": steps for res, steps in zip(last.resolutions, last.steps)}
        figures["full_resolution_equivalent_steps"] = round(relative, 3)
        figures["sampling_calls"] = len(calls)
        figures["sampling_s_per_sample"] = round(sum(c.seconds for c in calls) / sum(c.samples for c in calls), 5)
        return figures
