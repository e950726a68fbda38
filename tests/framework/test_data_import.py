"""``jevons data import``'s engine, through the text kind: skips counted by reason, resumption after SIGKILL,
a 2-rank import equal to a 1-rank one, a stale rerun refused, the index written last."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jevons.framework.data.importing.engine import run_import
from jevons.framework.data.shards import decode_npy, read_index
from jevons.framework.errors import DataError, UsageError
from jevons.recipes.llm.importer import TextImporter, TextImportOptions

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _document(number: int) -> str:
    rng = np.random.default_rng(number)
    return f"Document {number}. " + " ".join(rng.choice(WORDS, size=int(rng.integers(20, 60))))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 good documents in .txt, .md, gzip jsonl and parquet, plus one bad input of each text reason."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("corpus")
    for number in range(10):
        (root / f"note{number:02d}.txt").write_text(_document(number))
    (root / "readme.md").write_text(_document(10))
    with gzip.open(root / "docs.jsonl.gz", "wt") as handle:
        for number in range(11, 41):
            handle.write(json.dumps({"text": _document(number)}) + "\n")
        handle.write("{not json\n")  # undecodable
        handle.write(json.dumps({"body": "no text field"}) + "\n")  # missing field
        handle.write(json.dumps({"text": "   "}) + "\n")  # empty text
        handle.write(json.dumps({"text": _document(3)}) + "\n")  # the same text as note03.txt
    pq.write_table(pa.table({"text": [_document(n) for n in range(41, 60)] + ["tiny"]}), root / "more.parquet")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))  # undecodable: not UTF-8
    long_line = json.dumps({"text": " ".join(_document(n) for n in range(100, 400))}).encode() + b"\n"
    cut = gzip.compress(long_line)
    (root / "cut.jsonl.gz").write_bytes(cut[: len(cut) // 2])  # truncated inside its only line
    return root


@pytest.fixture(scope="module")
def tokenizer(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One BPE for every import here, so they compare token for token."""
    out = tmp_path_factory.mktemp("tokenizer") / "import"
    run_import(TextImporter(_options(out, tokenizer=None)), [str(corpus)])
    return out / "tokenizer.json"


def _options(out: Path, **settings: Any) -> TextImportOptions:
    defaults: dict[str, Any] = {
        "out": str(out),
        "vocab_size": 300,
        "workers": 0,
        "records_per_shard": 8,
        "val_fraction": 0.2,
        "min_tokens": 5,
        "progress": False,
        "max_skipped_fraction": 0.5,
    }
    return TextImportOptions(**{**defaults, **settings})


def _samples(out: Path) -> dict[str, dict[str, list[int]]]:
    """Every sample of both splits: key to token ids, read back through the index."""
    from jevons.framework.data.reader import ShardDataset

    result = {}
    for split in ("train", "val"):
        dataset = ShardDataset(read_index(out / f"{split}.json"), lambda s: s, "strict")
        result[split] = {
            sample["__key__"]: decode_npy(sample["tokens.npy"]).tolist()
            for sample in map(dataset.raw, range(len(dataset)))
        }
    return result


def test_every_bad_input_is_counted_by_reason(corpus: Path, tokenizer: Path, tmp_path: Path) -> None:
    result = run_import(TextImporter(_options(tmp_path / "out", tokenizer=str(tokenizer))), [str(corpus)])
    report = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert report["skipped"] == {
        "duplicate": 1,
        "empty text": 1,
        "missing field": 1,
        "too short": 1,  # "tiny": at most 4 tokens, min_tokens=5
        "truncated": 1,
        "undecodable": 2,  # the bad JSON line and the latin-1 file
    }
    assert result.records == 67 and report["records"] == 67
    assert report["samples"]["train"] + report["samples"]["val"] == 60
    # Sorted walk order: docs.jsonl.gz (whose line 34 repeats note03.txt) comes first, so the .txt is the duplicate.
    assert report["first_skipped"]["duplicate"][0]["source"] == str(corpus / "note03.txt")
    assert report["first_skipped"]["undecodable"][0]["source"].endswith("docs.jsonl.gz:31")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["token_dtype"] == "uint16" and meta["vocab_size"] == 300 and meta["token_stream"] is True
    samples = _samples(tmp_path / "out")
    eod = meta["eod_id"]
    assert all(tokens[-1] == eod and eod not in tokens[:-1] for split in samples.values() for tokens in split.values())
    assert sum(len(t) for split in samples.values() for t in split.values()) == meta["tokens"]


def test_strict_stops_at_the_first_bad_input_naming_it(corpus: Path, tokenizer: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz:\d+: truncated"):
        run_import(TextImporter(_options(tmp_path / "out", tokenizer=str(tokenizer), strict=True)), [str(corpus)])
    assert not (tmp_path / "out" / "train.json").exists()


def test_too_many_skips_abort_without_an_index(corpus: Path, tokenizer: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    strict_length = _options(out, tokenizer=str(tokenizer), max_tokens=100, max_skipped_fraction=0.2)
    with pytest.raises(DataError, match=r"\d+ of the first 16 inputs this rank read were bad.* stopped early"):
        run_import(TextImporter(strict_length), [str(corpus)])  # two shards in, about half is too long
    assert not (out / "train.json").exists()
    lenient = _options(out, tokenizer=str(tokenizer), max_tokens=100, max_skipped_fraction=0.9)
    assert run_import(TextImporter(lenient), [str(corpus)]).chunks_done_before == 2  # the threshold shapes nothing
    assert json.loads((out / "import_report.json").read_text())["skipped"]["too long"] > 15

    # Under two shards read there is no early verdict: the whole count decides, before any index is written.
    one_shard = _options(tmp_path / "one", tokenizer=str(tokenizer), max_tokens=100, max_skipped_fraction=0.2)
    one_shard.records_per_shard = 64
    with pytest.raises(
        DataError, match=r"inputs were bad \(.*too long.*\), more than max_skipped_fraction=0.2; no index"
    ):
        run_import(TextImporter(one_shard), [str(corpus)])
    assert not (tmp_path / "one" / "train.json").exists()
    assert json.loads((tmp_path / "one" / "import_report.json").read_text())["skipped"]["too long"] > 15


def _assert_same_import(got: Path, expected: Path) -> None:
    """The same samples in the same shards, the same index, report and meta (folder names aside)."""
    assert _samples(got) == _samples(expected)
    for name in ("train.json", "val.json", "import_report.json", "meta.json"):
        want = (expected / name).read_text().replace(str(expected), "").replace(f'"{expected.name}/', '"')
        assert (got / name).read_text().replace(str(got), "").replace(f'"{got.name}/', '"') == want, name
    assert sorted(p.name for p in got.glob("*.tar")) == sorted(p.name for p in expected.glob("*.tar"))
    for shard in expected.glob("*.tar"):
        assert (got / shard.name).read_bytes() == shard.read_bytes(), f"{shard.name} differs"


def _import_then_kill(corpus: str, options: TextImportOptions, kill_at_sample: int | None) -> None:
    """In a child process: import, and SIGKILL this process while it writes sample ``kill_at_sample``,
    or (None) between writing ``val.json`` and ``train.json``."""
    import webdataset

    from jevons.framework.data import shards

    written = 0
    write_sample, write_index = webdataset.TarWriter.write, shards.write_index

    def write(self: Any, sample: dict[str, Any]) -> int:
        nonlocal written
        written += 1
        if written == kill_at_sample:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-shard: its temporary tar is half written
        return write_sample(self, sample)

    def index(directory: Path, split: str, *args: Any, **kwargs: Any) -> Path:
        if split == "train" and kill_at_sample is None:
            os.kill(os.getpid(), signal.SIGKILL)  # every shard, the report, meta.json and val.json are written
        return write_index(directory, split, *args, **kwargs)

    webdataset.TarWriter.write = write  # type: ignore[method-assign]  # crash injection, in the child only
    shards.write_index = index  # type: ignore[assignment]
    run_import(TextImporter(options), [corpus])


def _killed(corpus: Path, options: TextImportOptions, kill_at_sample: int | None) -> None:
    child = multiprocessing.get_context("fork").Process(
        target=_import_then_kill, args=(str(corpus), options, kill_at_sample)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert not (Path(options.out) / "train.json").exists(), "an interrupted import shows no index"


def test_sigkill_then_the_same_command_gives_the_uninterrupted_output(
    corpus: Path, tokenizer: Path, tmp_path: Path, command: Callable[..., Any]
) -> None:
    whole = tmp_path / "whole"
    run_import(TextImporter(_options(whole, tokenizer=str(tokenizer))), [str(corpus)])

    resumed = tmp_path / "resumed"
    options = _options(resumed, tokenizer=str(tokenizer))
    _killed(corpus, options, kill_at_sample=20)
    assert list(resumed.glob(".*.tar.tmp-*")), "the kill left a half-written shard under a temporary name"
    done = sorted(p.name for p in (resumed / ".import" / "parts").glob("*.json"))
    assert done and len(done) < 9, done
    result = run_import(TextImporter(options), [str(corpus)])
    assert result.chunks_done_before == len(done)
    assert not list(resumed.glob(".*.tar.tmp-*"))
    _assert_same_import(resumed, whole)

    late = tmp_path / "late"  # killed while writing the index: everything else is there
    _killed(corpus, _options(late, tokenizer=str(tokenizer)), kill_at_sample=None)
    assert (late / "val.json").exists() and (late / "meta.json").exists()
    # The same command, now as two ranks: a resumed import may change its rank count.
    finished = command([*_cli_args(corpus, tokenizer, late), "launcher.nproc=2"], cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    _assert_same_import(late, whole)


def _cli_args(corpus: Path, tokenizer: Path, out: Path) -> list[str]:
    """``jevons data import text`` with the settings of :func:`_options`."""
    settings = [f"tokenizer={tokenizer}", "vocab_size=300", "records_per_shard=8", "val_fraction=0.2"]
    settings += ["max_skipped_fraction=0.5", "min_tokens=5", "workers=0", "progress=false"]
    return ["jevons", "data", "import", "text", str(corpus), f"out={out}", *settings]


def test_two_ranks_write_what_one_rank_writes(
    corpus: Path, tokenizer: Path, tmp_path: Path, command: Callable[..., Any]
) -> None:
    one = tmp_path / "one"
    run_import(TextImporter(_options(one, tokenizer=str(tokenizer), workers=2)), [str(corpus)])
    finished = command([*_cli_args(corpus, tokenizer, tmp_path / "two"), "launcher.nproc=2"], cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.count("train and") == 1  # rank 0's summary, once
    _assert_same_import(tmp_path / "two", one)
    marks = sorted(p.name for p in (tmp_path / "two" / ".import" / "ranks").glob("*/of-2/*"))
    assert marks == ["0.done", "0.started", "1.done", "1.started"]


def test_a_failing_rank_stops_the_import(tokenizer: Path, tmp_path: Path, command: Callable[..., Any]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for number in range(20):  # 8 per shard: a10.txt is in shard 1, which rank 1 of 2 converts
        (docs / f"a{number:02d}.txt").write_text("tiny" if number == 10 else _document(number))
    finished = command([*_cli_args(docs, tokenizer, tmp_path / "out"), "strict=true", "launcher.nproc=2"], cwd=tmp_path)
    assert finished.returncode != 0
    assert re.search(r"a10\.txt: too short", finished.stderr), finished.stderr[-2000:]
    assert not (tmp_path / "out" / "train.json").exists()


def test_strict_stops_at_a_bad_input_found_in_a_worker(corpus: Path, tokenizer: Path, tmp_path: Path) -> None:
    only_good = tmp_path / "docs"
    only_good.mkdir()
    (only_good / "a.txt").write_text(_document(1))
    (only_good / "b.txt").write_text("tiny")  # too short is found when tokenising, in the worker
    options = _options(tmp_path / "out", tokenizer=str(tokenizer), strict=True, workers=1)
    with pytest.raises(DataError, match=r"b\.txt: too short \(\d tokens, min_tokens=5\)"):
        run_import(TextImporter(options), [str(only_good)])


def test_damaged_files_are_skipped_and_counted(tokenizer: Path, tmp_path: Path) -> None:
    import zstandard

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text(_document(1))
    packed = zstandard.ZstdCompressor().compress(_document(2).encode() * 20)
    (docs / "whole.txt.zst").write_bytes(packed)
    (docs / "cut.txt.zst").write_bytes(packed[: len(packed) // 2])  # truncated
    (docs / "garbage.txt.zst").write_bytes(b"not zstd at all")  # undecodable
    (docs / "emoji.jsonl").write_text('{"text": "half an emoji \\ud83d here"}\n')  # undecodable: a lone surrogate
    (docs / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")  # undecodable: the link points nowhere
    options = _options(tmp_path / "out", tokenizer=str(tokenizer), max_skipped_fraction=0.9)
    run_import(TextImporter(options), [str(docs)])
    report = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert report["skipped"] == {"truncated": 1, "undecodable": 3}
    assert report["samples"]["train"] + report["samples"]["val"] == 2


def test_a_rerun_with_other_options_or_inputs_is_refused(corpus: Path, tokenizer: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_import(TextImporter(_options(out, tokenizer=str(tokenizer))), [str(corpus)])
    again = run_import(TextImporter(_options(out, tokenizer=str(tokenizer), workers=1)), [str(corpus)])
    assert again.already_complete  # workers does not change the output
    with pytest.raises(UsageError, match=r"val_fraction: 0.2 then, 0.3 now"):
        run_import(TextImporter(_options(out, tokenizer=str(tokenizer), val_fraction=0.3)), [str(corpus)])
    (corpus / "note00.txt").write_text(_document(0) + " edited")
    try:
        with pytest.raises(UsageError, match=r"inputs changed"):
            run_import(TextImporter(_options(out, tokenizer=str(tokenizer))), [str(corpus)])
    finally:
        (corpus / "note00.txt").write_text(_document(0))
    (corpus / "note09.txt").rename(corpus / "note99.txt")  # same files, sizes and times: another order
    try:
        with pytest.raises(UsageError, match=r"inputs changed"):
            run_import(TextImporter(_options(out, tokenizer=str(tokenizer))), [str(corpus)])
    finally:
        (corpus / "note99.txt").rename(corpus / "note09.txt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("a user's file")
    with pytest.raises(UsageError, match=r"exists and is not a Jevons import"):
        run_import(TextImporter(_options(tmp_path / "other", tokenizer=str(tokenizer))), [str(corpus)])


def test_val_files_hold_out_named_inputs(corpus: Path, tokenizer: Path, tmp_path: Path) -> None:
    held_out = corpus / "more.parquet"
    run_import(
        TextImporter(_options(tmp_path / "out", tokenizer=str(tokenizer), val_files=[str(held_out)])), [str(corpus)]
    )
    report = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert report["samples"]["val"] == 19  # more.parquet's rows but "tiny"


def test_command_line_errors_name_the_setting(tmp_path: Path, corpus: Path) -> None:
    from jevons.framework.cli.data_import import import_command

    with pytest.raises(UsageError, match=r"Unknown setting 'vocab' .* Did you mean 'vocab_size'"):
        import_command(["text", str(corpus), f"out={tmp_path}", "vocab=300"])
    with pytest.raises(UsageError, match=r"needs out=DIR"):
        import_command(["text", str(corpus)])
    with pytest.raises(UsageError, match=r"Unknown import kind 'imagez'.*Did you mean 'images'"):
        import_command(["imagez", str(corpus), f"out={tmp_path}"])
    with pytest.raises(UsageError, match=r"val_fraction=1.5"):
        import_command(["text", str(corpus), f"out={tmp_path / 'x'}", "val_fraction=1.5"])
    with pytest.raises(UsageError, match=r"is inside the input folder"):
        import_command(["text", str(corpus), f"out={corpus / 'imported'}"])
    with pytest.raises(UsageError, match=r"Input\(s\) not found: .*nowhere"):
        import_command(["text", str(tmp_path / "nowhere"), f"out={tmp_path / 'y'}"])


def test_info_describes_the_import_and_help_lists_every_kind(
    corpus: Path, tokenizer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jevons.framework.cli.data_import import import_command, info_command

    run_import(TextImporter(_options(tmp_path / "out", tokenizer=str(tokenizer))), [str(corpus)])
    info_command(str(tmp_path / "out"))
    text = capsys.readouterr().out
    assert "vocab_size: 300" in text and "token_stream: True" in text
    assert re.search(r"train: \d+ samples in \d+ shard\(s\)", text) and "tokens: total" in text
    assert f"skipped 1 truncated: first {corpus / 'cut.jsonl.gz'}:1" in text
    import_command(["--help"])
    help_text = capsys.readouterr().out
    for kind, family in (("text", "llm"), ("images", "diffusion"), ("videos", "diffusion"), ("audio", "speech")):
        assert re.search(rf"{kind}\s+{family}\s", help_text), (kind, family)
    assert re.search(r"images\s+mixed_modal\s+family=", help_text)
