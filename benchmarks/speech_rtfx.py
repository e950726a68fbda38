"""Moving parameters from the decoder to the encoder: inverse real-time factor at equal accuracy.

The second finding of "Training and Inference Efficiency of Encoder-Decoder
Speech Models" (the Canary efficiency paper): the autoregressive decoder is the
inference bottleneck, so a model with the same parameters moved into the
encoder transcribes faster at the same accuracy and training compute.

Arms, trained here one after the other with the same command but the recipe
(``train recipe=R seed=0``, the built-in espeak-ng ``speech`` data, 1,000 steps
of 32 utterances, the recipe's optimizer), each in a fresh subprocess:

* ``balanced``: ``speech_tiny``, 4 encoder + 2 decoder layers (1,787,742 parameters);
* ``encoder_heavy``: ``speech_tiny_encoder_heavy``, 6 + 1 layers, FFN 496 (1,792,798).

Then both trained models transcribe the same ``--utterances`` validation
utterances with each decoding method (greedy decoder, joint CTC/attention
beam search of width 4, greedy CTC), ``decode.batch_size`` (50) at a time, one
torch thread, the arms alternating after one untimed batch each; RTFx is seconds of
audio over the median decoding time of ``--rounds`` rounds (``recipes/speech/evaluate.py``). CER and WER
are jiwer's over the same utterances.

Figures: ``rtfx_ratio_encoder_heavy_vs_balanced_{beam,greedy,ctc}``,
``cer_ratio_encoder_heavy_vs_balanced_{beam,greedy,ctc}``, each arm's RTFx and CER
per method, and each arm's training seconds.

    python benchmarks/speech_rtfx.py [--quick] [--workdir DIR]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from common import median, parse_args, write_result

ARMS = {"balanced": "speech_tiny", "encoder_heavy": "speech_tiny_encoder_heavy"}
METHODS = ("beam", "greedy", "ctc")


def _train(recipe: str, run_dir: Path, steps: int) -> dict[str, Any]:
    script = Path(sys.executable).parent / "train"
    command = [
        str(script),
        f"recipe={recipe}",
        "seed=0",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "trainer.limit_val_batches=2",
        "decode.eval_utterances=20",
        "trainer.progress_bar=false",
        f"run.dir={run_dir}",
    ]
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return summary


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--workdir", type=Path, default=None, help="keep the two runs here (default: a temp dir)")
        parser.add_argument("--utterances", type=int, default=None)
        parser.add_argument("--rounds", type=int, default=None)

    args = parse_args(__doc__.splitlines()[0], extra)
    steps = 30 if args.quick else 1000
    utterances = args.utterances or (20 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    with TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        summaries = {arm: _train(recipe, workdir / arm, steps) for arm, recipe in ARMS.items()}
        figures, details = measure(workdir, utterances, rounds)
    for arm, summary in summaries.items():
        figures[f"train_seconds_{arm}"] = float(summary["time_s"])
        details[f"train_loss_{arm}"] = summary["train_loss"]
    details.update(steps=steps, utterances=utterances, rounds=rounds, recipes=ARMS, torch_threads_decoding=1)
    targets = {
        "rtfx_ratio_encoder_heavy_vs_balanced_beam": ">=2.0",
        "cer_ratio_encoder_heavy_vs_balanced_beam": "<=1.1",
    }
    write_result("speech_rtfx", args.quick, figures, targets, details)


def measure(workdir: Path, utterances: int, rounds: int) -> tuple[dict[str, float], dict[str, Any]]:
    import torch

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run
    from jevons.recipes.speech.evaluate import audio_seconds, error_rates, readable, transcribe

    torch.set_num_threads(1)
    figures: dict[str, float] = {}
    details: dict[str, Any] = {}
    with distributed.initialized(ParallelConfig()), torch.no_grad():
        runs = {arm: load_run(workdir / arm) for arm in ARMS}
        first = next(iter(runs.values()))
        dataset = first.family.build_dataset(first.config, "val")
        samples = readable(dataset, utterances)
        audio = audio_seconds(samples)
        details["audio_seconds"] = round(audio, 2)
        batch = first.config.decode.batch_size
        details["decode_batch_size"] = batch
        seconds: dict[tuple[str, str], list[float]] = {}
        for method in METHODS:
            for run in runs.values():  # warm-up, untimed: first calls allocate and pick kernels
                transcribe(run.generator, dataset.collate, samples[:batch], batch, method, run.config.decode.beam_size)
            for _ in range(rounds):
                for arm, run in runs.items():
                    decode = run.config.decode
                    references, hypotheses, spent = transcribe(
                        run.generator, dataset.collate, samples, batch, method, decode.beam_size
                    )
                    seconds.setdefault((arm, method), []).append(spent)
                    rates = error_rates(references, hypotheses)
                    figures[f"cer_{method}_{arm}"] = rates["cer"]
                    figures[f"wer_{method}_{arm}"] = rates["wer"]
            for arm in runs:
                figures[f"rtfx_{method}_{arm}"] = audio / median(seconds[(arm, method)])
                print(
                    f"{arm} {method}: RTFx {figures[f'rtfx_{method}_{arm}']:.1f}, CER {figures[f'cer_{method}_{arm}']:.3f}"
                )
            figures[f"rtfx_ratio_encoder_heavy_vs_balanced_{method}"] = (
                figures[f"rtfx_{method}_encoder_heavy"] / figures[f"rtfx_{method}_balanced"]
            )
            figures[f"cer_ratio_encoder_heavy_vs_balanced_{method}"] = figures[f"cer_{method}_encoder_heavy"] / max(
                figures[f"cer_{method}_balanced"], 1e-9
            )
    return figures, details


if __name__ == "__main__":
    main()
