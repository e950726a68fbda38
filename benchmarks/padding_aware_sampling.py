"""Padding and batch fill of the padding-aware sampler against random batching and Lhotse, on a pinned
speech-like length distribution; and real tokens per second through a model.

Distribution (pinned): 20,000 utterances, durations log-normal with median 8 s
and sigma 0.75, clipped to [1, 40] s; output tokens 3.2 per second x U(0.7,
1.3). Budget: 600 s of padded input per batch. Arms, one epoch each:

* random: shuffled, each batch filled while ``n * max_duration <= 600``;
* Jevons 1-D: 30 equal-cost duration buckets;
* Jevons 2-D: 30 duration buckets x 6 output-length sub-buckets;
* Lhotse ``DynamicBucketingSampler(max_duration=600, num_buckets=30, shuffle=True)``.

Figures: input and output padding (the fraction of padded positions), mean
batch size, budget fill (mean real duration per batch over the budget).

Throughput through a model, forward and backward and an AdamW step, the 2-D
sampler against random batching under the same budget:

* ``real_frames_per_s_ratio_vs_random``: the speech_tiny model (its
  architecture, untrained) on utterances drawn from the pinned distribution —
  log-mel-shaped random features (100 frames per second) and random
  transcripts of the distribution's output lengths — with the issue's 600 s
  budget. Real (non-padding) input frames per second.
* ``real_tokens_per_s_ratio_vs_random_llm``: llm_tiny on its own documents
  (up to 512 tokens), a 2,048-token budget.

    python benchmarks/padding_aware_sampling.py [--quick]
"""

from __future__ import annotations

import time

import numpy as np
from common import parse_args, write_result

TARGETS = {
    "pad_in_2d": "<=0.02",
    "pad_out_2d": "<=0.05",
    "mean_batch_ratio_vs_lhotse": ">=1.0",
    "budget_fill_2d": ">=0.90",
    "real_frames_per_s_ratio_vs_random": ">=2.0",
}
BUDGET = 600.0


def lengths(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.lognormal(np.log(8.0), 0.75, count), 1.0, 40.0)
    tokens = np.round(seconds * 3.2 * rng.uniform(0.7, 1.3, count))
    return np.stack([seconds, tokens], axis=1)


def describe(data: np.ndarray, batches: list[list[int]]) -> dict[str, float]:
    real_in = sum(data[b, 0].sum() for b in batches)
    real_out = sum(data[b, 1].sum() for b in batches)
    return {
        "pad_in": 1.0 - real_in / sum(len(b) * data[b, 0].max() for b in batches),
        "pad_out": 1.0 - real_out / sum(len(b) * data[b, 1].max() for b in batches),
        "mean_batch": float(np.mean([len(b) for b in batches])),
        "budget_fill": float(np.mean([data[b, 0].sum() / BUDGET for b in batches])),
        "batches": len(batches),
    }


def random_batches(data: np.ndarray, seed: int = 0) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(len(data))
    batches, batch, longest = [], [], 0.0
    for index in order:
        new_longest = max(longest, data[index, 0])
        if batch and (len(batch) + 1) * new_longest > BUDGET:
            batches.append(batch)
            batch, new_longest = [], data[index, 0]
        batch.append(int(index))
        longest = new_longest
    return batches + ([batch] if batch else [])


def jevons_batches(data: np.ndarray, dims: int) -> list[list[int]]:
    from jevons.plugins.padding_aware_sampling import PaddingAwareSamplingConfig
    from jevons.plugins.padding_aware_sampling.sampler import BucketingBatchSampler

    cfg = PaddingAwareSamplingConfig(max_tokens=BUDGET, dims=dims, num_buckets=30, output_buckets=6 if dims == 2 else 1)
    return list(BucketingBatchSampler(data, cfg, seed=0))


def lhotse_batches(data: np.ndarray) -> list[list[int]]:
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler
    from lhotse.testing.dummies import dummy_cut

    cuts = CutSet.from_cuts(dummy_cut(i, duration=float(d)) for i, d in enumerate(data[:, 0]))
    sampler = DynamicBucketingSampler(cuts, max_duration=BUDGET, num_buckets=30, shuffle=True, seed=0)
    return [[int(c.id.split("-")[-1]) for c in batch] for batch in sampler]


def llm_throughput(steps: int) -> dict[str, float]:
    """Real tokens per second through llm_tiny's forward and backward: the sampler vs random batches."""
    import torch

    from jevons.framework import distributed
    from jevons.framework.config.compose import compose_config
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.data.loader import make_dataloader
    from jevons.framework.data.sampler import RandomBatchSampler
    from jevons.framework.optim import default_optimizer
    from jevons.framework.plugin_manager import PluginManager
    from jevons.plugins.padding_aware_sampling import PaddingAwareSamplingConfig
    from jevons.plugins.padding_aware_sampling.sampler import BucketingBatchSampler

    manager = PluginManager.load(autoload=False)
    # Variable-length documents of up to 512 tokens: where batching matters for a language model.
    config = compose_config(
        manager, ["recipe=llm_tiny", "data.seq_len=512", "model.max_seq_len=512", "data.num_workers=0"]
    )
    family = manager.family("llm")
    budget = 16 * 128
    rates = {}
    with distributed.initialized(ParallelConfig()):
        torch.manual_seed(0)
        model = family.build_model(config)
        objective = family.default_objective(model, config)
        optimizer = default_optimizer(model, config)
        dataset = family.build_dataset(config, "train")
        samplers = {
            "random": RandomBatchSampler(len(dataset), max(1, budget // 512), seed=0),
            "padding_aware": BucketingBatchSampler(
                dataset.lengths, PaddingAwareSamplingConfig(max_tokens=budget, num_buckets=20)
            ),
        }
        for name, sampler in samplers.items():
            loader, seconds, tokens = make_dataloader(dataset, sampler, 0), [], []
            for step, loaded in enumerate(loader):
                if step == steps:
                    break
                start = time.perf_counter()
                out = objective(model, loaded.data)
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
                seconds.append(time.perf_counter() - start)
                tokens.append(out.weight)
            rates[name] = sum(tokens[3:]) / sum(seconds[3:])
    return {
        "real_tokens_per_s_ratio_vs_random_llm": rates["padding_aware"] / rates["random"],
        "real_tokens_per_s_llm_random": rates["random"],
        "real_tokens_per_s_llm_padding_aware": rates["padding_aware"],
    }


def speech_throughput(data: np.ndarray, steps: int) -> dict[str, float]:
    """Real input frames per second through speech_tiny's forward and backward: the 2-D sampler vs random."""
    import torch

    from jevons.framework.config.compose import compose_config
    from jevons.framework.optim import default_optimizer
    from jevons.framework.plugin_manager import PluginManager
    from jevons.recipes.speech.data import Utterances
    from jevons.recipes.speech.text import VOCAB

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, ["recipe=speech_tiny"])
    frames_per_second, mels = 100, config.data.num_mels
    rng = np.random.default_rng(0)

    def batch(indices: list[int]) -> dict:
        samples = [
            {
                "features": torch.from_numpy(
                    rng.standard_normal((int(data[i, 0] * frames_per_second), mels), dtype=np.float32)
                ),
                "tokens": rng.integers(3, len(VOCAB), int(data[i, 1])),
                "text": "",
            }
            for i in indices
        ]
        return Utterances.collate(samples)

    arms = {"random": random_batches(data, seed=1), "padding_aware": jevons_batches(data, 2)}
    rates = {}
    for name, batches in arms.items():
        torch.manual_seed(0)
        model = manager.family("speech").build_model(config)
        objective = manager.family("speech").default_objective(model, config)
        optimizer = default_optimizer(model, config)
        order = np.random.default_rng(2).permutation(len(batches))[:steps]
        seconds, frames = [], []
        for step, index in enumerate(order):
            loaded = batch(batches[index])
            start = time.perf_counter()
            out = objective(model, loaded)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            if step >= 2:  # warm-up steps are not timed
                seconds.append(time.perf_counter() - start)
                frames.append(int(loaded["feature_lengths"].sum()))
        rates[name] = sum(frames) / sum(seconds)
        print(f"speech_tiny {name}: {rates[name]:.0f} real frames/s", flush=True)
    return {
        "real_frames_per_s_ratio_vs_random": rates["padding_aware"] / rates["random"],
        "real_frames_per_s_random": rates["random"],
        "real_frames_per_s_padding_aware": rates["padding_aware"],
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    data = lengths(2000 if args.quick else 20000)
    arms = {
        "random": random_batches(data),
        "1d": jevons_batches(data, 1),
        "2d": jevons_batches(data, 2),
        "lhotse": lhotse_batches(data),
    }
    stats = {name: describe(data, batches) for name, batches in arms.items()}
    for name, s in stats.items():
        print(name, {k: round(v, 4) for k, v in s.items()}, flush=True)
    figures = {f"{key}_{name}": value for name, s in stats.items() for key, value in s.items()}
    figures["mean_batch_ratio_vs_lhotse"] = stats["2d"]["mean_batch"] / stats["lhotse"]["mean_batch"]
    figures["mean_batch_ratio_vs_random"] = stats["2d"]["mean_batch"] / stats["random"]["mean_batch"]
    figures.update(speech_throughput(data, 6 if args.quick else 40))
    figures.update(llm_throughput(15 if args.quick else 60))
    rows = [
        [
            name,
            f"{s['pad_in']:.4f}",
            f"{s['pad_out']:.4f}",
            f"{s['mean_batch']:.1f}",
            f"{s['budget_fill']:.3f}",
            s["batches"],
        ]
        for name, s in stats.items()
    ]
    details = {
        "utterances": len(data),
        "budget_seconds": BUDGET,
        "tables": {
            "One epoch per arm": {
                "columns": ["arm", "input padding", "output padding", "mean batch", "budget fill", "batches"],
                "rows": rows,
            }
        },
    }
    write_result("padding_aware_sampling", args.quick, figures, TARGETS, details)


if __name__ == "__main__":
    main()
