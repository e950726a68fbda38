"""Train the tiny teachers the plugin benchmarks start from, and export them as diffusers folders.

    python benchmarks/teachers/train_teachers.py image    # 16 px digits, ~25 min on 2 CPU cores
    python benchmarks/teachers/train_teachers.py video    # 32 px x 16 frames, ~85 min on 2 CPU cores; rerun to resume
    python benchmarks/teachers/train_teachers.py glyph-image  # 32 px glyphs, ~50 min; rerun to resume

The image teacher is the image_tiny recipe trained 7.5x longer (3,000 steps).
The export (``benchmarks/teachers/image-16px/``: a diffusers
``WanTransformer3DModel`` folder plus the class conditioner, about 4 MB of
safetensors) is committed, so benchmarks and tests need not retrain it;
``teacher.json`` records how it was made.

The video teacher (moving digits, 32 px x 16 frames: 4,096 tokens per clip,
the block-sparse attention and BLADE benchmarks' teacher) is video_tiny at
that size trained 1,000 steps of 4 clips; a step takes 4.6 s here, so its run
lives at a fixed directory and resumes from its newest checkpoint when the
command is run again. Its export (``video-32px-16f/``, about 4 MB) is
committed like the image teacher's.
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
    "video": {
        "folder": "video-32px-16f",
        "overrides": [
            "recipe=video_tiny", "data.resolution=32", "data.frames=16", "model.rope_max_seq_len=64", "data.batch_size=4",
            "trainer.max_steps=1000", "trainer.val_check_interval=500", "checkpoint.every_n_steps=100",
            "checkpoint.keep_last=2", "optimizer.warmup_steps=100", "sample.fd_samples=0",
        ],
        "resumable": True,
    },
    "glyph-image": {
        # The glyph testbed's image teacher (image_glyphs: 256 tokens an image, 4,000 steps of 32). Its run
        # lives in the repository, keeping its newest checkpoint (every 500 steps, about 6 minutes), which
        # is committed while it trains, so a later session resumes it.
        "folder": "glyph-image-32px",
        "overrides": ["recipe=image_glyphs", "trainer.progress_bar=false"],
        "resumable": True,
        "run_dir": HERE / "training" / "glyph-image-32px",
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
    run_dir = teacher.get("run_dir", Path(args.runs) / teacher["folder"])
    where = [f"run.dir={run_dir}", "checkpoint.resume=auto"] if teacher.get("resumable") else [f"run.root={args.runs}"]
    result = train([*teacher["overrides"], *where])
    if result.summary["stopped"] != "no":  # a signal stopped it: nothing half-trained is exported
        print(f"stopped at step {result.summary['steps']} ({result.summary['stopped']}); run the same command to resume")
        return
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
