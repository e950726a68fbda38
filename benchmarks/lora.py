"""What LoRA saves in TDM distillation of a 512-wide image model: optimizer state and held weights, vs full.

Two arms of ``image_distill_tiny`` (TDM, 5 fake-score updates per student
step) on a 512-wide transformer (8 heads x 64, FFN 2,048, 4 blocks) whose
teacher is that model saved by ``save_pretrained`` (random weights: these
figures count bytes, which do not depend on the weights):

* full: ``plugins=[step_distillation]``: the student fine-tunes every weight,
  the teacher is loaded as its own copy, the fake score is a third copy;
* LoRA: ``plugins=[lora, step_distillation]``, rank 16 on q, k, v, o and both
  FFN matrices of every block: student and fake score are adapters on one
  frozen base, which is also the teacher.

Each arm is built by the framework's build and takes one training step, so
both optimizers (the student's, the fake score's) hold their AdamW moments.
Measured: the bytes of every tensor in both optimizers' state, and of every
distinct parameter tensor held by student, teacher and fake score. Beside
each, the arithmetic: with A = sum of r x (in + out) over the adapted
matrices and P the base's parameters, optimizer state A / P, held weights
(P + 2A) / 3P.

    python benchmarks/lora.py [--quick]

Not here (issue note): ``lora_student_fd_ratio_vs_full_student`` needs a
trained 512-wide teacher and both students distilled; ``compile_step_speedup``
is ``benchmarks/compile_speedup.py``'s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from common import parse_args, train_step, write_result

WIDE = [
    "model.num_heads=8",
    "model.head_dim=64",
    "model.ffn_dim=2048",
    "model.num_layers=4",
    "data.num_workers=0",
    "data.batch_size=4",
    "step_distillation.val_samples=4",
    "step_distillation.teacher_steps=4",
    "sample.fd_samples=0",
]
RANK = 16


def _teacher(folder: Path) -> Path:
    """The 512-wide model, as ``jevons export`` writes a class-conditional one."""
    import torch

    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, ["recipe=image_tiny", *[o for o in WIDE if o.startswith(("model.", "data."))]])
    torch.manual_seed(config.seed)
    manager.family("diffusion").build_model(config).save_pretrained(folder)
    return folder


def _arm(teacher: Path, plugins: str) -> dict[str, Any]:
    import torch

    from jevons.framework.build import build
    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    overrides = ["recipe=image_distill_tiny", *WIDE, f"model.pretrained={teacher}", f"plugins=[{plugins}]"]
    config = compose_config(manager, [*overrides, f"lora.rank={RANK}"] if "lora" in plugins else overrides)
    torch.manual_seed(config.seed)
    built = build(manager, manager.family("diffusion"), config)
    dataset = built.datasets["train"]
    batch = dataset.collate([dataset[i] for i in range(config.data.batch_size)])
    built.model.train()
    train_step(built.model, built.objective, built.optimization, batch, config.trainer.gradient_clip_val)
    return {"built": built, "overrides": overrides}


def _state_bytes(optimizer: Any) -> int:
    import torch

    return sum(
        v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)
    )


def _held_bytes(built: Any) -> int:
    objective = built.objective
    tensors = [*built.model.parameters(), *objective.parameters(), *objective.teacher.parameters()]
    return sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in tensors}.values())


def _adapter_arithmetic(built: Any) -> tuple[int, int]:
    """(A, P): sum of r x (in + out) over the adapted matrices, and the base's parameter count."""
    from jevons.framework.adapters import adapter_layers
    from jevons.plugins.lora.inject import adapter_parameters

    model = built.model
    adapted = sum(RANK * (layer.in_features + layer.out_features) for _, layer in adapter_layers(model))
    base = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in adapter_parameters(model).values())
    return adapted, base


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig

    with tempfile.TemporaryDirectory() as scratch, distributed.initialized(ParallelConfig()):
        teacher = _teacher(Path(scratch) / "teacher-512")
        arms = {"full": _arm(teacher, "step_distillation"), "lora": _arm(teacher, "lora,step_distillation")}
        measured = {}
        for name, arm in arms.items():
            built = arm["built"]
            optimizers = [built.optimization.optimizer, built.objective.fake_optimizer]
            measured[name] = {"state": sum(_state_bytes(o) for o in optimizers), "held": _held_bytes(built)}
        adapted, base = _adapter_arithmetic(arms["lora"]["built"])
        trained_full = sum(p.numel() for p in arms["full"]["built"].model.parameters() if p.requires_grad)

    state_ratio = measured["lora"]["state"] / measured["full"]["state"]
    held_ratio = measured["lora"]["held"] / measured["full"]["held"]
    state_arithmetic = adapted / trained_full
    held_arithmetic = (base + 2 * adapted) / (3 * base)
    figures = {
        "lora_optimizer_state_bytes_ratio_vs_full": state_ratio,
        "lora_optimizer_state_bytes_arithmetic": state_arithmetic,
        "lora_optimizer_state_bytes_ratio_over_arithmetic": state_ratio / state_arithmetic,
        "lora_distill_model_bytes_ratio_vs_full": held_ratio,
        "lora_distill_model_bytes_arithmetic": held_arithmetic,
        "lora_distill_model_bytes_ratio_over_arithmetic": held_ratio / held_arithmetic,
    }
    mib = 2**20
    details = {
        "overrides": arms["full"]["overrides"],
        "lora_rank": RANK,
        "adapter_parameters_per_network": adapted,
        "base_parameters": base,
        "trained_parameters_full": trained_full,
        "tables": {
            "TDM on a 512-wide image model, full fine-tune vs LoRA rank 16": {
                "columns": ["arm", "optimizer state (MiB)", "student + teacher + fake weights (MiB)"],
                "rows": [[name, f"{m['state'] / mib:.2f}", f"{m['held'] / mib:.2f}"] for name, m in measured.items()],
            },
            "Measured against the arithmetic": {
                "columns": ["figure", "measured", "arithmetic"],
                "rows": [
                    ["optimizer state, LoRA / full", f"{state_ratio:.4f}", f"{state_arithmetic:.4f} (A / P)"],
                    ["held weights, LoRA / full", f"{held_ratio:.4f}", f"{held_arithmetic:.4f} ((P + 2A) / 3P)"],
                ],
            },
        },
    }
    targets = {
        "lora_optimizer_state_bytes_ratio_over_arithmetic": "<= 1.05",
        "lora_distill_model_bytes_ratio_over_arithmetic": "<= 1.05",
    }
    write_result("lora", args.quick, figures, targets, details)


if __name__ == "__main__":
    main()
