"""MoMa vs dense vs a modality-blind MoE on mixed_modal_tiny: training FLOPs to the dense model's validation loss.

Three arms, one process, the same data order, seed, schedule and token budget
(``STEPS`` steps of 32 captioned digits, about 2,570 real tokens a step):

* ``dense``: mixed_modal_tiny (SwiGLU FFN, hidden 128 -> 352);
* ``moma``: ``modality_experts.num_experts=[4,4]``: 4 text + 4 image experts
  of the dense FFN's size, expert-choice routing at capacity factor 1;
* ``mixed_moe``: ``num_experts=[8]``: one group of 8 experts every token
  routes in, otherwise the same.

Every ``EVAL_EVERY`` steps each arm's loss over the whole validation split
(720 sequences; per modality too) is measured in evaluation mode, i.e. with
the MoE arms routing causally, token by token, as at inference (the default
``threshold`` rule); the losses with MoMa's auxiliary routers and with
batch-level expert choice (not causal) are recorded beside it. The dense model's final loss (overall, text, image) is the target; an
arm's FLOPs to it are read off its curve (linear interpolation between
evaluations) and divided by the dense model's FLOPs for the whole run.

FLOP counting (analytic, multiply-adds x 2, training = 3 x forward): per real
input token, the Q/K/V and output projections (8 C^2), causal attention
scores and values (2 T C per token, half of the T x T products), the output
head (2 C V) and the FFN: dense 6 C F; MoE 6 C F per *measured* expert
assignment (counted every step from the layers' routing) plus the router and
the auxiliary router (2 C E each). Padding is not counted (it is the same in
every arm). Embedding lookups, norms and the softmax are not counted.

    python benchmarks/modality_experts.py [--quick]
"""

from __future__ import annotations

import time
from typing import Any

from common import parse_args, train_step, write_result

from jevons.framework.config.schema import ParallelConfig
from jevons.framework.reports import first_reach

TARGETS = {"flops_to_dense_loss_ratio_overall": "<=0.7"}
ARMS = {
    "dense": [],
    "moma": ["plugins=[modality_experts]", "modality_experts.num_experts=[4,4]"],
    "mixed_moe": ["plugins=[modality_experts]", "modality_experts.num_experts=[8]"],
}
STEPS, EVAL_EVERY = 2000, 100


def _build(overrides: list[str]) -> tuple[Any, ...]:
    import pytorch_lightning as pl

    from jevons.framework.build import build
    from jevons.framework.config.compose import compose_config
    from jevons.framework.data.loader import make_dataloader
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, ["recipe=mixed_modal_tiny", "data.num_workers=0", *overrides])
    family = manager.family(config.family)
    pl.seed_everything(config.seed, verbose=False)
    built = build(manager, family, config)
    loaders = {
        split: make_dataloader(built.datasets[split], built.batch_samplers[split], 0) for split in ("train", "val")
    }
    return config, built, loaders


def _moe_layers(model: Any) -> list[Any]:
    from jevons.plugins.modality_experts.layer import ModalityExperts

    return [m for m in model.modules() if isinstance(m, ModalityExperts)]


def forward_flops(model: Any, batch: dict[str, Any], assignments: int) -> float:
    """Forward FLOPs of one batch, by the counting rule in the module docstring."""
    shape = model.shape
    c, layers, vocab = shape.hidden_size, shape.num_layers, shape.vocab_size
    real = batch["real"]
    tokens = float(real.sum())
    positions = real.long().cumsum(dim=1)[real].float()  # each real token attends to this many keys
    attention = layers * 2 * 2 * c * float(positions.sum())  # scores and values
    projections = layers * tokens * 2 * 4 * c * c
    head = tokens * 2 * c * vocab
    moe = _moe_layers(model)
    if moe:
        routers = sum(2 * 2 * c * max(layer.experts_per_group) for layer in moe) * tokens  # router + auxiliary router
        ffn = assignments * 6 * c * moe[0].gate.shape[2] + routers
        ffn += (layers - len(moe)) * tokens * 6 * c * shape.ffn_hidden_size
    else:
        ffn = layers * tokens * 6 * c * shape.ffn_hidden_size
    return attention + projections + head + ffn


def _validate(model: Any, objective: Any, loader: Any, routing: str | None = None) -> dict[str, float]:
    import torch

    from jevons.recipes.mixed_modal.evaluate import per_modality

    layers = _moe_layers(model)
    saved = [layer.inference_routing for layer in layers]
    for layer in layers:
        layer.inference_routing = routing or layer.inference_routing
    model.eval()
    sums: dict[str, float] = {}
    weight = 0.0
    with torch.no_grad():
        for loaded in loader:
            out = objective(model, loaded.data)
            weight += out.weight
            sums["loss"] = sums.get("loss", 0.0) + out.loss.item() * out.weight
            for name, value in out.metrics.items():
                sums[name] = sums.get(name, 0.0) + value.item() * out.weight
    model.train()
    for layer, routing_saved in zip(layers, saved):
        layer.inference_routing = routing_saved
    means = {f"val/{k}": v / weight for k, v in sums.items()}
    return {
        "loss": means["val/loss"],
        **{k[4:]: v for k, v in per_modality(means, model.modalities).items()},
        **({"tokens_without_expert": means["val/moe_tokens_without_expert_fraction"]} if layers else {}),
    }


def train_arm(name: str, overrides: list[str], steps: int, eval_every: int) -> dict[str, Any]:
    from jevons.framework import distributed

    with distributed.initialized(ParallelConfig()):
        config, built, loaders = _build([*overrides, f"trainer.max_steps={steps}"])
        model, objective, optimization = built.model, built.objective, built.optimization
        layers = _moe_layers(model)
        curve, flops, step, started, assignments_seen = [], 0.0, 0, time.perf_counter(), 0
        while step < steps:
            for loaded in loaders["train"]:
                batch = loaded.data
                before = sum(int(layer.counts[1]) for layer in layers)
                train_step(model, objective, optimization, batch, config.trainer.gradient_clip_val)
                assignments = sum(int(layer.counts[1]) for layer in layers) - before
                assignments_seen += assignments
                flops += 3 * forward_flops(model, batch, assignments)
                step += 1
                if step % eval_every == 0 or step == steps:
                    point = {"step": step, "flops": flops, **_validate(model, objective, loaders["val"])}
                    if layers:
                        for routing in ("auxiliary", "expert_choice"):
                            point[f"loss_{routing}_routing"] = _validate(model, objective, loaders["val"], routing)[
                                "loss"
                            ]
                    curve.append(point)
                    print(
                        f"{name} step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in point.items() if k != "step"),
                        flush=True,
                    )
                if step == steps:
                    break
        from jevons.plugins.modality_experts.report import expert_figures

        return {
            "curve": curve,
            "seconds": time.perf_counter() - started,
            "parameters": sum(p.numel() for p in model.parameters()),
            "experts": expert_figures(layers) if layers else {},
        }


def flops_to_reach(curve: list[dict[str, Any]], key: str, target: float) -> float | None:
    return first_reach([(point["flops"], point[key]) for point in curve], target)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    steps, eval_every = (60, 20) if args.quick else (STEPS, EVAL_EVERY)
    runs = {name: train_arm(name, overrides, steps, eval_every) for name, overrides in ARMS.items()}
    dense = runs["dense"]["curve"]
    budget = dense[-1]["flops"]
    figures: dict[str, float] = {}
    for arm, prefix in (("moma", ""), ("mixed_moe", "mixed_moe_")):
        for key, suffix in (("loss", "overall"), ("loss_text", "text"), ("loss_image", "image")):
            reached = flops_to_reach(runs[arm]["curve"], key, dense[-1][key])
            name = f"{prefix}flops_to_dense_loss_ratio_{suffix}"
            figures[name] = reached / budget if reached is not None else float("inf")
    for arm in ("dense", "moma", "mixed_moe"):
        final = runs[arm]["curve"][-1]
        figures[f"{arm}_final_val_loss"] = final["loss"]
        figures[f"{arm}_final_val_loss_text"] = final["loss_text"]
        figures[f"{arm}_final_val_loss_image"] = final["loss_image"]
    for arm in ("moma", "mixed_moe"):
        figures[f"{arm}_train_flops_ratio_vs_dense"] = runs[arm]["curve"][-1]["flops"] / budget
        for routing in ("auxiliary", "expert_choice"):
            figures[f"{arm}_final_val_loss_{routing}_routing"] = runs[arm]["curve"][-1][f"loss_{routing}_routing"]
    details = {
        "steps": steps,
        "eval_every": eval_every,
        "batch_size": 32,
        "arms": ARMS,
        "flop_counting": "analytic, training = 3 x forward; per real token: 8C^2 projections, causal attention 2TC, "
        "head 2CV, FFN 6CF per measured expert assignment (dense: one per token), routers 2CE each",
        "runs": runs,
    }
    write_result("modality_experts", args.quick, figures, TARGETS, details)


if __name__ == "__main__":
    main()
