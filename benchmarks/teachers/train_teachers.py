"""Train the tiny teachers the plugin benchmarks start from, and export them as diffusers folders.

    python benchmarks/teachers/train_teachers.py image    # 16 px digits, ~25 min on 2 CPU cores

The image teacher is the image_tiny recipe trained 7.5x longer (3,000 steps).
The export (``benchmarks/teachers/image-16px/``: a diffusers
``WanTransformer3DModel`` folder plus the class conditioner, about 4 MB of
safetensors) is committed, so benchmarks and tests need not retrain it;
``teacher.json`` records how it was made.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEACHERS = {
    "image": {
        "folder": "image-16px",
        "overrides": [
            "recipe=image_tiny", "trainer.max_steps=3000", "trainer.val_check_interval=1000", "checkpoint.every_n_steps=500",
            "optimizer.warmup_steps=100", "sample.fd_samples=0",
        ],
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=sorted(TEACHERS))
    parser.add_argument("--runs", default=str(HERE / "runs"), help="where the training run goes (not committed)")
    args = parser.parse_args()
    teacher = TEACHERS[args.which]

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run
    from jevons.framework.run import train

    started = time.time()
    result = train([*teacher["overrides"], f"run.root={args.runs}"])
    with distributed.initialized(ParallelConfig()):
        run = load_run(result.run_dir)
        out = HERE / teacher["folder"]
        run.model.save_pretrained(out)
    record = {
        "overrides": teacher["overrides"],
        "steps": result.summary["steps"],
        "final_train_loss": result.summary["train_loss"],
        "final_val_loss": result.summary["val_loss"],
        "minutes": round((time.time() - started) / 60, 1),
        "summary": result.summary,
    }
    (out / "teacher.json").write_text(json.dumps(record, indent=2))
    print(f"exported {out}")


if __name__ == "__main__":
    main()
