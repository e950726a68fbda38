"""``train recipe=NAME key=value ...``: compose a recipe with overrides and run it."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jevons.framework.cli.common import guarded

USAGE = """\
usage: train recipe=NAME [key=value ...]

Train a recipe. Overrides use Hydra's grammar:
  key=value      change a setting        trainer.max_steps=20
  +key=value     add a key               +model.extra=1
  ~key           remove a key            ~trainer.gradient_clip_val
  plugins=[a,b]  enable plugins          plugins=[muon]
  launcher=NAME  pick a launcher         launcher=local launcher.nproc=2

Common settings: trainer.max_steps, trainer.val_check_interval, data.batch_size,
optimizer.lr, checkpoint.every_n_steps, checkpoint.resume=auto, run.dir, seed.

Environment: JEVONS_DATA (data cache), JEVONS_DISABLE_PLUGIN_AUTOLOAD=1,
JEVONS_TRACE_HOOKS=1, JEVONS_DEBUG=1 (tracebacks).

See `jevons recipes` and `jevons plugins` for what is installed.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        return guarded(_print_help)
    if any(arg.startswith("--") for arg in args):
        bad = next(arg for arg in args if arg.startswith("--"))
        print(
            f"error: '{bad}' is not an option: settings are key=value (e.g. trainer.max_steps=20); see train --help",
            file=sys.stderr,
        )
        return 2

    def run() -> int:
        from jevons.framework.run import train

        result = train(args)
        if result is not None and result.summary.get("stopped") == "requeue":
            from jevons.framework.preemption import REQUEUE_EXIT_CODE  # torch is loaded by now

            return REQUEUE_EXIT_CODE  # the job script requeues the job
        return 0

    return guarded(run)


def _print_help() -> int:
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load()
    print(USAGE)
    print("Recipes:")
    for name, recipe in sorted(manager.recipes.items()):
        print(f"  {name:24s} ({recipe.family})")
    print(f"\nPlugins: {', '.join(manager.run_plugins()) or '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
