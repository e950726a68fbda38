"""Step 5 of a run: the run directory and what makes a run reproducible (docs/architecture.md, "Conventions").

``runs/<recipe>/<timestamp>/`` by default, holding ``config.yaml`` (written
first), ``versions.json`` (Python, torch, Lightning, Megatron-Core, Jevons and
every loaded plugin), ``metrics.csv``, TensorBoard events, ``checkpoints/``,
``samples/`` and, at the end, ``summary.json``.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from jevons.framework.checkpoint_dirs import is_complete, latest_checkpoint
from jevons.framework.config.schema import Config
from jevons.framework.errors import UsageError

CHECKPOINTS = "checkpoints"


def config_yaml(config: Config) -> str:
    return yaml.safe_dump(asdict(config), sort_keys=False)


def choose_run_dir(config: Config) -> Path:
    """``run.dir`` if given; with ``resume=auto`` this recipe's newest run; else a new timestamped folder."""
    if config.run.dir:
        return Path(config.run.dir)
    recipe_root = Path(config.run.root) / config.recipe
    if config.checkpoint.resume == "auto" and recipe_root.is_dir():
        runs = sorted(p for p in recipe_root.iterdir() if (p / CHECKPOINTS).is_dir())
        if runs:
            return runs[-1]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = recipe_root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = recipe_root / f"{stamp}-{n}"
    return candidate


def resume_path(config: Config, run_dir: Path) -> Path | None:
    """The checkpoint to resume from, per ``checkpoint.resume``."""
    resume = config.checkpoint.resume
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir / CHECKPOINTS)
    path = Path(resume)
    if not is_complete(path):
        raise UsageError(
            f"checkpoint.resume={resume!r} is not a complete checkpoint directory "
            f"(expected .../checkpoints/step_NNNNNNNN with a COMPLETE marker), 'auto' or 'never'."
        )
    return path


def write_run_files(run_dir: Path, config: Config, plugin_versions: dict[str, str]) -> None:
    """``config.yaml`` first, then ``versions.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_yaml(config))
    versions = {
        "python": platform.python_version(),
        "jevons": _version("jevons"),
        "torch": _version("torch"),
        "pytorch-lightning": _version("pytorch-lightning"),
        "megatron-core": _version("megatron-core"),
        "plugins": plugin_versions,
        "seed": config.seed,
        "command": sys.argv,
    }
    (run_dir / "versions.json").write_text(json.dumps(versions, indent=2))


def record_kernels(run_dir: Path, kernels: dict[str, str] | str) -> None:
    """Add the kernels the run chose (op and shape class: implementation and dtype) to ``versions.json``."""
    path = run_dir / "versions.json"
    versions = json.loads(path.read_text()) if path.exists() else {}
    versions["kernels"] = kernels
    path.write_text(json.dumps(versions, indent=2))


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table: one metric per row, then what each plugin reported."""
    from jevons.framework.attribution import format_figures

    rows: list[tuple[str, str]] = []
    for key, value in summary.items():
        if key == "plugin_figures":
            continue
        if isinstance(value, dict):
            rows.extend((f"{key}.{k}", _fmt(v)) for k, v in value.items())
        else:
            rows.append((key, _fmt(value)))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    table = "\n".join([line, *(f"{k.ljust(width)}  {v}" for k, v in rows), line])
    figures = format_figures(summary.get("plugin_figures") or {})
    return f"{table}\nWhat each plugin did in this run:\n{figures}" if figures else table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
