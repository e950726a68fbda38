"""The speech family: features, transcripts, the corpus, the model's masks, decoding, and real training runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from jevons.recipes.speech import text as vocab
from jevons.recipes.speech.decode import Transcriber
from jevons.recipes.speech.features import HOP, SAMPLE_RATE, WINDOW, log_mel, mel_filter_bank, num_frames
from jevons.recipes.speech.model import ASRShape, SpeechRecognizer, subsampled_lengths
from jevons.recipes.speech.objective import HybridCTCAttentionObjective

SMALL = ASRShape(
    num_mels=40,
    hidden_size=32,
    num_heads=2,
    encoder_layers=2,
    decoder_layers=1,
    ffn_hidden_size=64,
    subsampling_channels=8,
    dropout=0.0,
)


def _speech_overrides(corpus: Path, run_root: Path, *extra: str) -> list[str]:
    return [
        "recipe=speech_tiny",
        f"data.source={corpus}",
        "data.num_mels=40",
        "model.hidden_size=32",
        "model.num_heads=2",
        "model.encoder_layers=2",
        "model.decoder_layers=1",
        "model.ffn_hidden_size=64",
        "model.subsampling_channels=8",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.progress_bar=false",
        "decode.eval_utterances=8",
        "decode.eval_methods=[greedy,beam,ctc]",
        "decode.samples_written=8",
        "decode.beam_size=2",
        f"run.root={run_root}",
        *extra,
    ]


def test_mel_filter_bank_is_triangles_of_unit_area_rising_in_frequency() -> None:
    filters = mel_filter_bank(40)
    assert filters.shape == (40, WINDOW // 2 + 1)
    assert (filters >= 0).all()
    peaks = filters.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[-1] > peaks[0]
    hz_per_bin = SAMPLE_RATE / WINDOW
    areas = filters.sum(1) * hz_per_bin  # Slaney normalisation: 2 / width in Hz, so each area is ~1
    assert torch.allclose(areas[10:], torch.ones(30), rtol=0.1)


def test_log_mel_of_a_tone_peaks_in_the_filter_around_its_frequency() -> None:
    seconds = 0.5
    t = torch.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    tone = 0.5 * torch.sin(2 * math.pi * 1000.0 * t)
    features = log_mel(tone, 40)
    assert features.shape == (num_frames(len(tone)), 40) == (1 + len(tone) // HOP, 40)
    loudest = int(features[10:-10].mean(0).argmax())
    assert int(mel_filter_bank(40)[:, 1000 * WINDOW // SAMPLE_RATE].argmax()) == loudest


def test_transcripts_normalise_encode_and_decode() -> None:
    assert vocab.normalize("Return the Object's  name -- e.g., a str!") == "return the object's name e g a str"
    ids = vocab.encode("a b'z")
    assert ids == [vocab.VOCAB.index(c) for c in "a b'z"] and min(ids) > vocab.EOS
    assert vocab.decode([vocab.BOS, *ids, vocab.EOS, *ids]) == "a b'z"
    with pytest.raises(ValueError, match="normalize"):
        vocab.encode("Capital")


def test_corpus_lengths_match_what_the_dataset_reads(speech_corpus: Path) -> None:
    from jevons.framework.config.schema import DataConfig
    from jevons.recipes.speech.data import MAX_SECONDS, MIN_SECONDS, Utterances

    meta = json.loads((speech_corpus / "meta.json").read_text())
    config = DataConfig()
    config.num_mels = 40  # type: ignore[attr-defined]
    dataset = Utterances.from_folder(speech_corpus, "val", config)
    assert len(dataset) == meta["splits"]["val"]["utterances"] == 20 - meta["splits"]["val"]["dropped_out_of_range"]
    for i in range(len(dataset)):
        sample = dataset[i]
        frames, characters = dataset.lengths[i]
        assert sample["features"].shape == (frames, 40)
        assert characters == len(sample["tokens"]) + 1 == len(sample["text"]) + 1
        assert MIN_SECONDS <= (frames - 1) * HOP / SAMPLE_RATE <= MAX_SECONDS
        # Normalised per utterance and mel bin.
        assert torch.allclose(sample["features"].mean(0), torch.zeros(40), atol=1e-4)
    batch = dataset.collate([dataset[0], dataset[1]])
    n = len(dataset[0]["tokens"])
    assert batch["decoder_input"][0, 0] == vocab.BOS and batch["targets"][0, n] == vocab.EOS
    assert torch.equal(batch["decoder_input"][0, 1 : n + 1], batch["targets"][0, :n])
    assert batch["target_mask"][0].sum() == n + 1


def test_subsampled_lengths_match_the_convolutions() -> None:
    model = SpeechRecognizer(SMALL)
    for frames in (9, 10, 11, 100, 101):
        out = model.subsampling(torch.zeros(1, frames, SMALL.num_mels), torch.tensor([frames]))
        assert out.shape[1] == subsampled_lengths(torch.tensor(frames)).item()


def test_padding_changes_neither_the_encoder_nor_the_decoder_outputs() -> None:
    torch.manual_seed(0)
    model = SpeechRecognizer(SMALL).eval()
    features = torch.randn(1, 57, SMALL.num_mels)
    tokens = torch.tensor([[vocab.BOS, 5, 9, 12]])
    alone, _enc_alone, _ = model(features, torch.tensor([57]), tokens)
    padded = torch.cat([features, torch.randn(1, 40, SMALL.num_mels)], dim=1)  # padding frames full of noise
    batch = torch.cat([padded, torch.randn(1, 97, SMALL.num_mels)])
    logits, _encoder_out, lengths = model(batch, torch.tensor([57, 97]), tokens.expand(2, -1))
    assert lengths.tolist() == [15, 25]
    torch.testing.assert_close(logits[0], alone[0], atol=1e-5, rtol=1e-5)
    # Causal decoder: a later token never changes an earlier position's prediction.
    changed, _, _ = model(features, torch.tensor([57]), torch.tensor([[vocab.BOS, 5, 9, 20]]))
    torch.testing.assert_close(changed[0, :3], alone[0, :3])
    assert not torch.allclose(changed[0, 3], alone[0, 3])


def test_objective_mixes_ctc_and_attention_and_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = SpeechRecognizer(SMALL)
    from jevons.framework.config.schema import DataConfig  # noqa: F401  (only the collate is needed)
    from jevons.recipes.speech.data import Utterances

    samples = [
        {"features": torch.randn(n, SMALL.num_mels), "tokens": np.asarray(vocab.encode(t)), "text": t}
        for n, t in ((80, "hello there"), (60, "a cat"))
    ]
    batch = Utterances.collate(samples)
    out = HybridCTCAttentionObjective(ctc_weight=0.3, label_smoothing=0.1)(model, batch)
    assert out.weight == len("hello there") + 1 + len("a cat") + 1
    expected = 0.7 * out.metrics["attention_loss"] + 0.3 * out.metrics["ctc_loss"]
    torch.testing.assert_close(out.loss.detach(), expected)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


class _Markov(torch.nn.Module):
    """A "model" whose next character depends only on the last one (``table[last]``): paths with known odds."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return features, lengths

    def decode(self, prefix: torch.Tensor, memory: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.table[prefix].log()

    def ctc_head(self, memory: torch.Tensor) -> torch.Tensor:
        return memory


def test_beam_search_finds_the_likelier_transcript_that_greedy_misses() -> None:
    a, b, c = (vocab.VOCAB.index(x) for x in "abc")
    table = torch.full((len(vocab.VOCAB), len(vocab.VOCAB)), 1e-9)
    table[vocab.BOS, a], table[vocab.BOS, b] = 0.6, 0.4
    table[a, vocab.EOS], table[a, c] = 0.4, 0.6 / 2  # "a</s>": 0.24; "ac...": at most 0.18
    table[a, b] = 0.6 / 2
    table[b, vocab.EOS], table[b, c] = 0.9, 0.1  # "b</s>": 0.36, the likeliest transcript
    table[c, vocab.EOS] = 1.0
    model = _Markov(table)
    features, lengths = torch.zeros(1, 8, len(vocab.VOCAB)), torch.tensor([8])
    transcriber = Transcriber(model, beam_size=2, ctc_weight=0.0)
    assert transcriber(features, lengths, method="greedy") == ["a"]
    assert transcriber(features, lengths, method="beam") == ["b"]
    assert transcriber(features, lengths, method="beam", beam_size=1) == ["a"]  # one beam is greedy
    with pytest.raises(ValueError, match="greedy, beam or ctc"):
        transcriber(features, lengths, method="sample")


def test_ctc_greedy_merges_repeats_unless_a_blank_separates_them() -> None:
    a, b = vocab.VOCAB.index("a"), vocab.VOCAB.index("b")
    path = [a, a, vocab.BLANK, a, b, b, vocab.BLANK, vocab.BLANK, b]
    logits = torch.nn.functional.one_hot(torch.tensor(path), len(vocab.VOCAB)).float()[None]
    transcriber = Transcriber(_Markov(torch.ones(1, 1)))
    assert transcriber(logits, torch.tensor([9]), method="ctc") == ["aabb"]
    assert transcriber(logits, torch.tensor([5]), method="ctc") == ["aab"]  # frames past the length ignored


def test_one_beam_equals_greedy_on_a_real_model() -> None:
    torch.manual_seed(3)
    model = SpeechRecognizer(SMALL).eval()
    features, lengths = torch.randn(3, 60, SMALL.num_mels), torch.tensor([60, 41, 23])
    transcriber = Transcriber(model, ctc_weight=0.0)
    assert transcriber(features, lengths, method="beam", beam_size=1) == transcriber(features, lengths, method="greedy")


def test_ctc_prefix_score_of_a_finished_transcript_is_its_ctc_likelihood() -> None:
    from jevons.recipes.speech.ctc_prefix import CTCPrefixScorer

    torch.manual_seed(0)
    log_probs = torch.randn(12, len(vocab.VOCAB), dtype=torch.float64).log_softmax(-1)
    scorer = CTCPrefixScorer(log_probs)
    for transcript in ("ab", "aab", "b a"):
        state, score = scorer.initial()
        for position, char in enumerate(vocab.encode(transcript)):
            last = torch.tensor([vocab.BOS if position == 0 else vocab.encode(transcript)[position - 1]])
            scores, states = scorer.extend(state, last, empty=position == 0)
            state, score = states[:, char], scores[:, char]
            # A prefix score is a sum over longer transcripts too: never below the finished one's.
        finished = scorer.extend(state, torch.tensor([vocab.encode(transcript)[-1]]), empty=False)[0][0, vocab.EOS]
        target = torch.tensor([vocab.encode(transcript)])
        expected = -torch.nn.functional.ctc_loss(
            log_probs[:, None],
            target,
            torch.tensor([12]),
            torch.tensor([len(transcript)]),
            blank=vocab.BLANK,
            reduction="sum",
        )
        torch.testing.assert_close(finished, expected)
        assert score >= finished


def test_joint_beam_search_follows_ctc_where_the_decoder_loops() -> None:
    a, b = vocab.VOCAB.index("a"), vocab.VOCAB.index("b")
    table = torch.full((len(vocab.VOCAB), len(vocab.VOCAB)), 1e-9)
    table[vocab.BOS, a] = 1.0
    table[a, a], table[a, b], table[a, vocab.EOS] = 0.5, 0.3, 0.2  # the decoder alone loops on "a"
    table[b, vocab.EOS] = 1.0
    frames = [a, vocab.BLANK, b, vocab.BLANK]  # the audio says "ab"
    ctc_logits = 8.0 * torch.nn.functional.one_hot(torch.tensor(frames), len(vocab.VOCAB)).float()[None]
    model = _Markov(table)
    features, lengths = ctc_logits, torch.tensor([4])
    assert Transcriber(model, ctc_weight=0.0)(features, lengths, method="greedy") == ["aaaaa"]
    assert Transcriber(model, beam_size=3, ctc_weight=0.5)(features, lengths, method="beam") == ["ab"]


def test_a_missing_espeak_ng_is_a_usage_error_saying_how_to_install_it(monkeypatch) -> None:
    from jevons.framework.errors import UsageError
    from jevons.recipes.speech.synth import espeak_binary

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UsageError, match="apt-get install espeak-ng"):
        espeak_binary()


def test_a_short_run_lowers_the_loss_and_reports_error_rates(train, run_root, speech_corpus: Path) -> None:
    import csv

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run

    result = train(
        _speech_overrides(
            speech_corpus,
            run_root,
            "trainer.max_steps=40",
            "trainer.val_check_interval=40",
            "trainer.limit_val_batches=2",
            "trainer.log_every_n_steps=5",
            "optimizer.warmup_steps=5",
            "optimizer.lr=3e-3",
        )
    )
    rows = [r for r in csv.DictReader((result.run_dir / "metrics.csv").open()) if r.get("train/loss")]
    first = float(rows[0]["train/loss"])  # step 4
    last = sum(float(r["train/loss"]) for r in rows[-3:]) / 3  # the plateau of steps 29-39, averaged
    assert last < 0.85 * first, (first, last)
    metrics = result.summary["metrics"]
    for method in ("beam", "greedy", "ctc"):
        assert 0.0 <= metrics[f"val/cer_{method}"] and 0.0 <= metrics[f"val/wer_{method}"]
        assert metrics[f"val/rtfx_{method}"] > 0.0  # seconds of audio per second of decoding
    assert metrics["val/cer"] == metrics["val/cer_greedy"]  # the first of decode.eval_methods
    written = (result.run_dir / "samples" / "step_00000040.txt").read_text()
    assert written.count("ref: ") == 3 * 8 and "## beam: CER" in written and ", batch 50) over 8 utterances" in written

    with distributed.initialized(ParallelConfig()):
        run = load_run(result.run_dir)
        files = run.family.sample(run, run_root / "sampled", {"method": "ctc", "count": "3"})
    assert files[0].read_text().count("hyp: ") == 3 and ", RTFx " in files[0].read_text()
    from jevons.framework.errors import UsageError

    with pytest.raises(UsageError, match="method="):
        run.family.sample(run, run_root / "sampled", {"method": "sampling"})


@pytest.mark.parametrize(
    "override, message",
    [
        ("parallel.tensor=2", "parallel.tensor"),
        ("decode.eval_methods=[greedy,sampling]", "decode.eval_methods"),
        ("loss.ctc_weight=1.5", "loss.ctc_weight=1.5 must be between 0 and 1"),
        ("decode.ctc_weight=-0.1", "decode.ctc_weight=-0.1 must be between 0 and 1"),
        ("model.num_heads=5", "multiple of model.num_heads=5"),
    ],
)
def test_bad_speech_settings_are_refused_before_anything_runs(override: str, message: str) -> None:
    from jevons.framework.config.compose import compose_config
    from jevons.framework.errors import UsageError
    from jevons.framework.plugin_manager import PluginManager

    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace(".", r"\.")):
        compose_config(PluginManager.load(autoload=False), ["recipe=speech_tiny", override])


def test_audio_seconds_counts_one_frame_per_10_ms_hop() -> None:
    from jevons.recipes.speech.evaluate import audio_seconds
    from jevons.recipes.speech.features import num_frames

    samples = [{"features": np.zeros((num_frames(16_000 * seconds), 40))} for seconds in (1, 3)]
    assert audio_seconds(samples) == pytest.approx(4.0)


def test_the_encoder_heavy_recipe_moves_decoder_parameters_to_the_encoder_at_equal_size() -> None:
    from jevons.framework import distributed
    from jevons.framework.config.compose import compose_config
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    family = manager.family("speech")
    sizes = {}
    for recipe in ("speech_tiny", "speech_tiny_encoder_heavy"):
        config = compose_config(manager, [f"recipe={recipe}"])
        with distributed.initialized(ParallelConfig()):
            sizes[recipe] = sum(p.numel() for p in family.build_model(config).parameters())
        layers = (config.model.encoder_layers, config.model.decoder_layers)
        assert layers == ((4, 2) if recipe == "speech_tiny" else (6, 1))
    assert abs(sizes["speech_tiny_encoder_heavy"] / sizes["speech_tiny"] - 1) < 0.02, sizes
