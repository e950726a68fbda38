"""``jevons new-plugin``: the written package installs into a fresh virtual environment and its own tests pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jevons.framework.cli.new_plugin import write_plugin_package
from jevons.framework.errors import UsageError


def test_the_template_installs_in_a_fresh_venv_and_its_tests_pass(command, tmp_path: Path) -> None:
    result = command(["jevons", "new-plugin", "grad_norm", "--dir", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    package = tmp_path / "jevons-grad-norm"
    # A fresh venv: nothing of its own but the template. Jevons and torch come from the
    # interpreter's site-packages (system-site-packages) because this machine has no internet;
    # pip too (--without-pip), so the install lands in the venv with a current setuptools.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(package)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    listed = command(
        [str(python), "-c", "from jevons.framework.cli.jevons import main; main(['plugins'])"], cwd=tmp_path
    )
    assert "grad_norm" in listed.stdout and "Gradient norm of every training step" in listed.stdout
    tests = command([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")], cwd=tmp_path)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "2 passed" in tests.stdout
    # Installed into the venv only: the interpreter running this test does not see the plugin.
    outside = command(
        ["python", "-c", "import importlib.util as u; print(u.find_spec('jevons_grad_norm'))"], cwd=tmp_path
    )
    assert outside.stdout.strip() == "None"


def test_bad_names_and_existing_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Plugin name 'Grad-Norm' must be lowercase"):
        write_plugin_package("Grad-Norm", tmp_path)
    write_plugin_package("ok", tmp_path)
    with pytest.raises(UsageError, match="jevons-ok exists"):
        write_plugin_package("ok", tmp_path)
