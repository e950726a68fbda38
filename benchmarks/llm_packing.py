"""Instruction fine-tuning throughput: examples packed into full rows against padded batches of the same token budget.

Data: the built-in ``llm-stdlib-chat`` (recipe ``llama_sft_tiny``): a standard-library
function's signature as the prompt, its docstring as the response, rendered with a Llama 3
chat template; thousands of examples from a one-line docstring to a page, cut at
``seq_len`` = 512 inputs. Model: a Llama with grouped-query attention written by
transformers (``write_tiny_llm``: 4 layers, 256 wide, 8 query / 2 KV heads) and read
through ``model.pretrained``'s loader, fine-tuned with AdamW, loss on response tokens.

Arms, each with the same budget of ``ROWS x seq_len`` = 4,096 input positions per step:

* packed: ``data.packing=true`` — whole examples packed first-fit into rows of 512
  (attention kept within each example, positions restarting), 8 rows per batch;
* padded: shuffled examples, each batch filled while ``n x longest <= budget``, padded
  only to its longest example;
* padding_aware: the ``padding_aware_sampling`` plugin's batches (20 length buckets,
  ``max_tokens`` = the budget), padded to their longest.

Steps alternate between the arms in rounds (the first round is warm-up); a step is
forward, backward and an optimizer step of a collated batch (collation is untimed: the
data loader's workers do it). Real tokens are input positions that are not padding;
``real_token_fraction_*`` is their share of every position over a whole epoch of each
arm's batches.

    python benchmarks/llm_packing.py [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import parse_args, write_result

TARGETS = {"real_tokens_per_s_ratio_packed_vs_padded": ">=1.5"}
ROWS = 8
MODEL = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
}


def padded_batches(inputs: np.ndarray, budget: int, seed: int) -> list[list[int]]:
    """Shuffled examples, each batch grown while its size times its longest example stays within ``budget``."""
    order = np.random.default_rng(seed).permutation(len(inputs))
    batches: list[list[int]] = [[]]
    longest = 0
    for index in order:
        size = int(inputs[index])
        if batches[-1] and (len(batches[-1]) + 1) * max(longest, size) > budget:
            batches.append([])
            longest = 0
        batches[-1].append(int(index))
        longest = max(longest, size)
    return batches


def packed_batches(rows: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(rows)
    return [order[i : i + ROWS].tolist() for i in range(0, rows, ROWS)]


def real_fraction(batches: list[dict[str, Any]]) -> float:
    return sum(int(b["real_tokens"]) for b in batches) / sum(b["input_ids"].numel() for b in batches)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])

    from jevons.framework import distributed
    from jevons.framework.config.compose import compose_config
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.optim import default_optimizer
    from jevons.framework.plugin_manager import PluginManager
    from jevons.plugins.padding_aware_sampling import PaddingAwareSamplingConfig
    from jevons.plugins.padding_aware_sampling.sampler import BucketingBatchSampler
    from jevons.recipes.llm.pretrained import build_pretrained
    from jevons.recipes.llm.sft_data import ChatExamples, PackedExamples
    from jevons.recipes.llm.tiny_llama import write_tiny_llm

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, ["recipe=llama_sft_tiny", "data.num_workers=0"])
    family = manager.family("llm")
    seq_len, budget = config.data.seq_len, ROWS * config.data.seq_len
    examples = ChatExamples.from_folder(family.data_dir(config), "train", config.data)
    assert isinstance(examples, PackedExamples)
    unpacked = examples.examples
    inputs = unpacked.lengths[:, 0] - 1
    aware_sampler = BucketingBatchSampler(inputs, PaddingAwareSamplingConfig(max_tokens=budget, num_buckets=20))
    index_batches = {
        "packed": packed_batches(len(examples), seed=0),
        "padded": padded_batches(inputs, budget, seed=0),
        "padding_aware": [batch for rounds in aware_sampler.rounds(0) for batch in rounds],
    }
    datasets = {"packed": examples, "padded": unpacked, "padding_aware": unpacked}

    def collate(arm: str, indices: list[int]) -> dict[str, Any]:
        dataset = datasets[arm]
        return type(dataset).collate([dataset[i] for i in indices])

    epochs = {arm: [collate(arm, b) for b in batches] for arm, batches in index_batches.items()}
    steps = 12 if args.quick else 60
    rounds, per_round = (3, steps // 3) if args.quick else (6, steps // 5)
    seconds: dict[str, list[float]] = {arm: [] for arm in epochs}
    real: dict[str, list[int]] = {arm: [] for arm in epochs}
    with tempfile.TemporaryDirectory() as scratch, distributed.initialized(ParallelConfig()):
        folder = write_tiny_llm(Path(scratch) / "llama", **MODEL)
        model = build_pretrained(folder, seq_len).float().train()
        objective = family.default_objective(model, config)
        optimizer = default_optimizer(model, config)
        parameters = sum(p.numel() for p in model.parameters())
        for number in range(rounds):
            for arm, batches in epochs.items():
                for batch in batches[number * per_round : (number + 1) * per_round]:
                    start = time.perf_counter()
                    out = objective(model, batch)
                    optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    optimizer.step()
                    if number > 0:  # the first round warms up every arm
                        seconds[arm].append(time.perf_counter() - start)
                        real[arm].append(int(batch["real_tokens"]))
    rates = {arm: sum(real[arm]) / sum(seconds[arm]) for arm in epochs}
    fractions = {arm: real_fraction(batches) for arm, batches in epochs.items()}
    figures = {
        "real_tokens_per_s_ratio_packed_vs_padded": rates["packed"] / rates["padded"],
        "real_tokens_per_s_ratio_packed_vs_padding_aware": rates["packed"] / rates["padding_aware"],
        "real_tokens_per_s_ratio_padding_aware_vs_padded": rates["padding_aware"] / rates["padded"],
        **{f"real_token_fraction_{arm}": fractions[arm] for arm in epochs},
        **{f"real_tokens_per_s_{arm}": rates[arm] for arm in epochs},
    }
    rows = [
        [
            arm,
            len(epochs[arm]),
            f"{np.mean([b['input_ids'].shape[0] for b in epochs[arm]]):.1f}",
            f"{np.mean([b['input_ids'].numel() for b in epochs[arm]]):.0f}",
            f"{fractions[arm]:.3f}",
            f"{rates[arm]:.0f}",
            len(seconds[arm]),
        ]
        for arm in epochs
    ]
    details = {
        "model": {**MODEL, "parameters": parameters, "vocab_size": config.model.vocab_size},
        "examples": len(unpacked),
        "truncated_to_seq_len": unpacked.truncated,
        "input_tokens_percentiles": {str(q): int(np.percentile(inputs, q)) for q in (5, 25, 50, 75, 95, 99)},
        "budget_positions_per_step": budget,
        "tables": {
            "arms (an epoch of batches; timed steps after a warm-up round)": {
                "columns": [
                    "arm",
                    "batches per epoch",
                    "rows per batch",
                    "positions per batch",
                    "real-token fraction",
                    "real tokens/s",
                    "timed steps",
                ],
                "rows": rows,
            }
        },
    }
    write_result("llm_packing", args.quick, figures, TARGETS, details)


if __name__ == "__main__":
    main()
