"""``jevons new-plugin``: the written package installs into a fresh virtual environment and its own tests pass."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

import pytest

from jevons.framework.cli.new_plugin import write_plugin_package
from jevons.framework.errors import UsageError


def venv_seeing_this_interpreter(venv: Path) -> Path:
    """A fresh venv whose only packages of its own are what gets installed into it; the rest (Jevons,
    torch, pip) come from the interpreter running the tests, since this machine has no internet.

    ``--system-site-packages`` would not do: from inside a virtual environment it exposes the base
    interpreter's site-packages, not the environment's, so Jevons would be missing. Instead a ``.pth``
    file adds this interpreter's site directories with ``site.addsitedir``, which also runs their own
    ``.pth`` files (Jevons' editable install is one).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = [path for path in [*site.getsitepackages(), site.getusersitepackages()] if Path(path).is_dir()]
    lines = [f"import site; site.addsitedir({path!r})" for path in ours]
    (Path(purelib) / "_outer_interpreter.pth").write_text("\n".join(lines) + "\n")
    return python


def test_the_template_installs_in_a_fresh_venv_and_its_tests_pass(command, tmp_path: Path) -> None:
    result = command(["jevons", "new-plugin", "grad_norm", "--dir", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    package = tmp_path / "jevons-grad-norm"
    python = venv_seeing_this_interpreter(tmp_path / "venv")
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


def test_the_template_has_the_built_in_plugins_shape_and_type_checks(command, tmp_path: Path) -> None:
    import jevons

    result = command(["jevons", "new-plugin", "grad_norm", "--dir", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    package = tmp_path / "jevons-grad-norm"
    # The shape of every built-in plugin: the contract in __init__.py, the reporting callback in report.py.
    assert sorted(p.name for p in (package / "jevons_grad_norm").iterdir()) == ["__init__.py", "report.py"]
    # Jevons as the plugin's author has it installed: its py.typed marker (PEP 561) lets mypy read its
    # annotations through the editable install's .pth entry, with no MYPYPATH.
    assert (Path(jevons.__file__).parent / "py.typed").is_file()
    checked = command(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",  # the plugin's own errors only, not those of what it imports
            "--cache-dir",
            str(tmp_path / "mypy_cache"),
            str(package / "jevons_grad_norm"),
            str(package / "tests" / "test_plugin.py"),
        ],
        cwd=package,
    )
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]


def test_bad_names_and_existing_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Plugin name 'Grad-Norm' must be lowercase"):
        write_plugin_package("Grad-Norm", tmp_path)
    write_plugin_package("ok", tmp_path)
    with pytest.raises(UsageError, match="jevons-ok exists"):
        write_plugin_package("ok", tmp_path)
