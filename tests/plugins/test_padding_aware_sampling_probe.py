"""The memory probe of padding-aware sampling: caps found by real steps, applied, kept in checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jevons.plugins.padding_aware_sampling import PaddingAwareSamplingConfig
from jevons.plugins.padding_aware_sampling.probe import CAPS_FILE, largest_fitting, probe_bucket_caps, step_memory
from jevons.plugins.padding_aware_sampling.sampler import BucketingBatchSampler

TINY_SPEECH = [
    "data.num_mels=40",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "model.ffn_hidden_size=64",
    "model.subsampling_channels=8",
    "data.num_workers=0",
]
"""A speech model small enough for a probe to search batch sizes in seconds."""


@pytest.mark.parametrize(
    "threshold, upper, expected", [(37, 100, 37), (37, 20, 20), (1, 64, 1), (0, 8, 0), (64, 64, 64)]
)
def test_largest_fitting_doubles_then_bisects(threshold: int, upper: int, expected: int) -> None:
    tried: list[int] = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= threshold

    assert largest_fitting(fits, upper) == expected
    assert len(tried) <= 2 * max(1, upper).bit_length() + 1  # logarithmic in the upper bound


def test_caps_bound_their_buckets_and_survive_a_checkpoint_round_trip() -> None:
    rng = np.random.default_rng(0)
    lengths = np.stack([rng.integers(10, 200, 500), rng.integers(1, 30, 500)], axis=1)
    cfg = PaddingAwareSamplingConfig(max_tokens=2000, dims=2, num_buckets=4, output_buckets=2)
    sampler = BucketingBatchSampler(lengths, cfg, seed=1)
    uncapped = list(sampler)
    longest_bucket = int(sampler.buckets.max())
    sampler.set_bucket_caps({longest_bucket: 3})
    capped = list(sampler)
    members = set(np.flatnonzero(sampler.buckets == longest_bucket).tolist())
    assert any(len(b) > 3 and set(b) <= members for b in uncapped)
    assert all(len(b) <= 3 for b in capped if set(b) <= members)
    assert sorted(i for b in capped for i in b) == list(range(500))  # still every sample once

    restored = BucketingBatchSampler(lengths, cfg, seed=1)
    restored.load_state_dict(torch.load(_saved(sampler.state_dict()), weights_only=True))
    assert restored.bucket_caps == {longest_bucket: 3} and list(restored) == capped


def _saved(state: dict) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "state.pt"
    torch.save(state, path)
    return path


def test_cpu_step_memory_grows_with_the_batch() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))

    def objective(model, batch):
        return type("Out", (), {"loss": model(batch).square().mean()})()

    one, four = (step_memory(model, objective, torch.randn(n, 64)) for n in (16, 64))
    weights = 2 * sum(p.numel() * 4 for p in model.parameters())
    # Activations saved for backward, each once: input (64), hidden before and after GELU (256 + 256),
    # output (1), fp32, per sample; the weights the linear layers save are not counted again.
    assert one - weights == 16 * 4 * (64 + 256 + 256 + 1)
    assert four - weights == 4 * (one - weights)


def _speech_config(corpus: Path, *extra: str):
    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    overrides = [
        "recipe=speech_tiny",
        f"data.source={corpus}",
        *TINY_SPEECH,
        *extra,
    ]
    return manager, compose_config(manager, overrides)


def test_probe_caps_only_the_buckets_where_memory_binds(speech_corpus: Path) -> None:
    manager, config = _speech_config(speech_corpus)
    family = manager.family("speech")
    torch.manual_seed(0)
    model = family.build_model(config)
    objective = family.default_objective(model, config)
    dataset = family.build_dataset(config, "train")
    cfg = PaddingAwareSamplingConfig(max_tokens=3000, dims=2, num_buckets=3, output_buckets=1)
    sampler = BucketingBatchSampler(dataset.lengths, cfg)
    longest = int(np.argmax(dataset.lengths[:, 0]))
    # A limit that holds four copies of the longest utterance but not five.
    four, five = (step_memory(model, objective, dataset.collate([dataset[longest]] * n)) for n in (4, 5))
    model.zero_grad(set_to_none=True)
    caps = probe_bucket_caps(sampler, dataset, model, objective, (four + five) / 2, lambda batch: batch)
    top = int(sampler.buckets[longest])
    assert caps[top] == 4
    for bucket, cap in caps.items():  # a cap only where the budget alone would allow more
        members = np.flatnonzero(sampler.buckets == bucket)
        assert cap < cfg.max_tokens // sampler.lengths[members, 0].max()
    assert all(p.grad is None for p in model.parameters())  # the probe leaves no gradients behind


def test_a_run_with_the_probe_writes_caps_and_its_batches_respect_them(
    train, run_root, speech_corpus: Path, repo: Path
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "jt_record_batches", repo / "tests/plugins_for_tests/jt_record_batches.py"
    )
    recorder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recorder)
    sampling = [
        "padding_aware_sampling.dims=2",
        "padding_aware_sampling.max_tokens=3000",
        "padding_aware_sampling.num_buckets=3",
        "padding_aware_sampling.output_buckets=1",
    ]
    manager, config = _speech_config(speech_corpus, "plugins=[padding_aware_sampling]", *sampling)
    result = train(
        [
            "recipe=speech_tiny",
            f"data.source={speech_corpus}",
            *TINY_SPEECH,
            "trainer.max_steps=12",
            "trainer.val_check_interval=12",
            "trainer.limit_val_batches=1",
            "decode.eval_utterances=2",
            "trainer.progress_bar=false",
            "plugins=[padding_aware_sampling,jt_record_batches]",
            *sampling,
            "padding_aware_sampling.memory_probe=true",
            "padding_aware_sampling.memory_limit_gb=0.004",
            f"run.root={run_root}",
        ],
        plugins=[("jt_record_batches", recorder)],
    )
    saved = json.loads((result.run_dir / CAPS_FILE).read_text())
    caps = {int(bucket): n for bucket, n in saved["caps"].items()}
    assert saved["memory_limit_gb"] == 0.004 and caps, saved  # 4 MB binds on the longest bucket at least
    assert result.summary["steps"] == 12
    buckets = BucketingBatchSampler(
        manager.family("speech").build_dataset(config, "train").lengths, config.padding_aware_sampling
    ).buckets
    steps = [json.loads(line)["indices"] for line in (result.run_dir / "batches-rank0.jsonl").read_text().splitlines()]
    capped = [batch for batch in steps if int(buckets[batch].max()) in caps]
    assert capped, "no step drew from a capped bucket"
    assert all(len(batch) <= caps[int(buckets[batch].max())] for batch in capped)
