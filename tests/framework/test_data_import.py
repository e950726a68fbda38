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
    options = _options(tmp_path / "out", tokenizer=str(tokenizer), max_tokens=30, max_skipped_fraction=0.2)
    with pytest.raises(DataError, match=r"more than max_skipped_fraction=0.2; no index was written"):
        run_import(TextImporter(options), [str(corpus)])
    assert not (tmp_path / "out" / "train.json").exists()
    assert json.loads((tmp_path / "out" / "import_report.json").read_text())["skipped"]["too long"] > 10


def _import_then_kill(corpus: str, options: TextImportOptions, kill_at_sample: int) -> None:
    """In a child process: import, and SIGKILL this process while it writes sample ``kill_at_sample``."""
    import webdataset

    written = 0
    original = webdataset.TarWriter.write

    def write(self: Any, sample: dict[str, Any]) -> int:
        nonlocal written
        written += 1
        if written == kill_at_sample:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-shard: its temporary tar is half written
        return original(self, sample)

    webdataset.TarWriter.write = write  # type: ignore[method-assign]  # crash injection, in the child only
    run_import(TextImporter(options), [corpus])


def test_sigkill_then_the_same_command_gives_the_uninterrupted_output(
    corpus: Path, tokenizer: Path, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    run_import(TextImporter(_options(whole, tokenizer=str(tokenizer))), [str(corpus)])
    resumed = tmp_path / "resumed"
    options = _options(resumed, tokenizer=str(tokenizer))
    child = multiprocessing.get_context("fork").Process(target=_import_then_kill, args=(str(corpus), options, 20))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert not (resumed / "train.json").exists(), "an interrupted import shows no index"
    assert list(resumed.glob(".*.tar.tmp-*")), "the kill left a half-written shard under a temporary name"
    done = sorted(p.name for p in (resumed / ".import" / "parts").glob("*.json"))
    assert done and len(done) < 9, done

    result = run_import(TextImporter(options), [str(corpus)])
    assert result.chunks_done_before == len(done)
    assert not list(resumed.glob(".*.tar.tmp-*"))
    assert _samples(resumed) == _samples(whole)
    for name in ("train.json", "val.json", "import_report.json", "meta.json"):
        expected = (whole / name).read_text().replace(str(whole), "").replace('"whole/', '"')
        assert (resumed / name).read_text().replace(str(resumed), "").replace('"resumed/', '"') == expected, name
    for shard in whole.glob("*.tar"):
        assert (resumed / shard.name).read_bytes() == shard.read_bytes(), f"{shard.name} differs"


def test_two_ranks_write_the_samples_one_rank_writes(
    corpus: Path, tokenizer: Path, tmp_path: Path, command: Callable[..., Any]
) -> None:
    one = tmp_path / "one"
    run_import(TextImporter(_options(one, tokenizer=str(tokenizer), workers=2)), [str(corpus)])
    settings = [
        f"tokenizer={tokenizer}",
        "vocab_size=300",
        "workers=0",
        "records_per_shard=8",
        "val_fraction=0.2",
        "max_skipped_fraction=0.5",
    ]
    args = ["jevons", "data", "import", "text", str(corpus), f"out={tmp_path / 'two'}", *settings, "min_tokens=5"]
    finished = command([*args, "launcher.nproc=2", "progress=false"], cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "train and" in finished.stdout
    assert _samples(tmp_path / "two") == _samples(one)
    assert sorted(p.name for p in (tmp_path / "two" / ".import").glob("rank-*")) == [
        "rank-0-of-2.done",
        "rank-1-of-2.done",
    ]


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
