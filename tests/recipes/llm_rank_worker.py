"""One rank of a tensor-parallel or FSDP-sharded load of a Hugging Face folder, run by `run_ranks` from test_llm_pretrained.py.

``python llm_rank_worker.py logits FOLDER IDS OUT``: rank 0 saves the gathered logits of the token ids
in ``IDS`` to ``OUT``. ``python llm_rank_worker.py memory FOLDER OUT``: each rank writes how much its
anonymous resident memory grew while loading into ``OUT.rank<r>.json``; ``shard-memory`` the same with
the ranks as FSDP shards (``parallel.shard``): the build's deferred load after ``fully_shard``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from jevons.framework import distributed
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.sharding import local_tensor, shard_model
from jevons.framework.tensor_parallel import gather_last_dim, tensor_parallel_rank
from jevons.framework.weights import WeightFiles, deferred_loading, take_deferred
from jevons.recipes.llm.hf_config import read_pretrained_config
from jevons.recipes.llm.hf_weights import load_hf_weights
from jevons.recipes.llm.model import DecoderLM
from jevons.recipes.llm.pretrained import build_pretrained, pretrained_shape


def anonymous_rss() -> int:
    """Bytes of this process's anonymous resident memory (heap, tensors). The checkpoint's pages that
    safetensors maps are file-backed page cache, shared and reclaimable, so they are not counted."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def main() -> None:
    task, folder = sys.argv[1], Path(sys.argv[2])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if task == "shard-memory":
        with distributed.initialized(ParallelConfig(shard=world)), deferred_loading():
            model = build_pretrained(folder)  # on the meta device: its plan waits for the shards
            before = anonymous_rss()
            deferred = take_deferred(model)
            assert deferred is not None
            shard_model(model, [f"layers.{i}" for i in range(len(model.blocks))], 1, world, "32-true")
            deferred.load(model, "cpu")
            grown = anonymous_rss() - before
            local = sum(local_tensor(p).numel() * p.element_size() for p in model.parameters())
            report = {"grown": grown, "local_parameter_bytes": local}
            Path(f"{sys.argv[3]}.rank{torch.distributed.get_rank()}.json").write_text(json.dumps(report))
        return
    with distributed.initialized(ParallelConfig(tensor=world)):
        if task == "logits":
            ids = torch.load(sys.argv[3], weights_only=True)
            model = build_pretrained(folder).eval()
            with torch.no_grad():
                logits = gather_last_dim(model(ids))
            if tensor_parallel_rank() == 0:
                torch.save(logits, sys.argv[4])
        elif task == "memory":
            pretrained = read_pretrained_config(folder)
            files = WeightFiles.find(folder)
            with torch.device("meta"):
                model = DecoderLM(pretrained_shape(pretrained))
            before = anonymous_rss()
            load_hf_weights(model, files, str(folder))
            grown = anonymous_rss() - before
            local = sum(p.numel() * p.element_size() for p in model.parameters())
            report = {"grown": grown, "local_parameter_bytes": local}
            Path(f"{sys.argv[3]}.rank{tensor_parallel_rank()}.json").write_text(json.dumps(report))
        else:
            raise SystemExit(f"unknown task {task}")


if __name__ == "__main__":
    main()
