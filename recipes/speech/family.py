"""The ``speech`` family: attention encoder-decoder speech recognition with a CTC auxiliary loss.

Data: CPython's prose spoken by espeak-ng (``jevons data speech``,
:mod:`jevons.recipes.speech.data`); a user's corpus is a folder of
``train.json``/``val.json`` shard indexes whose samples hold ``wav`` (16 kHz
16-bit mono) and ``txt``, with lengths ``[frames, characters + 1]``.
Model: :mod:`jevons.recipes.speech.model`; objective: hybrid CTC/attention
with label smoothing; generator: greedy, beam and CTC decoding; validation
reports CER and WER.

This module stays light (no torch at import): the family object is created
while plugins load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from jevons.framework.config.schema import Config, DataConfig
from jevons.framework.errors import UsageError
from jevons.framework.family import DataSource, EvalContext, FamilyBase
from jevons.recipes.llm.shape import check_heads
from jevons.recipes.speech.text import VOCAB

if TYPE_CHECKING:
    import torch

    from jevons.framework.data.importing import Importer
    from jevons.framework.objective import Objective
    from jevons.framework.protocols import Generator, MapDataset
    from jevons.recipes.speech.model import SpeechRecognizer


@dataclass
class SpeechModelConfig:
    hidden_size: int = 144
    num_heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 2
    ffn_hidden_size: int = 576
    subsampling_channels: int = 32
    dropout: float = 0.0
    """Off in the tiny recipe: a few epochs of synthetic speech do not overfit, and dropout's random
    masks were 16% of a CPU training step."""

    def resolve(self, num_mels: int) -> ASRShape:
        """The shape to build the recogniser with: these sizes and the data's mel bins."""
        return ASRShape(num_mels=num_mels, **{f.name: getattr(self, f.name) for f in fields(SpeechModelConfig)})


@dataclass
class ASRShape(SpeechModelConfig):
    """Every size of the recogniser: the ``model`` section's, the input features' and the output vocabulary's."""

    num_mels: int = 80
    vocab_size: int = len(VOCAB)


@dataclass
class SpeechDataConfig(DataConfig):
    source: str | list[str] = "speech"
    num_mels: int = 80


@dataclass
class SpeechLossConfig:
    ctc_weight: float = 0.3
    """Share of the CTC loss in ``(1 - w) * attention + w * ctc``."""
    label_smoothing: float = 0.1


@dataclass
class SpeechDecodeConfig:
    """How validation and ``jevons sample`` transcribe."""

    eval_methods: list[str] = field(default_factory=lambda: ["beam", "greedy", "ctc"])
    """Each is scored (``val/cer_<method>``); the first is ``val/cer`` and ``val/wer``. Among greedy, beam, ctc."""
    eval_utterances: int = 100
    """Validation utterances transcribed per validation."""
    batch_size: int = 50
    beam_size: int = 4
    ctc_weight: float = 0.3
    """Share of the CTC prefix score in beam search (joint CTC/attention decoding); 0: the decoder alone."""
    length_penalty: float = 0.0
    """Beam hypotheses are ranked by score / length ** length_penalty."""
    samples_written: int = 10
    """Reference/hypothesis pairs written to ``samples/`` per method."""


@dataclass
class SpeechConfig(Config):
    """A speech run's config: the framework's sections, ``model``, the extended ``data``, ``loss`` and ``decode``."""

    data: SpeechDataConfig = field(default_factory=SpeechDataConfig)
    model: SpeechModelConfig = field(default_factory=SpeechModelConfig)
    loss: SpeechLossConfig = field(default_factory=SpeechLossConfig)
    decode: SpeechDecodeConfig = field(default_factory=SpeechDecodeConfig)


class SpeechFamily(FamilyBase[SpeechConfig]):
    name = "speech"
    recipe_dir = Path(__file__).parent / "configs"
    config_class = SpeechConfig
    capabilities = frozenset({"transformer", "encoder_decoder", "audio"})
    weight_unit = "tokens"
    parallelism = frozenset({"shard"})

    def validate(self, config: SpeechConfig) -> None:
        check_heads(config.model)  # no tensor parallelism: the heads only have to split the width
        for key in ("loss.ctc_weight", "decode.ctc_weight"):
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"{key}={value} must be between 0 and 1.")
        methods: tuple[Literal["greedy", "beam", "ctc"], ...] = ("greedy", "beam", "ctc")
        unknown = [m for m in config.decode.eval_methods if m not in methods]
        if unknown or not config.decode.eval_methods:
            raise UsageError(
                f"decode.eval_methods={list(config.decode.eval_methods)} must be a non-empty list among {list(methods)}."
            )

    def data_sources(self) -> Iterable[DataSource]:
        from jevons.recipes.speech.data import SPEECH_SOURCE

        return (SPEECH_SOURCE,)

    def importers(self) -> Iterable[type[Importer[Any]]]:
        from jevons.recipes.speech.importer import AudioImporter

        return (AudioImporter,)

    def build_model(self, config: SpeechConfig) -> torch.nn.Module:
        from jevons.recipes.speech.model import SpeechRecognizer

        return SpeechRecognizer(config.model.resolve(config.data.num_mels))

    def attention_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
        recognizer = cast("SpeechRecognizer", model)
        encoder = [(f"encoder.{i}.attn", layer.attn) for i, layer in enumerate(recognizer.encoder_blocks)]
        return encoder + [(f"decoder.{i}.attn", layer.attn) for i, layer in enumerate(recognizer.decoder_blocks)]

    def ffn_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, int, torch.nn.Module]]:
        recognizer = cast("SpeechRecognizer", model)
        encoder = [(f"encoder.{i}.ffn", i, layer.ffn) for i, layer in enumerate(recognizer.encoder_blocks)]
        offset = len(encoder)
        decoder = [(f"decoder.{i}.ffn", offset + i, layer.ffn) for i, layer in enumerate(recognizer.decoder_blocks)]
        return encoder + decoder

    def build_dataset(self, config: SpeechConfig, split: str) -> MapDataset:
        import json

        from jevons.recipes.speech.data import Utterances
        from jevons.recipes.speech.features import SAMPLE_RATE

        def build(folder: Path) -> MapDataset:
            meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
            unknown = sorted(set(meta.get("vocabulary", "")) - set(VOCAB))
            if unknown:
                raise UsageError(
                    f"{folder} has transcript characters {unknown!r} outside the speech family's vocabulary "
                    f"({''.join(VOCAB[3:])!r}): import it with jevons data import audio, which normalises them."
                )
            if meta.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
                raise UsageError(
                    f"{folder} holds {meta['sample_rate']} Hz audio; the speech family takes {SAMPLE_RATE} Hz."
                )
            return Utterances.from_folder(folder, split, config.data)

        return self.blend(config, split, build)

    def train_flops(self, model: torch.nn.Module, batch: dict[str, Any]) -> float:
        from jevons.recipes.speech.flops import recogniser_train_flops

        utterances, frames, _ = batch["features"].shape
        shape = cast("SpeechRecognizer", model).shape
        return recogniser_train_flops(shape, utterances, frames, int(batch["decoder_input"].shape[1]))

    def default_objective(self, model: torch.nn.Module, config: SpeechConfig) -> Objective:
        from jevons.recipes.speech.objective import HybridCTCAttentionObjective

        return HybridCTCAttentionObjective(config.loss.ctc_weight, config.loss.label_smoothing)

    def default_generator(self, model: torch.nn.Module, config: SpeechConfig) -> Generator:
        from jevons.recipes.speech.decode import Transcriber

        cfg = config.decode
        return Transcriber(model, beam_size=cfg.beam_size, ctc_weight=cfg.ctc_weight, length_penalty=cfg.length_penalty)

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        from jevons.recipes.speech.evaluate import evaluate

        return evaluate(context, self.build_dataset(context.config, "val"))

    def sample(self, run: Any, out_dir: Path, options: dict[str, str]) -> list[Path]:
        """Transcribe validation utterances. Options: ``count``, ``method`` (greedy, beam, ctc), ``beam_size``."""
        from jevons.recipes.speech.evaluate import audio_seconds, error_rates, readable, transcribe

        known = {"count", "method", "beam_size"}
        unknown = set(options) - known
        if unknown:
            raise UsageError(
                f"Unknown sample option(s) {', '.join(sorted(unknown))} for family speech; options: {', '.join(sorted(known))}."
            )
        method = options.get("method", run.config.decode.eval_methods[0])
        if method not in ("greedy", "beam", "ctc"):
            raise UsageError(f"method={method!r} is not a decoding method; expected greedy, beam or ctc.")
        dataset = self.build_dataset(run.config, "val")
        samples = readable(dataset, int(options.get("count", 20)))
        references, hypotheses, seconds = transcribe(
            run.generator,
            dataset.collate,
            samples,
            run.config.decode.batch_size,
            method,
            int(options.get("beam_size", run.config.decode.beam_size)),
        )
        rates = error_rates(references, hypotheses)
        audio, batch = audio_seconds(samples), run.config.decode.batch_size
        lines = [
            f"# {method}: CER {rates['cer']:.3f}, WER {rates['wer']:.3f}, RTFx {audio / max(seconds, 1e-9):.1f} "
            f"({audio:.1f} s of audio in {seconds:.2f} s, batch {batch}) over {len(references)} utterances"
        ]
        lines += [f"ref: {r}\nhyp: {h}\n" for r, h in zip(references, hypotheses)]
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"step_{run.step:08d}_{method}.txt"
        path.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return [path]
