"""Packaging: every folder is a `jevons.*` subpackage, nothing generic is importable top-level, the wheel is whole."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "framework": "jevons.framework",
    "plugins": "jevons.plugins",
    "recipes": "jevons.recipes",
    "kernels": "jevons.kernels",
    "launch": "jevons.launch",
}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_src_jevons_links_each_folder_and_setuptools_finds_every_package_under_its_jevons_name() -> None:
    import setuptools

    config = _pyproject()["tool"]["setuptools"]
    assert config["package-dir"] == {"": "src"}  # an editable install is then a plain .pth line
    for folder in FOLDERS:
        link = REPO / "src" / "jevons" / folder
        assert link.is_symlink() and Path(link.readlink()) == Path("..", "..", folder)  # relative: clones keep it
    expected = {
        ".".join([FOLDERS[init.relative_to(REPO).parts[0]], *init.relative_to(REPO).parts[1:-1]])
        for folder in FOLDERS
        for init in (REPO / folder).rglob("__init__.py")
    }
    found = set(setuptools.find_packages(str(REPO / "src"), include=["jevons*"]))
    assert found == expected | {"jevons"}


def test_python_and_the_type_checker_resolve_jevons_to_the_same_files() -> None:
    import jevons.framework

    assert Path(jevons.framework.__file__).resolve() == REPO / "framework" / "__init__.py"
    # mypy reads the same src/ entry (pyproject's mypy_path; the editable install's .pth).
    assert _pyproject()["tool"]["mypy"]["mypy_path"] == "src"


@pytest.mark.parametrize("name", ["kernels", "plugins", "framework", "launch", "recipes"])
def test_top_level_folders_do_not_shadow_installed_packages(name: str) -> None:
    # This process: pytest runs with --import-mode=importlib, so the repository root is not on sys.path.
    assert (
        importlib.util.find_spec(name) is None or REPO not in Path(importlib.util.find_spec(name).origin or "/").parents
    )
    # A child process started from the repository root, as our tests and launchers start them: the name
    # is either not importable or an installed package of that name (transformers >= 5.25 requires
    # Hugging Face's `kernels`), never the repository's folder.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import importlib.util as u; spec = u.find_spec({name!r}); print(spec and spec.origin)",
        ],
        check=False,
        cwd=REPO,
        env={"PYTHONSAFEPATH": "1", "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert str(REPO / name) not in result.stdout, result.stdout
    assert str(Path(importlib.import_module(f"jevons.{name}").__file__ or "").resolve()).startswith(str(REPO / name))


def test_torch_range_takes_the_local_cpu_build_and_never_admits_2_14() -> None:
    torch_requirement = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch"))
    assert torch_requirement == "torch>=2.6,<2.14"
    assert not any(d.startswith("torchaudio") for d in _pyproject()["project"]["dependencies"])


def test_wheel_holds_every_module_recipe_and_console_script(tmp_path: Path) -> None:
    source = tmp_path / "source"  # setuptools writes build/ next to the sources: not in the repository
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "runs", "__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("jevons-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in REPO.glob("*/**/*.py"):
        top = module.relative_to(REPO).parts[0]
        if top in FOLDERS:
            assert f"jevons/{module.relative_to(REPO)}" in names
    assert "jevons/recipes/llm/configs/llm_tiny.yaml" in names
    assert not any(n.startswith(("framework/", "kernels/", "plugins/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "train = jevons.framework.cli.train:main" in text and "jevons = jevons.framework.cli.jevons:main" in text
