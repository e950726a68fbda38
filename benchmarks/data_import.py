"""``jevons data import``: text tokens per second against Hugging Face ``datasets``, peak memory on a 10x corpus,
and images, clips and utterances per second.

Corpus (built once into ``WORKDIR/cache``, deterministic for a given interpreter): every ``.py`` file
of the standard library (``sysconfig.get_paths()["stdlib"]``, walked in sorted order, tests included,
``site-packages``/``dist-packages``/``__pycache__`` left out; files that are not UTF-8 or hold only
whitespace left out) and every ``pydoc_data.topics`` text, one ``{"text": ...}`` per jsonl line. The
stdlib holds about 32 MB, so it is repeated until the file reaches 50 MiB; every document gets a unique
first line (``# copy 2 of Lib/x.py``), so no two are the same (a duplicate would be skipped by Jevons and
kept by ``datasets``). The 10x corpus is ten copies of the 1x corpus, each document again given a unique
first line (``# copy 3 of 10 of the 1x corpus``).

Tokenizer (the same ``tokenizer.json`` for both arms): a byte-level BPE (``tokenizers``; vocabulary
16,384, special token ``<|endoftext|>``, ``ByteLevel(add_prefix_space=False)`` pre-tokenizer and decoder),
trained once, in a subprocess, on the corpus's first copy (each distinct stdlib document once: the 1x
corpus less its repeats), before anything is timed.

Arms, 2 workers each, interleaved (Jevons, datasets, Jevons, ...), median of 3, each rep a fresh
subprocess into fresh folders (nothing cached), timed from the subprocess's start to its exit, so
both pay interpreter start-up and imports alike:

* Jevons: ``jevons data import text CORPUS out=DIR tokenizer=TOKENIZER workers=2 progress=false
  val_fraction=0.05`` (the console script next to this interpreter).
* Hugging Face ``datasets``: ``load_dataset("json", data_files=CORPUS, cache_dir=FRESH,
  split="train")``, ``.map(tokenize, batched=True, batch_size=1000, num_proc=2,
  remove_columns=["text"])`` with ``tokenize`` returning ``{"input_ids": [e.ids for e in
  tokenizer.encode_batch(batch["text"])]}``, then ``save_to_disk(FRESH)``. Set for it: progress bars
  off, ``HF_DATASETS_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, ``HF_HOME`` a fresh folder; everything else is
  the peer's default (``tokenizers`` keeps its own thread pool in each map worker).

Both subprocesses get this process's environment without ``TOKENIZERS_PARALLELISM`` (each tool's
default). Checked, not timed: no document dropped by either (Jevons ``skipped_total == 0`` and
``documents`` = lines; ``datasets`` rows = lines) and the same tokens (Jevons ``tokens`` = ``datasets``'
``sum(len(input_ids))`` + one end-of-document token per document).

Figures: ``text_tokens_per_s_ratio_vs_hf_datasets`` (the same token count over each arm's median
time); ``text_peak_rss_growth_mb_10x_corpus``: the peak resident set (MiB) of any process of a
Jevons import of the 10x corpus minus that of the 1x corpus. Each is measured by a wrapper
subprocess that runs the CLI's console script (the CLI's main process) as its child and, once it
exits, reads ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the largest of every waited-for descendant
(the main process and its worker processes). The main process reports its own
``getrusage(RUSAGE_SELF)`` too. Reported only: images/s (1,000 generated 256 px PNGs with caption
sidecars, to 64 px), clips/s (100 generated 64x64 2 s 16 fps H.264 MP4s, at resolution=32 fps=8
frames=9) and utterances/s (1,000 generated 16 kHz mono FLACs of 1-3 s with transcripts), median of
3; a kind the CLI does not know yet ("Unknown import kind") is recorded as not run.

``--quick``: a 5 MiB corpus, 1 rep, 2x instead of 10x for memory, 100 images, 10 clips, 100
utterances; written to ``data_import.quick.json`` (not committed).

    pip install -e ".[bench]"   # the peer: Hugging Face datasets
    python benchmarks/data_import.py [--quick] [--workdir DIR] [--arms text,images,videos,audio]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import median, parse_args, write_result
from report import verdict

from jevons.framework.text_table import format_table

TARGETS = {"text_tokens_per_s_ratio_vs_hf_datasets": ">=1.0", "text_peak_rss_growth_mb_10x_corpus": "<=64"}
MIB = 2**20
WORKERS = 2
VAL_FRACTION = 0.05
VOCAB_SIZE = 16384
END_OF_DOCUMENT = "<|endoftext|>"
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
ARMS = ("text", "images", "videos", "audio")
UNKNOWN_KIND = "Unknown import kind"

TRAIN_TOKENIZER = """
import json, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
corpus, lines, out, vocab, special = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
def texts():
    with open(corpus, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number == lines:
                return
            yield json.loads(line)["text"]
tokenizer = Tokenizer(models.BPE())
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=vocab, special_tokens=[special], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
)
tokenizer.train_from_iterator(texts(), trainer)
tokenizer.save(out)
"""

HF_ARM = """
import sys
corpus, tokenizer_path, cache_dir, saved = sys.argv[1:5]
import datasets
from tokenizers import Tokenizer
datasets.disable_progress_bars()
tokenizer = Tokenizer.from_file(tokenizer_path)
def tokenize(batch):
    return {"input_ids": [encoding.ids for encoding in tokenizer.encode_batch(batch["text"])]}
dataset = datasets.load_dataset("json", data_files=corpus, cache_dir=cache_dir, split="train")
dataset = dataset.map(tokenize, batched=True, batch_size=1000, num_proc=2, remove_columns=["text"])
dataset.save_to_disk(saved)
"""

HF_COUNT = """
import json, sys
import datasets
import pyarrow.compute as pc
dataset = datasets.load_from_disk(sys.argv[1])
column = dataset.data.table.column("input_ids")
print(json.dumps({"rows": dataset.num_rows, "tokens": int(pc.sum(pc.list_value_length(column)).as_py() or 0)}))
"""

# The wrapper: runs the CLI's main process (INNER) as its child, then reads the largest resident set of
# every waited-for descendant; INNER runs the console script as `jevons` would and reports its own peak.
RSS_OUTER = """
import json, resource, subprocess, sys
report = sys.argv[1]
code = subprocess.call(sys.argv[2:])
with open(report) as handle:
    inner = json.load(handle)
inner.update(rc=code, peak_any_kb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
with open(report, "w") as handle:
    json.dump(inner, handle)
sys.exit(code)
"""
RSS_INNER = """
import json, resource, runpy, sys
report, entry, sys.argv = sys.argv[1], sys.argv[2], [sys.argv[2], *sys.argv[3:]]
code = 0
try:
    if entry.endswith(".py") or "/" in entry:
        runpy.run_path(entry, run_name="__main__")
    else:
        runpy.run_module(entry, run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
with open(report, "w") as handle:
    json.dump({
        "main_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "workers_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "inner_rc": code,
    }, handle)
sys.exit(code)
"""


def extra_args(parser: Any) -> None:
    parser.add_argument("--workdir", default="/tmp/jevons-bench-data-import", help="cache and scratch folder")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")


# ---------------------------------------------------------------------------------------------- subprocesses


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, without TOKENIZERS_PARALLELISM (each tool's own default), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    env.update(extra)
    return env


def run_timed(command: list[str], env: dict[str, str], what: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds from the subprocess's start to its exit; raises with its output if it failed."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0 and UNKNOWN_KIND not in done.stderr:
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done


def cli_entry() -> tuple[list[str], str]:
    """How to start the ``jevons`` CLI: its console script next to this interpreter (no pyenv shim in between),
    else the module; and what ``RSS_INNER`` runs."""
    script = Path(sys.executable).with_name("jevons")
    if script.is_file():
        return [str(script)], str(script)
    return [sys.executable, "-m", "jevons.framework.cli.jevons"], "jevons.framework.cli.jevons"


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- the corpus


def stdlib_documents() -> Iterator[tuple[str, str]]:
    """(label, text) of every UTF-8, non-blank stdlib ``.py`` file, then every pydoc topic, in a fixed order."""
    from pydoc_data.topics import topics

    root = Path(sysconfig.get_paths()["stdlib"])
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = Path(directory) / name
            try:
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                yield f"Lib/{path.relative_to(root).as_posix()}", text
    for name, text in sorted(topics.items()):
        if text.strip():
            yield f"pydoc_data.topics[{name!r}]", text


def build_corpus(cache: Path, target_bytes: int) -> dict[str, Any]:
    """The 1x corpus: the stdlib's documents, repeated (unique first lines) until ``target_bytes``."""
    name = f"corpus-{target_bytes // MIB}MiB"
    path, stats_path = cache / f"{name}.jsonl", cache / f"{name}.stats.json"
    if stats_path.exists() and path.exists():
        return read_json(stats_path)
    sources = list(stdlib_documents())
    temporary = path.with_suffix(".jsonl.tmp")
    written = documents = distinct = copies = 0
    with open(temporary, "w", encoding="ascii") as handle:
        while written < target_bytes:
            copies += 1
            for label, text in sources:
                line = json.dumps({"text": f"# copy {copies} of {label}\n{text}"}) + "\n"  # ASCII: one char, one byte
                handle.write(line)
                written, documents = written + len(line), documents + 1
                distinct += copies == 1
                if written >= target_bytes:
                    break
    os.replace(temporary, path)
    stats = {
        "path": str(path),
        "bytes": written,
        "documents": documents,
        "distinct_sources": distinct,
        "copies": copies,
        "stdlib": sysconfig.get_paths()["stdlib"],
        "python": sys.version.split()[0],
        "stdlib_sources_available": len(sources),
    }
    stats_path.write_text(json.dumps(stats, indent=2))
    return stats


def build_scaled(cache: Path, base: dict[str, Any], times: int) -> dict[str, Any]:
    """``times`` distinct copies of the 1x corpus, each document given one more unique first line."""
    source = Path(base["path"])
    path = source.with_name(f"{source.stem}-x{times}.jsonl")
    stats_path = path.with_suffix(".stats.json")
    if stats_path.exists() and path.exists():
        return read_json(stats_path)
    temporary = path.with_suffix(".jsonl.tmp")
    written = documents = 0
    with open(temporary, "w", encoding="ascii") as handle:
        for copy in range(1, times + 1):
            with open(source, encoding="ascii") as lines:
                for line in lines:
                    text = json.loads(line)["text"]
                    out = json.dumps({"text": f"# copy {copy} of {times} of the 1x corpus\n{text}"}) + "\n"
                    handle.write(out)
                    written, documents = written + len(out), documents + 1
    os.replace(temporary, path)
    stats = {"path": str(path), "bytes": written, "documents": documents, "copies_of_1x": times}
    stats_path.write_text(json.dumps(stats, indent=2))
    return stats


def build_tokenizer(cache: Path, corpus: dict[str, Any]) -> tuple[Path, float]:
    """The BPE both arms use, trained (in a subprocess, so this process never starts tokenizers' thread pool)
    on the corpus's first ``distinct_sources`` lines. Returns its path and the training seconds (0: cached)."""
    path = cache / f"tokenizer-{Path(corpus['path']).stem}.json"
    if path.exists():
        return path, 0.0
    temporary = path.with_suffix(".json.tmp")
    arguments = [corpus["path"], str(corpus["distinct_sources"]), str(temporary), str(VOCAB_SIZE), END_OF_DOCUMENT]
    seconds, _ = run_timed([sys.executable, "-c", TRAIN_TOKENIZER, *arguments], child_env(), "training the BPE")
    os.replace(temporary, path)
    return path, seconds


# ---------------------------------------------------------------------------------------------- text arms


def jevons_text(
    entry: list[str], corpus: Path, tokenizer: Path, out: Path, documents: int, rss: Path | None = None
) -> dict[str, Any]:
    """One Jevons import of ``corpus`` into ``out`` (fresh); with ``rss``, through the memory wrapper."""
    shutil.rmtree(out, ignore_errors=True)
    arguments = [
        "data",
        "import",
        "text",
        str(corpus),
        f"out={out}",
        f"tokenizer={tokenizer}",
        f"workers={WORKERS}",
        "progress=false",
        f"val_fraction={VAL_FRACTION}",
    ]
    if rss is None:
        command = [*entry, *arguments]
    else:
        inner = [sys.executable, "-c", RSS_INNER, str(rss), cli_entry()[1], *arguments]
        command = [sys.executable, "-c", RSS_OUTER, str(rss), *inner]
    seconds, done = run_timed(command, child_env(), f"jevons data import text {corpus.name}")
    if done.returncode != 0:
        raise RuntimeError(f"jevons data import text failed:\n{done.stderr[-3000:]}")
    meta, report = read_json(out / "meta.json"), read_json(out / "import_report.json")
    assert report["skipped_total"] == 0, f"Jevons skipped documents: {report['skipped']}"
    assert meta["documents"] == documents, f"Jevons kept {meta['documents']} of {documents} documents"
    assert report["records"] == documents, (report["records"], documents)
    result = {"seconds": seconds, "documents": meta["documents"], "tokens": meta["tokens"], "samples": meta["samples"]}
    if rss is not None:
        result["rss"] = read_json(rss)
    shutil.rmtree(out, ignore_errors=True)
    return result


def hf_text(corpus: Path, tokenizer: Path, scratch: Path, documents: int) -> dict[str, Any]:
    """One ``datasets`` load, map and save_to_disk of ``corpus``, every folder fresh; then its rows and tokens."""
    fresh(scratch)
    cache, saved, home = scratch / "cache", scratch / "saved", scratch / "hf_home"
    env = child_env(
        HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HOME=str(home)
    )
    command = [sys.executable, "-c", HF_ARM, str(corpus), str(tokenizer), str(cache), str(saved)]
    seconds, _ = run_timed(command, env, "the datasets arm")
    counted = subprocess.run(
        [sys.executable, "-c", HF_COUNT, str(saved)], capture_output=True, text=True, env=env, check=True
    )
    counts = json.loads(counted.stdout.strip().splitlines()[-1])
    assert counts["rows"] == documents, f"datasets kept {counts['rows']} of {documents} rows"
    shutil.rmtree(scratch, ignore_errors=True)
    return {"seconds": seconds, "rows": counts["rows"], "tokens": counts["tokens"]}


def text_arms(args: Any, work: Path, cache: Path, details: dict[str, Any]) -> dict[str, float]:
    quick = args.quick
    reps, times = (1, 2) if quick else (3, 10)
    corpus = build_corpus(cache, (5 if quick else 50) * MIB)
    print(f"corpus: {corpus['bytes'] / 1e6:.1f} MB, {corpus['documents']} documents ({corpus['copies']} copies)")
    tokenizer, train_seconds = build_tokenizer(cache, corpus)
    scaled = build_scaled(cache, corpus, times)
    print(f"{times}x corpus: {scaled['bytes'] / 1e6:.1f} MB, {scaled['documents']} documents", flush=True)
    entry, _ = cli_entry()
    path, documents = Path(corpus["path"]), corpus["documents"]

    runs: dict[str, list[dict[str, Any]]] = {"jevons": [], "hf_datasets": []}
    for rep in range(reps):  # interleaved: a slow spell of the shared machine falls on both arms alike
        runs["jevons"].append(jevons_text(entry, path, tokenizer, work / "runs" / "jevons", documents))
        print(f"rep {rep + 1}/{reps} jevons: {runs['jevons'][-1]['seconds']:.2f} s", flush=True)
        runs["hf_datasets"].append(hf_text(path, tokenizer, work / "runs" / "hf", documents))
        print(f"rep {rep + 1}/{reps} hf_datasets: {runs['hf_datasets'][-1]['seconds']:.2f} s", flush=True)
    tokens = {run["tokens"] for run in runs["jevons"]}
    hf_tokens = {run["tokens"] for run in runs["hf_datasets"]}
    assert len(tokens) == 1 and len(hf_tokens) == 1, f"token counts differ between reps: {tokens}, {hf_tokens}"
    jevons_tokens, hf_total = tokens.pop(), hf_tokens.pop()
    assert jevons_tokens == hf_total + documents, (
        f"Jevons {jevons_tokens} tokens != datasets {hf_total} + {documents} end-of-document tokens"
    )
    seconds = {arm: median([run["seconds"] for run in values]) for arm, values in runs.items()}
    rates = {arm: jevons_tokens / value for arm, value in seconds.items()}

    memory = {}
    for label, stats in (("1x", corpus), (f"{times}x", scaled)):
        report = work / "runs" / f"rss-{label}.json"
        run = jevons_text(
            entry, Path(stats["path"]), tokenizer, work / "runs" / f"rss-{label}", stats["documents"], report
        )
        stats["tokens"] = run["tokens"]
        memory[label] = run
        rss = run["rss"]
        print(
            f"memory {label}: peak {rss['peak_any_kb'] / 1024:.0f} MiB (main {rss['main_kb'] / 1024:.0f}, "
            f"workers {rss['workers_kb'] / 1024:.0f}), {run['seconds']:.1f} s",
            flush=True,
        )
    corpus["tokens"] = jevons_tokens
    one, many = memory["1x"]["rss"], memory[f"{times}x"]["rss"]
    figures = {
        "text_tokens_per_s_ratio_vs_hf_datasets": rates["jevons"] / rates["hf_datasets"],
        "text_peak_rss_growth_mb_10x_corpus": (many["peak_any_kb"] - one["peak_any_kb"]) / 1024,
        "text_tokens_per_s_jevons": rates["jevons"],
        "text_tokens_per_s_hf_datasets": rates["hf_datasets"],
        "text_median_s_jevons": seconds["jevons"],
        "text_median_s_hf_datasets": seconds["hf_datasets"],
        "text_main_rss_growth_mb_10x_corpus": (many["main_kb"] - one["main_kb"]) / 1024,
        "text_peak_rss_mb_1x_corpus": one["peak_any_kb"] / 1024,
        f"text_peak_rss_mb_{times}x_corpus": many["peak_any_kb"] / 1024,
        "text_main_rss_mb_1x_corpus": one["main_kb"] / 1024,
        f"text_main_rss_mb_{times}x_corpus": many["main_kb"] / 1024,
    }
    import datasets
    import pyarrow
    import tokenizers

    details["text"] = {
        "corpus_1x": corpus,
        f"corpus_{times}x": scaled,
        "memory_corpus_multiple": times,
        "tokenizer": {
            "path": str(tokenizer),
            "vocab_size": VOCAB_SIZE,
            "trained_on": f"the 1x corpus's first {corpus['distinct_sources']} lines (each stdlib document once)",
            "train_seconds": train_seconds,
        },
        "reps": reps,
        "order": "interleaved: jevons, hf_datasets, jevons, hf_datasets, ...",
        "timings_s": {arm: [run["seconds"] for run in values] for arm, values in runs.items()},
        "runs": runs,
        "memory_runs": memory,
        "tokens_jevons": jevons_tokens,
        "tokens_hf_datasets": hf_total,
        "end_of_document_tokens": documents,
        "peer_versions": {
            "datasets": datasets.__version__,
            "tokenizers": tokenizers.__version__,
            "pyarrow": pyarrow.__version__,
        },
        "jevons_command": [
            *entry,
            "data import text CORPUS out=FRESH tokenizer=TOKENIZER workers=2 progress=false val_fraction=0.05",
        ],
        "hf_arm": HF_ARM.strip(),
        "hf_environment": "HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 HF_HOME=FRESH; "
        "TOKENIZERS_PARALLELISM unset (both arms); datasets forks its 2 map workers, tokenizers' "
        "encode_batch uses its own thread pool in each",
        "memory_method": "ru_maxrss (KB on Linux) of getrusage(RUSAGE_CHILDREN) in a wrapper process whose only "
        "child is the CLI's main process (the console script run by runpy): the largest resident set of the "
        "main process and every worker it waited for; the main process's own getrusage(RUSAGE_SELF) as main_kb, "
        "its RUSAGE_CHILDREN (the workers) as workers_kb. MB in the figure names are MiB.",
    }
    rows = [
        [
            arm,
            ", ".join(f"{run['seconds']:.2f}" for run in runs[arm]),
            f"{seconds[arm]:.2f}",
            f"{jevons_tokens:,}",
            f"{rates[arm]:,.0f}",
        ]
        for arm in runs
    ]
    details.setdefault("tables", {})[f"Text: {corpus['bytes'] / 1e6:.0f} MB, {documents:,} documents"] = {
        "columns": ["arm", "reps (s)", "median s", "tokens", "tokens/s"],
        "rows": rows,
    }
    memory_rows = [
        [
            label,
            f"{stats['bytes'] / 1e6:.0f}",
            f"{stats['documents']:,}",
            f"{memory[label]['rss']['peak_any_kb'] / 1024:.0f}",
            f"{memory[label]['rss']['main_kb'] / 1024:.0f}",
            f"{memory[label]['rss']['workers_kb'] / 1024:.0f}",
            f"{memory[label]['seconds']:.1f}",
        ]
        for label, stats in (("1x", corpus), (f"{times}x", scaled))
    ]
    details["tables"]["Jevons text import memory"] = {
        "columns": ["corpus", "MB", "documents", "peak RSS MiB", "main MiB", "workers MiB", "s"],
        "rows": memory_rows,
    }
    return figures


# ---------------------------------------------------------------------------------------------- media arms


def make_images(folder: Path, count: int) -> None:
    """Random smooth colour images: a 4x4 random colour grid upsampled bicubically to 256 px; caption sidecars."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue", "orange", "purple", "teal", "grey", "yellow"]
    for index in range(count):
        grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(grid).resize((256, 256), Image.Resampling.BICUBIC)
        image.save(folder / f"image-{index:05d}.png")
        words = rng.choice(colours, 3, replace=False)
        (folder / f"image-{index:05d}.txt").write_text(f"a smooth blend of {', '.join(words)}, picture {index}\n")


def make_videos(folder: Path, count: int) -> None:
    """64x64, 2 s at 16 fps, H.264 yuv420p: moving colour gradients; caption sidecars."""
    from fractions import Fraction

    import av
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64].astype(np.float32) / 64
    for index in range(count):
        base, speed = rng.uniform(0, 255, 3), rng.uniform(0.5, 3.0, 2)
        path = folder / f"clip-{index:04d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(16))
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            for frame_number in range(32):
                t = frame_number / 16
                wave = 0.5 + 0.5 * np.sin(2 * np.pi * (x * speed[0] + y * speed[1] - t))
                pixels = np.clip(base[None, None, :] * wave[..., None] + 40 * y[..., None], 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        (folder / f"clip-{index:04d}.txt").write_text(f"colour waves drifting across the frame, clip {index}\n")


def make_audio(folder: Path, count: int) -> None:
    """16 kHz mono FLACs of 1-3 s: a few enveloped tones and a little noise; transcript sidecars."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    for index in range(count):
        samples = int(16000 * rng.uniform(1.0, 3.0))
        t = np.arange(samples) / 16000
        signal = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 2000, 3)) / 3
        signal = signal * np.hanning(samples) * 0.5 + 0.01 * rng.standard_normal(samples)
        soundfile.write(folder / f"utt-{index:05d}.flac", signal.astype(np.float32), 16000, format="FLAC")
        (folder / f"utt-{index:05d}.txt").write_text(" ".join(rng.choice(words, 5)) + f" {index}\n")


MEDIA: dict[str, dict[str, Any]] = {
    "images": {
        "make": make_images,
        "count": (100, 1000),
        "settings": ["resolution=64"],
        "figure": "images_per_s",
        "unit": "images",
    },
    "videos": {
        "make": make_videos,
        "count": (10, 100),
        "settings": ["resolution=32", "fps=8", "frames=9"],
        "figure": "clips_per_s",
        "unit": "clips",
    },
    "audio": {
        "make": make_audio,
        "count": (100, 1000),
        "settings": [],
        "figure": "utterances_per_s",
        "unit": "utterances",
    },
}


def media_arm(kind: str, args: Any, work: Path, cache: Path, details: dict[str, Any]) -> dict[str, float]:
    spec = MEDIA[kind]
    count, reps = spec["count"][0 if args.quick else 1], 1 if args.quick else 3
    entry, _ = cli_entry()
    # The kind may not exist yet: ask the CLI before generating anything (it names an unknown kind first).
    probe = subprocess.run(
        [*entry, "data", "import", kind, f"out={work / 'runs' / 'probe'}"],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    if UNKNOWN_KIND in probe.stderr:
        details.setdefault("not_run", {})[kind] = probe.stderr.strip().splitlines()[-1]
        print(f"{kind}: not run ({UNKNOWN_KIND.lower()})", flush=True)
        return {}
    folder = cache / "media" / f"{kind}-{count}"
    if not (folder / ".complete").exists():
        started = time.perf_counter()
        spec["make"](fresh(folder), count)
        (folder / ".complete").write_text("")
        print(f"{kind}: generated {count} files in {time.perf_counter() - started:.1f} s", flush=True)
    out = work / "runs" / kind
    command = [
        *entry,
        "data",
        "import",
        kind,
        str(folder),
        f"out={out}",
        *spec["settings"],
        f"workers={WORKERS}",
        "progress=false",
        f"val_fraction={VAL_FRACTION}",
    ]
    timings, samples = [], 0
    for rep in range(reps):
        shutil.rmtree(out, ignore_errors=True)
        seconds, done = run_timed(command, child_env(), f"jevons data import {kind}")
        if done.returncode != 0:  # an unknown kind here: the probe said otherwise; nothing else is tolerated
            raise RuntimeError(f"jevons data import {kind} failed:\n{done.stderr[-3000:]}")
        report = read_json(out / "import_report.json")
        samples = report["samples"]["train"] + report["samples"]["val"]
        assert report["records"] == count, f"{kind}: {report['records']} records of {count} files"
        assert report.get("skipped_total", 0) == 0, f"{kind}: skipped {report.get('skipped')}"
        assert samples == count if kind != "videos" else samples >= count, f"{kind}: {samples} samples of {count}"
        timings.append(seconds)
        print(f"{kind} rep {rep + 1}/{reps}: {seconds:.2f} s, {samples} {spec['unit']}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    seconds = median(timings)
    details.setdefault("media", {})[kind] = {
        "files": count,
        "samples": samples,
        "timings_s": timings,
        "command": " ".join([*entry, "data import", kind, "FOLDER out=FRESH", *command[len(entry) + 5 :]]),
    }
    figures = {spec["figure"]: samples / seconds}
    if kind == "videos":
        figures["videos_per_s"] = count / seconds
    details.setdefault("tables", {}).setdefault(
        "Media imports", {"columns": ["kind", "files", "samples", "reps (s)", "median s", "per s"], "rows": []}
    )["rows"].append(
        [kind, count, samples, ", ".join(f"{t:.2f}" for t in timings), f"{seconds:.2f}", f"{samples / seconds:.1f}"]
    )
    return figures


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra_args)
    arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {','.join(ARMS)}")
    work = Path(args.workdir).expanduser().resolve()
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = {"workdir": str(work), "workers": WORKERS, "val_fraction": VAL_FRACTION, "arms": arms}
    figures: dict[str, float] = {}
    for kind in (k for k in ("images", "videos", "audio") if k in arms):  # quick ones first: a failure shows early
        figures.update(media_arm(kind, args, work, cache, details))
    if "text" in arms:
        figures = {**text_arms(args, work, cache, details), **figures}
    shutil.rmtree(work / "runs", ignore_errors=True)
    targets = {name: target for name, target in TARGETS.items() if name in figures}
    details["verdicts"] = {name: verdict(figures[name], target).strip("*") for name, target in targets.items()}
    details["notes"] = (
        "Each rep is a fresh subprocess into fresh folders, timed from its start to its exit; text arms interleaved, "
        "median of the reps. See the module docstring (benchmarks/data_import.py) for the corpus, tokenizer, "
        "the peer's settings and how memory is measured."
    )
    for title, table in details.get("tables", {}).items():
        print(f"\n{title}\n{format_table(table['columns'], table['rows'])}")
    print()
    print(
        format_table(
            ["figure", "value", "target", ""],
            [
                [name, f"{value:.4g}", targets.get(name, "reported"), details["verdicts"].get(name, "")]
                for name, value in figures.items()
            ],
        )
    )
    for kind, why in details.get("not_run", {}).items():
        print(f"not run: {kind} ({why})")
    write_result("data_import", args.quick, figures, targets, details)


if __name__ == "__main__":
    main()
