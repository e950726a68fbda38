"""``jevons new-plugin NAME``: a ready third-party plugin package — entry point, a documented hook, a test.

The package has the shape of every built-in plugin (``docs/writing_a_plugin.md``):
``__init__.py`` holds the contract (``PLUGIN_INFO``, the config section, the
hooks, annotated with the hooks' types, so it type-checks), ``report.py`` the
reporting callback. It measures something real so the author starts from a
working pattern rather than an empty file: a Lightning callback registered
through ``register_callbacks`` that records the gradient norm of every training
step, and a ``report()`` whose figures land in the run's summary
(``plugin_figures``). Its test installs nothing by hand: it runs a tiny real
``train`` with the plugin and reads the summary back.
"""

from __future__ import annotations

import re
from pathlib import Path

from jevons.framework.errors import UsageError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*\Z")

PYPROJECT = """[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "jevons-{dist}"
version = "0.1.0"
description = "A Jevons plugin: {name}."
requires-python = ">=3.11"
dependencies = ["jevons"]

[project.optional-dependencies]
test = ["pytest>=8"]

# Jevons finds the plugin through this entry point; `plugins=[{name}]` enables it in a run.
[project.entry-points.jevons]
{name} = "{module}"

[tool.setuptools]
packages = ["{module}"]

[tool.pytest.ini_options]
addopts = "--import-mode=importlib"
"""

MODULE = '''"""The ``{name}`` Jevons plugin.

Enable it with ``train recipe=llm_tiny plugins=[{name}]``; its settings are
the ``{name}.*`` keys (``{name}.log_every=10``). This module is the plugin's
contract: its ``PLUGIN_INFO``, its config section and its hooks, each annotated
with its hook's types; what it measures and reports is in ``report.py``.

Keep this module's top level light: torch and Lightning are imported inside
hooks (and for the type checker only, under ``TYPE_CHECKING``), so a mistyped
command is refused before they load.

Hooks are listed by ``jevons hooks``; their exact signatures and when they are
called are in Jevons' ``docs/hooks.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jevons.framework.config.schema import Config, section
from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import pytorch_lightning as pl

__version__ = "0.1.0"

@dataclass
class {config_class}:
    log_every: int = 10
    """Log the gradient norm to the run's metrics every this many steps."""


# The config section is registered under the plugin's name ("{name}").
PLUGIN_INFO = PluginInfo(
    description="Gradient norm of every training step, reported in the run summary", config={config_class}
)


@hookimpl
def configure(config: Config) -> None:
    cfg = section(config, "{name}", {config_class})
    if cfg.log_every < 1:
        raise UsageError(f"{name}.log_every={{cfg.log_every}} must be at least 1.")


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    """Called once per run after the model, optimizer and data are built; ``register`` takes
    Lightning callbacks. One with a ``report()`` method reports in the summary, under this plugin's name."""
    from {module}.report import GradientNorm

    register(GradientNorm(section(config, "{name}", {config_class}).log_every))
'''

REPORT = '''"""What the ``{name}`` plugin measures during a run, and reports in the run summary
(``plugin_figures.{name}``)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from jevons.framework.attribution import Figure


class GradientNorm(pl.Callback):
    """The global gradient norm before each optimizer step (before clipping).

    A ``jevons.framework.attribution.PluginReport``: Jevons sets its ``plugin`` attribute to the
    name of the plugin that registered it, and puts what ``report()`` returns in the run summary.
    """

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.norms: list[float] = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norms = [torch.linalg.vector_norm(g) for g in grads]
        norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        self.norms.append(norm)
        if len(self.norms) % self.log_every == 0:
            pl_module.log("{name}/grad_norm", norm)

    def report(self) -> dict[str, Figure]:
        """Figures for the run summary; names say the unit where there is one."""
        if not self.norms:
            return {{}}
        return {{
            "steps": len(self.norms),
            "mean_grad_norm": sum(self.norms) / len(self.norms),
            "last_grad_norm": self.norms[-1],
        }}
'''

TEST = '''"""The plugin on a real (tiny) Jevons run."""

from __future__ import annotations

from pathlib import Path

import pytest

from jevons.framework.errors import UsageError
from jevons.framework.run import train

TINY = [
    "recipe=llm_tiny", "plugins=[{name}]", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "model.max_seq_len=32", "data.seq_len=32", "data.batch_size=4", "data.num_workers=0", "trainer.max_steps=3",
    "trainer.limit_val_batches=0", "trainer.progress_bar=false",
]


def test_the_plugin_reports_a_gradient_norm_for_every_step(tmp_path: Path) -> None:
    result = train([*TINY, f"run.root={{tmp_path}}", "{name}.log_every=1"])
    assert result is not None  # None only for a run submitted elsewhere (Slurm)
    figures = result.summary["plugin_figures"]["{name}"]
    assert figures["steps"] == 3
    assert figures["mean_grad_norm"] > 0


def test_a_bad_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="{name}.log_every=0 must be at least 1"):
        train([*TINY, f"run.root={{tmp_path}}", "{name}.log_every=0"])
'''

README = """# jevons-{dist}

A Jevons plugin. Install it next to Jevons and enable it in a run:

    pip install -e .
    train recipe=llm_tiny plugins=[{name}] {name}.log_every=10
    jevons plugins            # lists {name} and the families it supports

Its figures appear in the end-of-run table and in `summary.json` under
`plugin_figures.{name}`. Test it with `pip install -e ".[test]" && pytest`.

`{module}/__init__.py` is the plugin's contract (its `PLUGIN_INFO`, config
section and hooks); `{module}/report.py` measures and reports.
"""


def write_plugin_package(name: str, parent: Path) -> list[Path]:
    """Write ``parent/jevons-NAME/``; refuse a name that is not a Python identifier or an existing folder."""
    if not NAME_PATTERN.match(name):
        raise UsageError(
            f"Plugin name '{name}' must be lowercase letters, digits and underscores, starting with a letter "
            "(it is a config section and part of a module name); e.g. jevons new-plugin grad_norm."
        )
    dist = name.replace("_", "-")
    root = Path(parent) / f"jevons-{dist}"
    if root.exists():
        raise UsageError(f"{root} exists; choose another name or --dir.")
    module = f"jevons_{name}"
    config_class = "".join(part.capitalize() for part in name.split("_")) + "Config"
    values = {"name": name, "dist": dist, "module": module, "config_class": config_class}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{module}/__init__.py": MODULE,
        f"{module}/report.py": REPORT,
        "tests/test_plugin.py": TEST,
    }
    written = []
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
        written.append(path)
    return written
