"""Every GPU-only check and timing, in one script for the minutes a GPU is lent (docs/architecture.md, "Benchmarks").

    python benchmarks/gpu_check.py [--only PART]   (PART: one of PARTS below)

Parts:

* ``newton_schulz``: the Triton kernel against the PyTorch reference (max
  error) and both timed, bf16, on Muon's shapes (llm_125m's matrices, an
  expert stack). The Triton kernel earns a dispatch priority above the
  reference only if it wins here.
* ``block_sparse_attention``: the Triton forward kernel and FlexAttention
  against the reference (max error), and timed against each other and dense
  SDPA at S = 8192, 12.5% and 6.25% density, blocks of 64 and 128, bf16;
  FlexAttention's forward+backward (the CUDA training path) against dense.
  The Triton kernel earns a priority above FlexAttention only if it wins.
* ``packed_gqa_attention``: the llm decoder's masked grouped-query attention
  (packed rows: Llama-3.2-1B's 32 query / 8 KV heads of 64, 4 x 2048
  positions, bf16), forward+backward time and peak memory with the K/V heads
  repeated (the CUDA path of ``grouped_attention``) against ``enable_gqa``
  with the mask, which CUDA's SDPA can run only in its math kernel; max error.
* ``train_llm``, ``train_diffusion``: a short real ``train`` of each family's
  tiny recipe on CUDA (bf16-mixed), losses finite and falling.
* ``megatron``: Megatron-Core's CUDA-only paths the CPU cannot run here:
  its fused tensor-parallel layers on CUDA (one process), and whether
  ``sequence_parallel`` layer construction works; pipeline, context and expert
  parallelism need several GPUs and are refused by Jevons' families, which do
  not implement them.
* ``fsdp_tensor_parallel``: a real ``train`` of llm_tiny with FSDP2 x Megatron
  TP on NCCL (``parallel.tensor=2 parallel.shard=2``, bf16-mixed), losses
  finite and falling. It needs 4 GPUs (NCCL refuses two ranks on one device)
  and says so and skips otherwise.

On a machine without CUDA every part reports "skipped: no CUDA" and the script
exits 0, so it can be run anywhere; CI never runs it. Results go to
``benchmarks/results/gpu_check.json``. Must finish in under 4 minutes on one
H200. The device image has torch, Lightning, pluggy, einops and Triton but
not diffusers, megatron-core, webdataset or hydra: carry them as wheels (see
``/work/.library/device/README.md``; ``pip download --no-deps --only-binary=:all:
--python-version 3.12 ... diffusers==0.42.1 megatron-core==0.16.1 hydra-core
omegaconf antlr4-python3-runtime webdataset braceexpand accelerate safetensors``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, commit, machine

PARTS = (
    "newton_schulz",
    "block_sparse_attention",
    "packed_gqa_attention",
    "train_llm",
    "train_diffusion",
    "megatron",
    "fsdp_tensor_parallel",
)


def _time(fn, repeat: int = 20) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def newton_schulz() -> dict:
    import torch

    from jevons.kernels.newton_schulz import newton_schulz_reference
    from jevons.kernels.newton_schulz_triton import newton_schulz_triton

    shapes = {
        "768x768": (768, 768),
        "2304x768": (2304, 768),
        "768x3072": (768, 3072),
        "experts 8x1024x4096": (8, 1024, 4096),
    }
    out = {}
    for name, shape in shapes.items():
        G = torch.randn(*shape, device="cuda")
        reference = newton_schulz_reference(G, compute_dtype=torch.bfloat16)
        triton = newton_schulz_triton(G, compute_dtype=torch.bfloat16)
        t_ref = _time(lambda: newton_schulz_reference(G, compute_dtype=torch.bfloat16))
        t_tri = _time(lambda: newton_schulz_triton(G, compute_dtype=torch.bfloat16))
        out[name] = {
            "max_abs_error": float((reference.float() - triton.float()).abs().max()),
            "reference_ms": 1000 * t_ref,
            "triton_ms": 1000 * t_tri,
            "speedup": t_ref / t_tri,
        }
    return out


def block_sparse_attention() -> dict:
    import torch
    import torch.nn.functional as F

    from jevons.kernels.block_sparse_attention import block_sparse_attention_flex, block_sparse_attention_reference
    from jevons.kernels.block_sparse_attention_triton import block_sparse_attention_forward_triton
    from jevons.plugins.block_sparse_attention.mask import adaptive_block_mask

    out = {}
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 12, 8192, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for block in (64, 128):
        for density in (0.125, 0.0625):
            mask = adaptive_block_mask(q, k, block, 1.0, density, density)
            reference = block_sparse_attention_reference(
                q[:, :2].float(), k[:, :2].float(), v[:, :2].float(), mask[:, :2], block
            )
            triton = block_sparse_attention_forward_triton(q, k, v, mask, block)
            flex = block_sparse_attention_flex(q, k, v, mask, block)
            t_dense = _time(lambda: F.scaled_dot_product_attention(q, k, v))
            t_triton = _time(lambda: block_sparse_attention_forward_triton(q, k, v, mask, block))
            t_flex = _time(lambda: block_sparse_attention_flex(q, k, v, mask, block))
            grads = [x.clone().requires_grad_() for x in (q, k, v)]
            t_flex_train = _time(lambda: block_sparse_attention_flex(*grads, mask, block).sum().backward(), repeat=5)
            t_dense_train = _time(lambda: F.scaled_dot_product_attention(*grads).sum().backward(), repeat=5)
            out[f"s8192_d{density:g}_b{block}"] = {
                "triton_max_abs_error": float((triton[:, :2].float() - reference).abs().max()),
                "flex_max_abs_error": float((flex[:, :2].float() - reference).abs().max()),
                "dense_fwd_ms": 1000 * t_dense,
                "triton_fwd_ms": 1000 * t_triton,
                "flex_fwd_ms": 1000 * t_flex,
                "triton_fwd_ratio_vs_flex": t_flex / t_triton,
                "flex_fwdbwd_speedup_vs_sdpa": t_dense_train / t_flex_train,
            }
    return out


def packed_gqa_attention() -> dict:
    import torch

    from jevons.recipes.llm.model import grouped_attention, segment_mask

    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim = 4, 32, 8, 2048, 64
    q = torch.randn(batch, heads, length, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (
        torch.randn(batch, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in "kv"
    )
    segments = torch.repeat_interleave(torch.arange(8, device="cuda"), length // 8).expand(batch, length)
    mask = segment_mask(segments)
    result = {}
    outputs = {}
    for name, expand in (("repeated_kv", True), ("enable_gqa", False)):

        def step(expand: bool = expand) -> None:
            grouped_attention(q, k, v, mask, expand_kv=expand).float().sum().backward()

        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result[f"{name}_ms"] = _time(step, repeat=5) * 1e3
        result[f"{name}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        with torch.no_grad():
            outputs[name] = grouped_attention(q, k, v, mask, expand_kv=expand).float()
    result["max_error"] = (outputs["repeated_kv"] - outputs["enable_gqa"]).abs().max().item()
    return result


def _train(overrides: list[str]) -> dict:
    import csv

    with tempfile.TemporaryDirectory() as runs:
        command = [
            sys.executable,
            "-m",
            "jevons.framework.cli.train",
            *overrides,
            "trainer.accelerator=gpu",
            "trainer.precision=bf16-mixed",
            "trainer.log_every_n_steps=1",
            "trainer.progress_bar=false",
            f"run.dir={runs}/run",
        ]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            return {"ok": False, "error": result.stderr[-2000:]}
        with open(Path(runs) / "run" / "metrics.csv") as handle:
            losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    return {
        "ok": not any(math.isnan(loss) for loss in losses) and losses[-1] < losses[0],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "seconds": seconds,
    }


def train_llm() -> dict:
    return _train(["recipe=llm_tiny", "trainer.max_steps=60", "trainer.limit_val_batches=2"])


def train_diffusion() -> dict:
    return _train(["recipe=image_tiny", "trainer.max_steps=60", "trainer.limit_val_batches=1", "sample.fd_samples=0"])


def megatron() -> dict:
    import os

    import torch
    import torch.distributed as dist
    from megatron.core import ModelParallelConfig, parallel_state, tensor_parallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29555")
    dist.init_process_group("nccl", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    config = ModelParallelConfig(tensor_model_parallel_size=1, params_dtype=torch.bfloat16)
    layer = tensor_parallel.ColumnParallelLinear(
        1024, 4096, config=config, init_method=torch.nn.init.xavier_normal_, bias=True, gather_output=True
    ).cuda()
    x = torch.randn(512, 4, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y, _ = layer(x)
    y.float().square().mean().backward()
    result = {"column_parallel_cuda_forward_backward": bool(torch.isfinite(x.grad).all())}
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    return result


def fsdp_tensor_parallel() -> dict:
    """One real `train` with FSDP2 x Megatron TP on NCCL: parallel.tensor=2 x shard=2 over 4 GPUs."""
    import torch

    if torch.cuda.device_count() < 4:
        return {
            "skipped": f"needs 4 GPUs (TP=2 x shard=2; NCCL refuses two ranks on one device), "
            f"found {torch.cuda.device_count()}"
        }
    return _train(
        [
            "recipe=llm_tiny",
            "launcher.nproc=4",
            "parallel.tensor=2",
            "parallel.shard=2",
            "trainer.max_steps=40",
            "trainer.limit_val_batches=2",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=PARTS)
    args = parser.parse_args()
    import torch

    parts = [args.only] if args.only else list(PARTS)
    results: dict = {"machine": machine(), "commit": commit()}
    for part in parts:
        if not torch.cuda.is_available():
            results[part] = "skipped: no CUDA"
        else:
            started = time.perf_counter()
            results[part] = globals()[part]()
            results[part + "_seconds"] = time.perf_counter() - started
        print(part, json.dumps(results[part], indent=1), flush=True)
    if torch.cuda.is_available():
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
