"""The commands as a user runs them: bad input is a clear message, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

PROBE = (
    "import sys; from jevons.framework.cli.train import main; rc = main(sys.argv[1:]); "
    "print('torch imported' if 'torch' in sys.modules else 'torch not imported', file=sys.stderr); sys.exit(rc)"
)


def _assert_refused(result, cwd: Path, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "\nerror: " in "\n" + result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert list(cwd.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["recipe=doesnotexist"],
            [
                "Unknown recipe 'doesnotexist'",
                "Recipes: image_distill_tiny, image_glyphs, image_glyphs_distill, image_glyphs_lowdiff, image_lowdiff_tiny,",
            ],
        ),
        (["recipe=llm_tiyn"], ["Did you mean 'llm_tiny'?"]),
        (
            ["recipe=llm_tiny", "trainer.max_step=10"],
            ["Unknown key 'trainer.max_step'", "Did you mean 'trainer.max_steps'?"],
        ),
        (["recipe=llm_tiny", "trainer.max_steps=abc"], ["trainer.max_steps='abc'", "expected an integer"]),
        (["recipe=llm_tiny", "plugins=[nosuch]"], ["Unknown plugin 'nosuch'", "Installed plugins:"]),
        (["recipe=llm_tiny", "--max-steps", "3"], ["'--max-steps' is not an option"]),
    ],
)
def test_config_mistakes_are_refused_before_torch_is_imported(command, tmp_path: Path, args, fragments) -> None:
    result = command(["python", "-c", PROBE, *args], cwd=tmp_path)
    _assert_refused(result, tmp_path, *fragments)
    if not args[-1].startswith("--"):
        assert "torch not imported" in result.stderr


def _install_entry_point(site: Path, name: str, module_source: str) -> None:
    """A real installed distribution (dist-info with an entry point) on PYTHONPATH, without pip."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[jevons]\n{name} = {name}\n")


def test_a_third_party_hook_that_raises_names_plugin_and_hook(command, tmp_path: Path) -> None:
    site, cwd = tmp_path / "site", tmp_path / "cwd"
    cwd.mkdir()
    _install_entry_point(
        site,
        "broken_plugin",
        """
        from jevons.framework.plugin import hookimpl

        @hookimpl
        def make_optimizer(model, config):
            raise ValueError("learning rate went missing")
        """,
    )
    args = ["train", "recipe=llm_tiny", "plugins=[broken_plugin]", "model.hidden_size=32", "model.num_layers=1"]
    result = command(args, cwd=cwd, PYTHONPATH=str(site))
    _assert_refused(
        result, cwd, "plugin 'broken_plugin' failed in hook 'make_optimizer': ValueError: learning rate went missing"
    )

    listed = command(["jevons", "plugins"], cwd=cwd, PYTHONPATH=str(site))
    assert "broken_plugin" in listed.stdout and "0.1" in listed.stdout
    hidden = command(["jevons", "plugins"], cwd=cwd, PYTHONPATH=str(site), JEVONS_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "broken_plugin" not in hidden.stdout


def test_disabled_autoload_never_imports_third_party_modules(command, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install_entry_point(site, "loud_plugin", "raise SystemExit('loud_plugin was imported')\n")
    probe = "from jevons.framework.plugin_manager import PluginManager; print(sorted(PluginManager.load().names()))"
    disabled = command(["python", "-c", probe], cwd=tmp_path, PYTHONPATH=str(site), JEVONS_DISABLE_PLUGIN_AUTOLOAD="1")
    assert disabled.returncode == 0 and "loud_plugin" not in disabled.stdout + disabled.stderr
    enabled = command(["python", "-c", probe], cwd=tmp_path, PYTHONPATH=str(site))
    assert "loud_plugin was imported" in enabled.stderr


def test_help_and_listings(command, tmp_path: Path) -> None:
    help_text = command(["train", "--help"], cwd=tmp_path)
    assert help_text.returncode == 0
    assert "usage: train recipe=NAME" in help_text.stdout and "llm_tiny" in help_text.stdout
    recipes = command(["jevons", "recipes"], cwd=tmp_path).stdout
    assert "llm_tiny" in recipes and "llm_125m" in recipes and "llm" in recipes
    plugins = command(["jevons", "plugins"], cwd=tmp_path).stdout
    assert "jevons.recipes.llm" in plugins and "Plugin x family" in plugins
    hooks = command(["jevons", "hooks"], cwd=tmp_path).stdout
    assert (
        "make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer | Optimization | None" in hooks
    )
    sources = command(["jevons", "data"], cwd=tmp_path).stdout
    assert "llm-prose" in sources


def test_jevons_data_builds_a_source_with_progress(command, tmp_path: Path) -> None:
    result = command(["jevons", "data", "llm-prose", "--root", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    built = Path(result.stdout.strip())
    assert built == tmp_path / "llm-prose-v2"
    assert {"train.json", "val.json", "tokenizer.json", "meta.json", "COMPLETE"} <= {p.name for p in built.iterdir()}
    assert "llm-prose: 100%" in result.stderr  # the progress bar
    missing = command(["jevons", "data", "llm-pros"], cwd=tmp_path)
    assert missing.returncode == 2 and "Did you mean 'llm-prose'?" in missing.stderr
