"""Block-sparse attention against dense SDPA and FlexAttention on video-like inputs, forward and forward+backward.

Inputs (pinned): one clip of latent tokens on a (frames, 16, 16) grid —
S = 4096 (16 frames) and 8192 (32 frames) — 4 heads of dimension 64. Each
token's features are smooth functions of its (frame, row, column) position
(random Fourier features) plus noise, projected to queries and keys, so
attention is mostly local as in video; tokens are in the plugin's tile order.
Masks come from the plugin's adaptive builder with ``min_density =
max_density = d`` for d in 6.25%, 12.5%, 25%, blocks of 64 and 128 tokens.

Per (S, d, block), timed in interleaved rounds (median of ``rounds``):

* dense SDPA forward, and forward+backward;
* ours (the ``gather`` path, the CPU training path), mask build included;
* compiled FlexAttention forward with the same mask (no CPU backward), mask
  build and ``BlockMask`` construction included.

Kernel dispatch is asked, per cell, which path it picks for sampling
(forward) and for training (forward+backward) on these inputs, measuring
afresh (no cache file; FlexAttention's compiled path included). Each pick's
*regret* is its time in the table over the fastest path dispatch could have
picked (sampling: ``gather``, ``flex``, ``reference``; training: ``gather``,
``reference``), all timed in the same rounds; ``dispatch_regret_max`` is the
largest over every row and both modes.

Also: the relative error of the block-sparse output against dense attention
(what the sparsity approximates away on these inputs), and the memory autograd
saves for backward (distinct tensors, the plugin's memory probe measure)
relative to dense SDPA's. Figures: ``fwd_ratio_vs_flex_s8192_d0.125``
(Flex forward time / ours, block 64), ``fwdbwd_speedup_vs_sdpa_s8192_d0.0625``
(dense forward+backward time / ours, block 64), and every cell of the table
as ``<kind>_s<S>_d<d>_b<block>``.

    python benchmarks/block_sparse_attention.py [--quick]
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from common import median, parse_args, write_result

TARGETS = {
    "fwd_ratio_vs_flex_s8192_d0.125": ">=1.0",
    "fwdbwd_speedup_vs_sdpa_s8192_d0.0625": ">=4.0",
    "dispatch_regret_max": "<=1.05",
}
HEADS, DIM = 4, 64


def video_like(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """``q, k, v`` of shape (1, HEADS, S, DIM) in row-major (frame, row, column) order, and the grid.

    Queries and keys are random Fourier features of the token's position (Rahimi and Recht, 2007), so
    ``q . k`` approximates a Gaussian kernel of the distance between the two tokens (length scale
    2 tokens in space and time) scaled to logits of about 0-10: attention falls off with distance as in
    video, with per-head rotations and noise. Values are smooth random features of position too.
    """
    generator = torch.Generator().manual_seed(seed)
    grid = (frames, 16, 16)
    f, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in grid), indexing="ij")
    position = torch.stack([f.flatten(), h.flatten(), w.flatten()], dim=1)  # (S, 3), in tokens

    def fourier(scale: float) -> torch.Tensor:
        frequencies = torch.randn(3, DIM, generator=generator) / scale
        phase = torch.rand(DIM, generator=generator) * 2 * math.pi
        return math.sqrt(2.0 / DIM) * torch.cos(position @ frequencies + phase)  # (S, DIM)

    features = fourier(2.0) * math.sqrt(10.0 * math.sqrt(DIM))  # q . k / sqrt(DIM) ~ 10 * kernel
    heads = []
    for _ in range(HEADS):
        rotation, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator))
        noise = lambda: 0.1 * torch.randn(len(position), DIM, generator=generator)  # noqa: E731
        heads.append((features @ rotation + noise(), features @ rotation + noise(), fourier(4.0) * 4.0))
    q, k, v = (torch.stack([head[i] for head in heads])[None].contiguous() for i in range(3))
    return q, k, v, grid


def saved_bytes(run) -> int:
    """Bytes of the distinct tensors autograd saves for backward during ``run()`` (the probe's CPU measure)."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run().sum().backward()
    return sum(saved.values())


def picked(args: tuple, training: bool) -> str:
    """The path kernel dispatch picks for a call with ``args`` (measuring it now if this shape class is new)."""
    from jevons.kernels import dispatch

    with torch.set_grad_enabled(training):
        dispatch.select("block_sparse_attention", args)
    key = dispatch.shape_class_key("block_sparse_attention", args, training)
    return next(d.choice for d in dispatch.decisions() if d.key == key)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from jevons.framework.plugin_manager import PluginManager
    from jevons.kernels import dispatch
    from jevons.kernels.block_sparse_attention import (
        block_sparse_attention_flex,
        block_sparse_attention_gather,
        block_sparse_attention_reference,
    )
    from jevons.plugins.block_sparse_attention.mask import adaptive_block_mask, tile_for_block, tile_order

    PluginManager.load(autoload=False)  # registers the kernels
    dispatch.force({})
    dispatch.use_files(None, None, resume=False)
    dispatch.configure(measure_compiled=True)

    sizes = (16,) if args.quick else (16, 32)  # frames: S = 4096, 8192
    densities = (0.125,) if args.quick else (0.0625, 0.125, 0.25)
    blocks = (64,) if args.quick else (64, 128)
    rounds = 2 if args.quick else 7  # 3 rounds of 15 ms calls misranked paths 7% apart by 30% (measured)
    figures: dict[str, float] = {}
    rows = []
    regrets: list[float] = []
    dispatch_record: dict[str, dict] = {}
    for frames in sizes:
        q, k, v, grid = video_like(frames)
        length = q.shape[2]
        dense_out = F.scaled_dot_product_attention(q, k, v)
        for block in blocks:
            order = tile_order(grid, tile_for_block(grid, block))
            qo, ko, vo = (x[:, :, order].contiguous() for x in (q, k, v))
            for density in densities:
                mask_of = lambda: adaptive_block_mask(qo, ko, block, 1.0, density, density)  # noqa: E731
                mask = mask_of()
                sparse_out = block_sparse_attention_gather(qo, ko, vo, mask, block)
                error = float((sparse_out - dense_out[:, :, order]).norm() / dense_out.norm())
                with torch.no_grad():  # compile for this shape and grad mode, untimed
                    block_sparse_attention_flex(qo, ko, vo, mask, block)

                def timed_fwdbwd(op) -> float:
                    inputs = [x.clone().requires_grad_() for x in (qo, ko, vo)]
                    started = time.perf_counter()
                    op(*inputs).sum().backward()
                    return time.perf_counter() - started

                def timed(op) -> float:
                    started = time.perf_counter()
                    with torch.no_grad():
                        op()
                    return time.perf_counter() - started

                # Dispatch keys by shape, not density: each cell is a fresh decision on its own mask.
                dispatch.force({})
                trainable = tuple(x.clone().requires_grad_() for x in (qo, ko, vo))
                picked_fwd = picked((qo, ko, vo, mask, block), training=False)
                picked_fwdbwd = picked((*trainable, mask, block), training=True)
                cell = f"s{length}_d{density:g}_b{block}"
                dispatch_record[cell] = {d.key.split("|")[1]: d.entry for d in dispatch.decisions()}

                arms = {
                    "dense_fwd": lambda: timed(lambda: F.scaled_dot_product_attention(qo, ko, vo)),
                    "ours_fwd": lambda: timed(lambda: block_sparse_attention_gather(qo, ko, vo, mask_of(), block)),
                    "flex_fwd": lambda: timed(lambda: block_sparse_attention_flex(qo, ko, vo, mask_of(), block)),
                    "reference_fwd": lambda: timed(
                        lambda: block_sparse_attention_reference(qo, ko, vo, mask_of(), block)
                    ),
                    "dense_fwdbwd": lambda: timed_fwdbwd(F.scaled_dot_product_attention),
                    "ours_fwdbwd": lambda: timed_fwdbwd(
                        lambda a, b, c: block_sparse_attention_gather(a, b, c, mask_of(), block)
                    ),
                    "reference_fwdbwd": lambda: timed_fwdbwd(
                        lambda a, b, c: block_sparse_attention_reference(a, b, c, mask_of(), block)
                    ),
                }
                seconds = {name: [] for name in arms}
                for _ in range(rounds):
                    for name, arm in arms.items():
                        seconds[name].append(arm())
                t = {name: median(values) for name, values in seconds.items()}
                path_fwd = {"gather": t["ours_fwd"], "flex": t["flex_fwd"], "reference": t["reference_fwd"]}
                path_fwdbwd = {"gather": t["ours_fwdbwd"], "reference": t["reference_fwdbwd"]}
                regret_fwd = path_fwd[picked_fwd] / min(path_fwd.values())
                regret_fwdbwd = path_fwdbwd[picked_fwdbwd] / min(path_fwdbwd.values())
                memory_dense = saved_bytes(
                    lambda: F.scaled_dot_product_attention(*(x.clone().requires_grad_() for x in (qo, ko, vo)))
                )
                memory_ours = saved_bytes(
                    lambda: block_sparse_attention_gather(
                        *(x.clone().requires_grad_() for x in (qo, ko, vo)), mask, block
                    )
                )
                mask_ms = 1000 * median([timed(mask_of) for _ in range(3)])
                values = {
                    "fwd_speedup_vs_sdpa": t["dense_fwd"] / t["ours_fwd"],
                    "fwdbwd_speedup_vs_sdpa": t["dense_fwdbwd"] / t["ours_fwdbwd"],
                    "fwd_ratio_vs_flex": t["flex_fwd"] / t["ours_fwd"],
                    "flex_fwd_speedup_vs_sdpa": t["dense_fwd"] / t["flex_fwd"],
                    "relative_error_vs_dense": error,
                    "saved_memory_ratio_vs_sdpa": memory_ours / memory_dense,
                    "mask_build_ms": mask_ms,
                    "dispatch_regret_fwd": regret_fwd,
                    "dispatch_regret_fwdbwd": regret_fwdbwd,
                }
                figures.update({f"{name}_{cell}": value for name, value in values.items()})
                rows.append(
                    [
                        length,
                        f"{density:.2%}",
                        block,
                        f"{values['fwd_speedup_vs_sdpa']:.2f}",
                        f"{values['fwdbwd_speedup_vs_sdpa']:.2f}",
                        f"{values['flex_fwd_speedup_vs_sdpa']:.2f}",
                        f"{values['fwd_ratio_vs_flex']:.2f}",
                        f"{error:.3f}",
                        f"{values['saved_memory_ratio_vs_sdpa']:.2f}",
                        f"{mask_ms:.1f}",
                        f"{picked_fwd} ({regret_fwd:.2f})",
                        f"{picked_fwdbwd} ({regret_fwdbwd:.2f})",
                    ]
                )
                regrets += [regret_fwd, regret_fwdbwd]
                print(cell, {name: round(value, 3) for name, value in values.items()}, flush=True)
    headline = {}
    for figure, cell in (("fwd_ratio_vs_flex", "s8192_d0.125_b64"), ("fwdbwd_speedup_vs_sdpa", "s8192_d0.0625_b64")):
        key = f"{figure}_{cell}"
        if key in figures:
            headline[f"{figure}_{cell.rsplit('_b', 1)[0]}"] = figures[key]
    headline["dispatch_regret_max"] = max(regrets)
    details = {
        "heads": HEADS,
        "head_dim": DIM,
        "rounds": rounds,
        "dispatch": dispatch_record,
        "tables": {
            "Block-sparse attention on video-like inputs": {
                "columns": [
                    "S",
                    "density",
                    "block",
                    "fwd speedup vs SDPA",
                    "fwd+bwd speedup vs SDPA",
                    "Flex fwd speedup vs SDPA",
                    "Flex fwd time / ours",
                    "relative error vs dense",
                    "saved memory vs SDPA",
                    "mask build ms",
                    "picked to sample (regret)",
                    "picked to train (regret)",
                ],
                "rows": rows,
            }
        },
    }
    write_result("block_sparse_attention", args.quick, {**headline, **figures}, TARGETS, details)


if __name__ == "__main__":
    main()
