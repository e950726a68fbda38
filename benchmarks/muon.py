"""Muon vs AdamW on the llm_tiny model: tokens to AdamW's final loss, optimizer-step time, wall-clock.

1. Tokens. Both optimizers train llm_tiny for the recipe's full budget (500
   steps x 16 x 128 tokens) over a learning-rate sweep (at least 4 rates each,
   widened until each optimizer's best rate is strictly inside) and 3 seeds,
   with the recipe's warm-up + cosine schedule. Validation loss on the whole
   validation split every 50 steps. AdamW's target is the mean final
   validation loss of its best rate; Muon's tokens are where each seed's
   curve at Muon's best rate first reaches it (linear interpolation between
   evaluations), averaged over seeds. ``tokens_to_adamw_loss_ratio`` is that
   over AdamW's budget.
2. Optimizer step. Jevons' Muon against ``torch.optim.Muon`` on the same
   2-D parameters (llm_tiny's hidden matrices) and gradients, same update rule
   (Keller's scaling, Nesterov, no weight decay), timed interleaved. Jevons'
   Newton-Schulz path and dtype are what kernel dispatch measures and picks on
   this machine (recorded in the JSON); run first, so every training run of
   parts 1, 3 and 4 is forced to that same choice.
3. Wall-clock. Median full training-step time of each optimizer (model,
   data and everything) at its best rate, timed interleaved after the sweep,
   so the token ratio can be turned into time.
4. Shorter schedule. Reading the target off Muon's full-budget curve
   measures Muon mid-schedule, before its learning rate has decayed. The
   paper's question is a shorter *run*: Muon at its best rate for
   ``SHORT_FRACTION`` of the budget, its cosine decay ending there (same
   warm-up), 3 seeds; reported as its final loss against AdamW's target.

Training uses the framework's own parts (the llm family's model, data and
objective, the default sampler, the plugin's optimizer, the configured
schedule, gradient clipping) in a lean loop, so validation curves are cheap.

    python benchmarks/muon.py [--quick]
    python benchmarks/muon.py --short-schedule-only   # add part 4 to an existing full result
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from common import median, parse_args, train_step, write_result

from jevons.framework.config.schema import ParallelConfig
from jevons.framework.reports import first_reach

SHORT_FRACTION = 0.55  # the target ratio
KERNEL_OVERRIDES: list[str] = []
"""``kernels.newton_schulz=<choice>``: what dispatch picked on this machine in part 2, forced for every
training run so all arms and seeds compute with the same Newton-Schulz path."""
TARGETS = {"tokens_to_adamw_loss_ratio": "<=0.55", "step_time_ratio_vs_torch_muon": "<=1.0"}


def _setup(optimizer: str, lr: float, seed: int, extra: list[str]) -> tuple[Any, ...]:
    import pytorch_lightning as pl

    from jevons.framework.build import default_batch_sampler
    from jevons.framework.config.compose import compose_config
    from jevons.framework.data.loader import make_dataloader
    from jevons.framework.optim import as_optimization, default_optimizer
    from jevons.framework.plugin_manager import PluginManager
    from jevons.kernels import dispatch
    from jevons.plugins import muon

    manager = PluginManager.load(autoload=False)
    plugins = "[muon]" if optimizer == "muon" else "[]"
    config = compose_config(
        manager,
        [
            "recipe=llm_tiny",
            f"plugins={plugins}",
            f"optimizer.lr={lr}",
            f"seed={seed}",
            "data.num_workers=0",
            *KERNEL_OVERRIDES,
            *extra,
        ],
    )
    dispatch.force(config.kernels)  # as a run does
    family = manager.family(config.family)
    pl.seed_everything(seed, verbose=False)
    model = family.build_model(config)
    objective = family.default_objective(model, config)
    made = muon.make_optimizer(model, config) if optimizer == "muon" else default_optimizer(model, config)
    optimization = as_optimization(made, config)
    train = family.build_dataset(config, "train")
    val = family.build_dataset(config, "val")
    train_loader = make_dataloader(train, default_batch_sampler(train, config, "train"), 0)
    val_loader = make_dataloader(val, default_batch_sampler(val, config, "val"), 0)
    return config, model, objective, optimization, train_loader, val_loader


def _validate(model: Any, objective: Any, loader: Any) -> float:
    import torch

    model.eval()
    total = weight = 0.0
    with torch.no_grad():
        for loaded in loader:
            out = objective(model, loaded.data)
            total += out.loss.item() * out.weight
            weight += out.weight
    model.train()
    return total / weight


def train_curve(optimizer: str, lr: float, seed: int, steps: int, eval_every: int, extra: list[str]) -> dict[str, Any]:
    """Validation loss against tokens seen (and step times, for the timing phase)."""

    from jevons.framework import distributed

    with distributed.initialized(ParallelConfig()):
        config, model, objective, optimization, train_loader, val_loader = _setup(optimizer, lr, seed, extra)
        curve, tokens, step, step_times = [], 0, 0, []
        while step < steps:
            for loaded in train_loader:
                batch = loaded.data
                start = time.perf_counter()
                out = train_step(model, objective, optimization, batch, config.trainer.gradient_clip_val)
                step_times.append(time.perf_counter() - start)
                tokens += out.weight
                step += 1
                if step % eval_every == 0 or step == steps:
                    curve.append((step, tokens, _validate(model, objective, val_loader)))
                if step == steps:
                    break
    return {"curve": curve, "step_s": step_times}


def train_step_times(best: dict[str, float], rounds: int, steps: int) -> dict[str, float]:
    """Median training-step seconds per optimizer at its best rate, arms interleaved."""
    times: dict[str, list[float]] = {name: [] for name in best}
    for round_index in range(rounds):
        names = list(best) if round_index % 2 == 0 else list(best)[::-1]
        for name in names:
            times[name] += train_curve(name, best[name], 0, steps, steps, [])["step_s"][5:]
    return {name: median(values) for name, values in times.items()}


def sweep(
    optimizer: str, lrs: list[float], seeds: list[int], steps: int, eval_every: int, extend: bool
) -> dict[float, list[dict]]:
    """Runs per learning rate; widened by factors of 2 until the best rate is strictly inside."""
    runs: dict[float, list[dict]] = {}

    def run(lr: float) -> None:
        runs[lr] = [train_curve(optimizer, lr, seed, steps, eval_every, []) for seed in seeds]
        finals = [r["curve"][-1][2] for r in runs[lr]]
        print(
            f"{optimizer} lr={lr:g}: final val loss {statistics.mean(finals):.4f} over {len(seeds)} seed(s)", flush=True
        )

    for lr in lrs:
        run(lr)
    while extend:
        ordered = sorted(runs)
        best = min(ordered, key=lambda lr: _mean_final(runs[lr]))
        if best == ordered[0]:
            run(best / 2)
        elif best == ordered[-1]:
            run(best * 2)
        else:
            break
    return runs


def _mean_final(runs: list[dict]) -> float:
    return statistics.mean(r["curve"][-1][2] for r in runs)


def step_time_vs_torch_muon(rounds: int, steps: int) -> tuple[float, float, float, dict[str, str]]:
    """Median ``step()`` time of Jevons' Muon and torch.optim.Muon on llm_tiny's hidden matrices, and what
    kernel dispatch picked for each Newton-Schulz shape class (measured afresh: no cache file)."""
    import torch

    from jevons.framework import distributed
    from jevons.kernels import dispatch
    from jevons.plugins.muon.optimizer import Muon, parameter_groups
    from jevons.plugins.muon.split import split_parameters

    with distributed.initialized(ParallelConfig()):
        _config, model, *_ = _setup("muon", 3e-3, 0, [])
        shapes = [a.param.shape for a in split_parameters(model)[0]]
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    grads = [torch.randn(s) for s in shapes]
    groups = parameter_groups(
        [(p, "matrix") for p in ours],
        [],
        [],
        lr=0.02,
        muon_lr=0.02,
        weight_decay=0.0,
        muon_weight_decay=0.0,
        momentum=0.95,
        nesterov=True,
        ns_steps=5,
        rule="keller",
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    dispatch.force({})
    dispatch.use_files(None, None, resume=False)
    jevons_muon = Muon(groups, newton_schulz=dispatch.get("newton_schulz"))
    torch_muon = torch.optim.Muon(
        theirs, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True, adjust_lr_fn="original"
    )
    times: dict[str, list[float]] = {"jevons": [], "torch": []}
    for round_index in range(rounds):
        arms = [("jevons", jevons_muon, ours), ("torch", torch_muon, theirs)]
        for name, optimizer, params in arms if round_index % 2 == 0 else arms[::-1]:
            for i in range(steps):
                for p, g in zip(params, grads):
                    p.grad = g
                start = time.perf_counter()
                optimizer.step()
                if i >= 2:
                    times[name].append(time.perf_counter() - start)
    ours_s, theirs_s = median(times["jevons"]), median(times["torch"])
    choices = {d.key: d.choice for d in dispatch.decisions("newton_schulz")}
    return ours_s / theirs_s, ours_s, theirs_s, choices


def short_schedule(lr: float, seeds: list[int], steps: int, eval_every: int) -> list[dict]:
    """Muon runs whose cosine decay ends at ``SHORT_FRACTION`` of the budget."""
    short = math.ceil(SHORT_FRACTION * steps)
    return [train_curve("muon", lr, seed, short, eval_every, [f"trainer.max_steps={short}"]) for seed in seeds]


def short_schedule_figures(runs: list[dict], target: float, budget: float) -> dict[str, float]:
    finals = [r["curve"][-1][2] for r in runs]
    return {
        "short_schedule_tokens_ratio": statistics.mean(r["curve"][-1][1] for r in runs) / budget,
        "short_schedule_muon_final_val_loss": statistics.mean(finals),
        "short_schedule_seeds_reaching_adamw_loss": float(sum(f <= target for f in finals)),
    }


def _add_short_schedule(path) -> None:  # type: ignore[no-untyped-def]
    import json

    result = json.loads(path.read_text())
    figures, details = result["figures"], result["details"]
    KERNEL_OVERRIDES.extend(details.get("training_runs_forced", []))  # the full run's Newton-Schulz path
    runs = short_schedule(figures["muon_best_lr"], details["seeds"], details["steps"], 50)
    figures.update(short_schedule_figures(runs, figures["adamw_final_val_loss"], details["budget_tokens"]))
    details["short_schedule_curves"] = [r["curve"] for r in runs]
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k.startswith("short_schedule")}, indent=2))


def main() -> None:
    def options(parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument(
            "--short-schedule-only", action="store_true", help="run part 4 and add it to results/muon.json"
        )

    args = parse_args(__doc__.splitlines()[0], options)
    if args.short_schedule_only:
        from common import RESULTS

        _add_short_schedule(RESULTS / "muon.json")
        return
    if args.quick:
        lrs, seeds, steps, eval_every, extend, timing = [2e-3, 4e-3], [0], 40, 10, False, (2, 15)
    else:
        lrs, seeds, steps, eval_every, extend, timing = [2e-3, 4e-3, 8e-3, 16e-3], [0, 1, 2], 500, 50, True, (4, 60)

    step_ratio, ours_s, theirs_s, ns_choices = step_time_vs_torch_muon(6, 30)
    if len(set(ns_choices.values())) == 1:
        KERNEL_OVERRIDES.append(f"kernels.newton_schulz={next(iter(ns_choices.values()))}")
    results = {name: sweep(name, lrs, seeds, steps, eval_every, extend) for name in ("adamw", "muon")}
    best = {name: min(runs, key=lambda lr: _mean_final(runs[lr])) for name, runs in results.items()}
    target = _mean_final(results["adamw"][best["adamw"]])
    budget = statistics.mean(r["curve"][-1][1] for r in results["adamw"][best["adamw"]])
    # Interpolated between evaluations, as `jevons compare` reads steps to a target.
    reached = [
        first_reach([(tokens, loss) for _, tokens, loss in r["curve"]], target) for r in results["muon"][best["muon"]]
    ]
    tokens_muon = statistics.mean(t if t is not None else math.inf for t in reached)
    short_runs = short_schedule(best["muon"], seeds, steps, eval_every)
    step_s = train_step_times(best, *timing)
    adamw_step, muon_step = step_s["adamw"], step_s["muon"]
    token_ratio = tokens_muon / budget

    rows = []
    for name, runs in results.items():
        for lr in sorted(runs):
            finals = [r["curve"][-1][2] for r in runs[lr]]
            spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
            rows.append(
                [name, f"{lr:g}", f"{statistics.mean(finals):.4f}", f"{spread:.4f}", "best" if lr == best[name] else ""]
            )
    curves = {name: {f"{best[name]:g}": [r["curve"] for r in results[name][best[name]]]} for name in results}
    figures = {
        "tokens_to_adamw_loss_ratio": token_ratio,
        "step_time_ratio_vs_torch_muon": step_ratio,
        "wallclock_to_adamw_loss_ratio": token_ratio * muon_step / adamw_step,
        "adamw_final_val_loss": target,
        "muon_final_val_loss": _mean_final(results["muon"][best["muon"]]),
        "adamw_best_lr": best["adamw"],
        "muon_best_lr": best["muon"],
        "muon_seeds_reaching_adamw_loss": sum(t is not None for t in reached),
        "train_step_ms_adamw": 1000 * adamw_step,
        "train_step_ms_muon": 1000 * muon_step,
        "optimizer_step_ms_jevons_muon": 1000 * ours_s,
        "optimizer_step_ms_torch_muon": 1000 * theirs_s,
        **short_schedule_figures(short_runs, target, budget),
    }
    details = {
        "budget_tokens": budget,
        "steps": steps,
        "seeds": seeds,
        "muon_tokens_per_seed": reached,
        "newton_schulz_dispatch": ns_choices,
        "training_runs_forced": KERNEL_OVERRIDES,
        "tables": {
            "Learning-rate sweep (final validation loss, mean and stdev over seeds)": {
                "columns": ["optimizer", "lr", "final val loss", "stdev", ""],
                "rows": rows,
            }
        },
        "curves_at_best_lr": curves,
        "short_schedule_curves": [r["curve"] for r in short_runs],
    }
    write_result("muon", args.quick, figures, TARGETS, details)


if __name__ == "__main__":
    main()
