"""``jevons``: what is installed (recipes, plugins, hooks, kernels), built-in data, and finished runs (sample,
export, compare, plot); ``jevons new-plugin`` starts a plugin package."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jevons.framework.cli import kernels as kernels_cli
from jevons.framework.cli.common import guarded
from jevons.framework.errors import UsageError, did_you_mean, format_choices
from jevons.framework.text_table import format_table

if TYPE_CHECKING:
    from jevons.framework.inference import LoadedRun
    from jevons.framework.plugin_manager import PluginManager


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jevons", description="Inspect a Jevons installation, its data and finished runs."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("recipes", help="list recipes and their families")
    commands.add_parser("plugins", help="list plugins and the plugin x family matrix")
    commands.add_parser("hooks", help="list hooks and which plugins implement them")
    data = commands.add_parser(
        "data",
        help="build a built-in dataset (or list them); import your files; describe a data folder",
        description="jevons data [NAME]: build a built-in dataset (none: list them). "
        "jevons data import KIND INPUT... out=DIR [key=value ...]: your files to shards (jevons data import --help). "
        "jevons data info DIR: counts, lengths and the import report of a data folder.",
    )
    data.add_argument("name", nargs="?", help="a data source, or 'import' / 'info'; omit to list the sources")
    data.add_argument("--root", help="cache folder (default $JEVONS_DATA or ~/.cache/jevons)")
    data.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    sample = commands.add_parser(
        "sample",
        help="generate from a trained run: run_dir=PATH [checkpoint=PATH] [out=DIR] [ema=true] key=value ...",
        description="Generate from a run's newest (or a given) checkpoint with its own generator; ema=true: from "
        "the moving average the ema plugin kept. "
        "Diffusion: steps=, guidance=, rows=, seed=. LLM: prompt=, max_new_tokens=, temperature=, top_k=, seed=.",
    )
    sample.add_argument("settings", nargs="*", metavar="key=value")
    export = commands.add_parser(
        "export",
        help="write a trained run's model for another library: "
        "run_dir=PATH [checkpoint=PATH] [out=DIR] [adapter=true] [ema=true]",
        description="llm: a Hugging Face Llama folder (transformers loads it); diffusion: a diffusers transformer "
        "folder. A LoRA run's adapters are merged into the weights; adapter=true writes the adapters alone (llm: a "
        "peft adapter folder; diffusion: a diffusers LoRA file); ema=true exports the ema plugin's moving average.",
    )
    export.add_argument("settings", nargs="*", metavar="key=value")
    new_plugin = commands.add_parser(
        "new-plugin", help="write a ready third-party plugin package (entry point, hook, test)"
    )
    new_plugin.add_argument("name", help="the plugin's name: lowercase letters, digits, underscores")
    new_plugin.add_argument("--dir", default=".", help="folder to create jevons-NAME/ in (default: here)")
    compare = commands.add_parser("compare", help="finished runs side by side: a table and loss curves (PNG)")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare.add_argument(
        "--target", type=float, help="validation loss for steps/time-to-target (default: the highest final one)"
    )
    compare.add_argument("--out", help="PNG path (default: compare.png in the current directory)")
    kernels_cli.add_parser(commands)
    plot = commands.add_parser("plot", help="one run's loss and metric curves as a PNG")
    plot.add_argument("run", metavar="RUN_DIR")
    plot.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    handlers = {
        "recipes": _recipes,
        "plugins": _plugins,
        "hooks": _hooks,
        "data": _data,
        "sample": _sample,
        "compare": _compare,
        "plot": _plot,
        "export": _export,
        "new-plugin": _new_plugin,
        "kernels": kernels_cli.run,
    }
    if args.command is None:
        parser.print_help()
        return 2
    return guarded(lambda: handlers[args.command](args))


def _manager() -> PluginManager:
    from jevons.framework.plugin_manager import PluginManager

    return PluginManager.load()


def _recipes(args: argparse.Namespace) -> int:
    manager = _manager()
    rows = [(r.name, r.family, r.plugin, str(r.path)) for r in sorted(manager.recipes.values(), key=lambda r: r.name)]
    print(format_table(("recipe", "family", "from plugin", "file"), rows))
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from jevons.framework.plugin_manager import unsupported_reason

    manager = _manager()
    rows = [
        (n, manager.versions[n], ", ".join(manager.hooks_of(n)), manager.info(n).description) for n in manager.names()
    ]
    print(format_table(("plugin", "version", "hooks", "description"), rows))
    families = sorted(manager.families)
    runnable = manager.run_plugins()
    print("\nPlugin x family (yes: supported; otherwise why not):")
    if not runnable:
        print("  no plugins that act on runs are installed")
        return 0
    matrix = [
        [name] + [unsupported_reason(manager.info(name), manager.family(f)) or "yes" for f in families]
        for name in runnable
    ]
    print(format_table(["plugin", *families], matrix))
    return 0


def _hooks(args: argparse.Namespace) -> int:
    from jevons.framework import hookspecs
    from jevons.framework.plugin_manager import hookspec_names

    manager = _manager()
    rows = []
    for name in hookspec_names():
        spec = getattr(hookspecs, name)
        doc = (inspect.getdoc(spec) or "").splitlines()[0]
        implementers = [p for p in manager.names() if name in manager.hooks_of(p)]
        rows.append((f"{name}{inspect.signature(spec)}".replace("'", ""), ", ".join(implementers) or "-", doc))
    print(format_table(("hook", "implemented by", "what it does"), rows))
    return 0


def _data(args: argparse.Namespace) -> int:
    from jevons.framework.data.cache import data_root, ensure_built

    if args.name == "import":
        from jevons.framework.cli.data_import import import_command

        return import_command(args.arguments)
    if args.name == "info":
        from jevons.framework.cli.data_import import info_command

        if len(args.arguments) != 1:
            raise UsageError("usage: jevons data info DIR (a folder written by jevons data import)")
        return info_command(args.arguments[0])
    if args.arguments:  # what followed the source's name: only --root (argparse's REMAINDER took it)
        rest = argparse.ArgumentParser(prog=f"jevons data {args.name or ''}".strip())
        rest.add_argument("--root", default=args.root)
        args.root = rest.parse_args(args.arguments).root
    manager = _manager()
    sources = {s.name: (s, f) for f, reg in sorted(manager.families.items()) for s in reg.value.data_sources()}
    if not args.name:
        print(
            format_table(
                ("source", "family", "description"), [(n, f, s.description) for n, (s, f) in sorted(sources.items())]
            )
        )
        return 0
    if args.name not in sources:
        raise UsageError(
            f"Unknown data source '{args.name}'.{did_you_mean(args.name, sources)} Sources: {format_choices(sources)}."
        )
    path = ensure_built(sources[args.name][0], data_root(args.root), progress=True)
    print(path)
    return 0


def _settings(command: str, settings: Sequence[str]) -> dict[str, str]:
    options = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise UsageError(
                f"'{setting}' is not key=value; e.g. jevons {command} run_dir=runs/image_tiny/20261129-120000"
            )
        options[key] = value
    if "run_dir" not in options:
        raise UsageError(f"jevons {command} needs run_dir=PATH (a run directory with checkpoints).")
    return options


def _with_loaded_run(options: dict[str, str], act: Callable[[LoadedRun], list[Path]]) -> list[Path]:
    """Load the run (newest or given checkpoint) at TP=1 in this one process and call ``act(run)``;
    with ``ema=true``, on the moving average the ``ema`` plugin saved instead of the trained weights."""
    from pathlib import Path

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run
    from jevons.framework.trainer import quiet_libraries

    checkpoint = options.pop("checkpoint", None)
    ema = options.pop("ema", "false").lower()
    if ema not in ("true", "false"):
        raise UsageError(f"ema={ema} must be true or false.")
    quiet_libraries()
    with distributed.initialized(ParallelConfig()):
        run = load_run(Path(options.pop("run_dir")), Path(checkpoint) if checkpoint else None)
        if ema == "true":
            from jevons.plugins.ema.average import load_average

            copied = load_average(run.model, run.state, str(run.checkpoint))
            print(f"ema=true: {copied} parameters from the moving average at step {run.step}", flush=True)
        return act(run)


def _sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    options = _settings("sample", args.settings)
    out = Path(options.pop("out", Path(options["run_dir"]) / "samples" / "cli"))
    for path in _with_loaded_run(options, lambda run: run.family.sample(run, out, options)):
        print(path)
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    options = _settings("export", args.settings)
    out = options.pop("out", None)
    adapter = options.pop("adapter", "false").lower()
    unknown = set(options) - {"run_dir", "checkpoint", "ema"}
    if unknown:
        raise UsageError(
            f"Unknown export option(s) {', '.join(sorted(unknown))}; options: run_dir, checkpoint, out, adapter, ema."
        )
    if adapter not in ("true", "false"):
        raise UsageError(f"adapter={adapter} must be true or false.")

    run_dir = Path(options["run_dir"])
    if out:
        _refuse_existing(Path(out))  # before the run loads

    def export(run: LoadedRun) -> list[Path]:
        from jevons.framework.adapters import adapter_layers, merge_adapters

        target = (
            Path(out) if out else run_dir / "export" / f"step_{run.step:08d}{'-adapter' if adapter == 'true' else ''}"
        )
        _refuse_existing(target)
        if adapter == "true":
            if not adapter_layers(run.model):
                raise UsageError(
                    f"{run_dir} was trained without adapters (plugins=[lora]); export it without adapter=."
                )
            return run.family.export_adapter(run, target)
        merge_adapters(run.model)  # a LoRA run exports as the model it computes
        return run.family.export(run, target)

    for path in _with_loaded_run(options, export):
        print(path)
    return 0


def _refuse_existing(target: Path) -> None:
    if target.exists():
        raise UsageError(
            f"out={target} exists: jevons export never writes over a folder. Choose another out= or remove it."
        )


def _new_plugin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jevons.framework.cli.new_plugin import write_plugin_package

    files = write_plugin_package(args.name, Path(args.dir))
    root = files[0].parent
    print(f"wrote {root}:")
    for path in files:
        print(f"  {path.relative_to(root)}")
    print(f"next: pip install -e {root}  &&  train recipe=llm_tiny plugins=[{args.name}]")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jevons.framework.reports import comparison_rows, load_run, plot_losses

    runs = [load_run(Path(path)) for path in args.runs]
    header, rows, target = comparison_rows(runs, args.target)
    print(format_table(header, rows))
    out = plot_losses(runs, Path(args.out or "compare.png"), title=f"loss (target {target:.4g})")
    print(f"\nloss curves: {out}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jevons.framework.reports import load_run, plot_run

    run = load_run(Path(args.run))
    print(plot_run(run, Path(args.out) if args.out else run.path / "curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
