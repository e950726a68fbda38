"""``jevons data import KIND INPUT... out=DIR [key=value ...]`` and ``jevons data info DIR``.

The settings use ``train``'s grammar (``key=value``; values are YAML: ``workers=4``,
``val_files=[a.txt,b.txt]``) and its error style. ``family=NAME`` picks the family where
two import the same kind; ``launcher.nproc=N`` runs N ranks on this machine, and under
Slurm every task is a rank (``launcher=slurm launcher.nodes=N ...`` submits the job; inside
an allocation ``srun jevons data import ...`` does the same): each converts its share of
the inputs and rank 0 writes the index (:mod:`jevons.framework.data.importing.engine`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jevons.framework.errors import UsageError, did_you_mean, format_choices
from jevons.framework.text_table import format_table

if TYPE_CHECKING:
    from jevons.framework.data.importing import Importer, ImportOptions

USAGE = "jevons data import KIND INPUT... out=DIR [key=value ...]"
_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def import_command(arguments: Sequence[str]) -> int:
    from jevons.framework.data.importing.engine import run_import
    from jevons.framework.process_env import process_env

    if not arguments or arguments[0] in ("-h", "--help"):
        print(_help())
        return 0
    kind, rest = arguments[0], list(arguments[1:])
    inputs = [a for a in rest if not _SETTING.match(a)]
    settings = dict(_parse(a) for a in rest if _SETTING.match(a))
    family = settings.pop("family", None)
    launcher = settings.pop("launcher", "local")
    launch = {key.removeprefix("launcher."): settings.pop(key) for key in list(settings) if key.startswith("launcher.")}
    importer_class = find_importer(kind, family)
    options = _options(importer_class, kind, settings)
    out = Path(options.out).expanduser().resolve()
    # The ranks' own command: the same settings, paths absolute (a Slurm job may start elsewhere).
    settings_kept = [a for a in rest if _SETTING.match(a) and not a.startswith(("launcher=", "launcher.", "out="))]
    absolute = [str(Path(i).expanduser().resolve()) for i in inputs]
    kept = [kind, *absolute, f"out={out}", *settings_kept]
    env = process_env()
    if env.world_size == 1 and _launch_elsewhere(launcher, launch, kept, out):
        return 0
    result = run_import(importer_class(options), inputs, env.rank, env.world_size)
    if env.rank == 0:
        if result.already_complete:
            print(f"{result.out} already holds this import (same inputs and options): nothing to do.")
        _print_done(result.out, resumed=result.chunks_done_before)
    return 0


def _launch_elsewhere(launcher: Any, settings: dict[str, Any], arguments: list[str], out: Path) -> bool:
    """Start the import's ranks the way ``launcher`` says, if not in this process; return whether it did."""
    from jevons.framework.config.validate import to_dataclass
    from jevons.framework.data.importing.engine import check_out_folder

    if launcher == "slurm":
        from jevons.launch.slurm import SlurmLauncherConfig, submit_import

        check_out_folder(out)
        submit_import(to_dataclass(SlurmLauncherConfig, {"name": "slurm", **settings}, "launcher"), arguments, out)
        return True
    if launcher != "local":
        raise UsageError(f"launcher={launcher!r} is not a launcher: local (launcher.nproc=N) or slurm.")
    unknown = sorted(set(settings) - {"nproc"})
    if unknown:
        raise UsageError(f"launcher.{unknown[0]}: launcher=local takes only launcher.nproc.")
    nproc = settings.get("nproc", 1)
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise UsageError(f"launcher.nproc={nproc!r} is not a positive integer.")
    if nproc == 1:
        return False
    from jevons.launch.ranks import run_ranks

    run_ranks([sys.executable, "-m", "jevons.framework.cli.jevons", "data", "import", *arguments], nproc)
    return True  # rank 0 printed the summary


def find_importer(kind: str, family: str | None) -> type[Importer[Any]]:
    """The importer class for ``kind``: the named family's, else the default one for the kind."""
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load()
    importers = [importer for name, reg in sorted(manager.families.items()) for importer in reg.value.importers()]
    kinds = {importer.kind for importer in importers}
    if kind not in kinds:
        raise UsageError(
            f"Unknown import kind '{kind}'.{did_you_mean(kind, kinds)} Kinds: {format_choices(kinds)}. Usage: {USAGE}"
        )
    matching = [importer for importer in importers if importer.kind == kind]
    if family is not None:
        chosen = [importer for importer in matching if importer.family == family]
        if not chosen:
            families = [importer.family for importer in matching]
            raise UsageError(
                f"family={family!r} does not import '{kind}'.{did_you_mean(str(family), families)} "
                f"Families that do: {format_choices(families)}."
            )
        return chosen[0]
    defaults = [importer for importer in matching if importer.default_for_kind] or matching
    return defaults[0]


def _options(importer_class: type[Importer[Any]], kind: str, settings: dict[str, Any]) -> ImportOptions:
    import dataclasses

    from jevons.framework.config.validate import to_dataclass

    names = [f.name for f in dataclasses.fields(importer_class.options_class)]
    for key in settings:
        if key not in names:
            raise UsageError(
                f"Unknown setting '{key}' for `jevons data import {kind}`.{did_you_mean(key, names)} "
                f"Settings: {', '.join(names)}, family, launcher.nproc."
            )
    if "out" not in settings:
        raise UsageError(f"jevons data import {kind} needs out=DIR, the folder to write. Usage: {USAGE}")
    return to_dataclass(importer_class.options_class, settings, "")


def _parse(setting: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (numbers, true/false, null, [lists]); anything else stays a string."""
    import yaml

    key, _, text = setting.partition("=")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, (dict, type(None))) and text not in ("null", "~"):
        value = text  # "a: b" or an empty-looking value: the user meant the text
    return key, value


def _print_done(out: Path, resumed: int | None) -> None:
    report = json.loads((out / "import_report.json").read_text())
    skipped = ", ".join(f"{n} {reason}" for reason, n in report["skipped"].items()) or "none"
    print(
        f"imported {report['records']} inputs into {out}: {report['samples']['train']} train and "
        f"{report['samples']['val']} val samples; skipped: {skipped}"
        + (f" ({resumed} shard(s) were already done: resumed)" if resumed else "")
    )
    print(f"train on it: train recipe=<a {report['family']} recipe> data.source={out}")


def _help() -> str:
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load()
    rows = [
        (importer.kind, importer.family, "" if importer.default_for_kind else "family=", importer.description)
        for _, reg in sorted(manager.families.items())
        for importer in reg.value.importers()
    ]
    return (
        f"usage: {USAGE}\n\nKinds:\n{format_table(('kind', 'family', 'needs', 'inputs'), rows)}\n\n"
        "Every kind takes out=DIR, workers=N, val_fraction=F or val_files=[...], records_per_shard=N, strict=true,\n"
        "max_skipped_fraction=F, launcher.nproc=N or launcher=slurm launcher.nodes=N; docs/data.md has each kind."
    )


def info_command(folder: str) -> int:
    """Counts, length histograms, what the family reads (tokenizer, resolution...) and the import report."""
    import numpy as np

    from jevons.framework.data.shards import read_index

    path = Path(folder).expanduser()
    if not (path / "train.json").exists():
        raise UsageError(
            f"{path} holds no train.json: give a folder written by `jevons data import` (or a data source)."
        )
    meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").exists() else {}
    print(f"{path}")
    for key, value in meta.items():
        if key not in ("samples", "length_names"):
            print(f"  {key}: {value if not isinstance(value, (list, dict)) else json.dumps(value)[:200]}")
    for split in ("train", "val"):
        if not (path / f"{split}.json").exists():
            continue
        index = read_index(path / f"{split}.json")
        print(f"\n{split}: {index.num_samples} samples in {len(index.shards)} shard(s)")
        for column, name in enumerate(index.length_names):
            values = index.lengths[:, column] if len(index.lengths) else np.zeros(0, dtype=np.int64)
            if len(values):
                print(
                    f"  {name}: total {int(values.sum())}, min {values.min()}, median {int(np.median(values))}, "
                    f"max {values.max()}"
                )
                print(_histogram(values))
    report_path = path / "import_report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
        print(f"\nimport: {report['records']} inputs ({', '.join(report['inputs'])})")
        for reason, count in report["skipped"].items():
            first = report["first_skipped"].get(reason, [{}])[0]
            print(f"  skipped {count} {reason}: first {first.get('source', '?')} ({first.get('detail', '')})")
        if not report["skipped"]:
            print("  nothing skipped")
    return 0


def _histogram(values: Any, bins: int = 8, width: int = 40) -> str:
    import numpy as np

    counts, edges = np.histogram(values, bins=bins)
    top = max(1, int(counts.max()))
    return "\n".join(
        f"    {edges[i]:>9.0f} - {edges[i + 1]:<9.0f} {'#' * round(width * c / top):<{width}} {c}"
        for i, c in enumerate(counts)
    )
