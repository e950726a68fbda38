"""GPU-only checks live in benchmarks/gpu_check.py; without CUDA each part is skipped cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs for real")
def test_gpu_check_skips_every_part_cleanly_without_cuda(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for part in (
        "newton_schulz",
        "block_sparse_attention",
        "packed_gqa_attention",
        "train_llm",
        "train_diffusion",
        "megatron",
    ):
        assert f'{part} "skipped: no CUDA"' in result.stdout
