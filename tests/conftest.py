"""Shared fixtures: one data cache per session, tiny llm and smoke-sized overrides, running `train` in-process or as a command.

Test modules are imported with ``--import-mode=importlib`` (docs/architecture.md, "Shadowing
hazard"), so helpers reach them as fixtures rather than imports.
"""

from __future__ import annotations

import csv
import os

# Triton kernels run on the CPU through Triton's interpreter. It must be chosen before
# anything imports Triton (torch and Lightning may): Triton's own standard-library
# functions are compiled-or-interpreted when Triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# The llm family's model and data at their smallest; TINY_LLM and SMOKE["llm"] add the run's length.
SMALL_LLM = (
    "recipe=llm_tiny",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "data.batch_size=4",
    "data.num_workers=0",
)
# Small enough for a few seconds per run on 2 cores; same family, data and code paths as llm_tiny.
TINY_LLM = (
    *SMALL_LLM,
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "generate.max_new_tokens=4",
    "checkpoint.every_n_steps=2",
)

# Per family, overrides that make its smallest recipe run in seconds (3 steps, one validation), for the
# plugin-family matrix (tests/test_plugin_family_matrix.py) and other smoke-sized runs. A family without
# an entry fails test_every_family_has_a_smoke_setting instead of being skipped.
SMOKE = {
    "llm": [
        *SMALL_LLM,
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "generate.max_new_tokens=2",
        "trainer.progress_bar=false",
    ],
    "diffusion": [
        "recipe=image_tiny",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.head_dim=16",
        "model.ffn_dim=32",
        "data.resolution=8",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "sample.steps=2",
        "sample.grid_rows=1",
        "sample.fd_samples=20",
        "sample.eval_batch=20",
        "trainer.progress_bar=false",
    ],
    "speech": [
        "recipe=speech_tiny",
        "data.num_mels=40",
        "model.hidden_size=32",
        "model.num_heads=2",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "model.ffn_hidden_size=64",
        "model.subsampling_channels=8",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "decode.eval_utterances=4",
        "trainer.progress_bar=false",
    ],
    "mixed_modal": [
        "recipe=mixed_modal_tiny",
        "model.hidden_size=32",
        "model.num_layers=2",
        "model.num_heads=2",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "generate.captions=[a thick seven]",
        "generate.images_per_caption=1",
        "generate.caption_images=2",
        "trainer.progress_bar=false",
    ],
}


@pytest.fixture(scope="session")
def smoke() -> dict[str, list[str]]:
    """:data:`SMOKE`: per family, the overrides of a smoke-sized run."""
    return SMOKE


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in data is generated once per session into this cache ($JEVONS_DATA)."""
    root = Path(os.environ.get("JEVONS_TEST_DATA") or tmp_path_factory.mktemp("jevons-data"))
    os.environ["JEVONS_DATA"] = str(root)
    return root


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small espeak-ng corpus (60 training, 20 validation sentences) for ``data.source=``.

    espeak-ng is a Debian package: it is installed here when missing and run as root (as in CI).
    """
    import shutil

    if shutil.which("espeak-ng") is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "espeak-ng"],
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    from jevons.recipes.speech.data import build_speech

    folder = tmp_path_factory.mktemp("speech-corpus")
    build_speech(folder, progress=False, max_sentences={"train": 60, "val": 20})
    return folder


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def tiny(run_root: Path) -> Callable[..., list[str]]:
    """``tiny(*overrides)``: the tiny llm overrides, runs under this test's folder, ``overrides`` last."""

    def overrides(*extra: str) -> list[str]:
        return [*TINY_LLM, f"run.root={run_root}", *extra]

    return overrides


@pytest.fixture
def train() -> Callable[..., Any]:
    """``train(overrides, plugins=[(name, plugin)])`` in this process; third-party autoload off."""
    from jevons.framework.run import train as run

    def call(overrides: Sequence[str], plugins: Sequence[tuple[str, Any]] = ()) -> Any:
        return run(list(overrides), plugins=plugins, autoload=False)

    return call


@pytest.fixture(scope="session")
def crasher() -> Callable[[int], tuple[str, Any]]:
    """``crasher(step)``: a ``("crasher", plugin)`` pair for ``train(..., plugins=[...])`` (with
    ``plugins=[crasher]`` in the overrides) whose callback raises ``RuntimeError("injected crash at step N")``
    once training reaches ``step``: an in-process crash, after which the same run can resume."""

    def make(step: int) -> tuple[str, Any]:
        import pytorch_lightning as pl

        from jevons.framework.plugin import hookimpl

        class CrashAt(pl.Callback):
            def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
                if trainer.global_step == step:
                    raise RuntimeError(f"injected crash at step {step}")

        class Plugin:
            @hookimpl
            def register_callbacks(self, register: Callable[[pl.Callback], None], config: Any) -> None:
                register(CrashAt())

        return "crasher", Plugin()

    return make


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/plugins_for_tests/*.py installed as real distributions with `jevons` entry points.

    Put it on PYTHONPATH of a child process; plugins still act only when listed in plugins:.
    """
    site = tmp_path_factory.mktemp("plugin-site")
    for module in (REPO / "tests" / "plugins_for_tests").glob("jt_*.py"):
        name = module.stem
        (site / module.name).write_text(module.read_text())
        info = site / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[jevons]\n{name} = {name}\n")
    return site


def _env(**extra: str) -> dict[str, str]:
    # Children never get the repository on sys.path, and use one thread each.
    env = dict(os.environ)
    env.update(PYTHONSAFEPATH="1", OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="session")
def command() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``command(args, cwd, **env)``: run an installed console script (``train``, ``jevons``) or python."""

    def call(args: Sequence[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
        args = list(args)
        script = Path(sys.executable).parent / args[0]
        if args[0] == "python":
            args[0] = sys.executable
        elif script.exists():
            args[0] = str(script)
        return subprocess.run(args, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=900, check=False)

    return call


TINY_DIFFUSION_20 = [
    "recipe=image_tiny",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.head_dim=8",
    "model.ffn_dim=32",
    "data.resolution=16",  # 64 tokens: 32 per Ulysses rank
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=20",
    "trainer.val_check_interval=100",
    "trainer.limit_val_batches=0",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "checkpoint.every_n_steps=20",
]


@pytest.fixture(scope="session")
def tiny_diffusion_20() -> list[str]:
    """A diffusion run of 20 logged steps small enough for 4 gloo processes on 2 cores."""
    return list(TINY_DIFFUSION_20)


@pytest.fixture(scope="session")
def gloo_runs(tmp_path_factory: pytest.TempPathFactory, command, plugin_site: Path) -> Callable[..., dict[int, float]]:
    """``gloo_runs(name, overrides, crashes=False)``: a real training run into ``gloo_runs.root / name``;
    its per-step losses. ``launcher.nproc=N`` runs are `train` commands (N gloo processes; their
    stdout is kept as ``stdout.txt`` in the run directory); a one-process reference runs in this process, on one thread as the commands' ranks do (it would
    otherwise spend most of its time importing). The same name with the same overrides runs once per
    session, so test modules share references (a DDP run both the sharding and Ulysses tests use).
    """
    root = tmp_path_factory.mktemp("gloo-runs")
    done: dict[tuple[str, tuple[str, ...]], dict[int, float]] = {}

    def call(name: str, overrides: Sequence[str], crashes: bool = False) -> dict[int, float]:
        key = (name, tuple(overrides))
        if key in done:
            return dict(done[key])
        resuming = any(o.startswith("checkpoint.resume=") for o in overrides)
        assert resuming or all(n != name for n, _ in done), f"gloo_runs: {name!r} again with other overrides"
        nproc = [int(o.split("=", 1)[1]) for o in overrides if o.startswith("launcher.nproc=")] or [1]
        if nproc[-1] == 1 and not crashes:
            _train_here([*overrides, f"run.dir={root / name}"])
        else:
            result = command(["train", *overrides, f"run.dir={root / name}"], cwd=root, PYTHONPATH=str(plugin_site))
            assert (result.returncode != 0) == crashes, result.stdout[-2000:] + result.stderr[-4000:]
            (root / name / "stdout.txt").write_text(result.stdout)  # what the ranks printed, for the tests
        with open(root / name / "metrics.csv") as handle:
            losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}
        done[key] = losses
        return dict(losses)

    call.root = root  # type: ignore[attr-defined]
    return call


def _train_here(overrides: list[str]) -> None:
    """``train`` in this process with tests/plugins_for_tests registered, on one thread."""
    import importlib.util

    import torch

    from jevons.framework.run import train

    plugins = []
    for path in sorted((REPO / "tests" / "plugins_for_tests").glob("jt_*.py")):
        spec = importlib.util.spec_from_file_location(f"_in_process_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        plugins.append((path.stem, module))
    threads = torch.get_num_threads()
    try:
        train([*overrides, "trainer.num_threads=1"], plugins=plugins, autoload=False)
    finally:
        torch.set_num_threads(threads)


def _write_video(path: Path, number: int) -> None:
    """A coloured block moving across a 64 x 48 frame, 20 frames at 8 fps."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in range(20):
            image = np.zeros((48, 64, 3), np.uint8)
            left = (3 * frame + 7 * number) % (64 - 8)
            image[16:32, left : left + 8] = (200, 40 * number, 100)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="session")
def wan_t2v(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Wan text-to-video pipeline folder, four captioned MP4s (PyAV) imported as 64 x 48 x 9-frame
    clips (clip3's two in validation), and their precomputed latents and text embeddings."""
    from jevons.framework.data.importing.engine import run_import
    from jevons.recipes.diffusion.importer import VideoImporter, VideoImportOptions
    from jevons.recipes.diffusion.precompute import LatentImporter, LatentImportOptions
    from jevons.recipes.diffusion.tiny_pipeline import captions, write_tiny_wan_pipeline

    root = tmp_path_factory.mktemp("t2v")
    pipeline = write_tiny_wan_pipeline(root / "pipeline")
    videos = root / "videos"
    videos.mkdir()
    texts = captions()
    for number in range(4):
        _write_video(videos / f"clip{number}.mp4", number)
        (videos / f"clip{number}.txt").write_text(texts[17 * number])
    clips, latents = root / "clips", root / "latents"
    options = VideoImportOptions(
        out=str(clips),
        buckets=["64x48"],
        fps=8,
        frames=9,
        max_clips=2,
        val_files=[str(videos / "clip3.mp4")],
        workers=0,
        progress=False,
    )
    run_import(VideoImporter(options), [str(videos)])
    precompute = LatentImportOptions(out=str(latents), pipeline=str(pipeline), max_length=32, progress=False)
    run_import(LatentImporter(precompute), [str(clips)])
    return {"pipeline": pipeline, "clips": clips, "latents": latents, "root": root}
