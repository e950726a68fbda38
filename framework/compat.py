"""Every use of a private API of Lightning, diffusers, pluggy or TensorBoard, in one place.

Each function names the versions it was checked against (the ranges
pyproject.toml admits); ``tests/framework/test_compat.py`` pins each one's
behaviour on the installed versions, so an upgrade that moves a private name
fails there, with this module's name, instead of deep inside a run.

Checked: pytorch-lightning 2.5 to 2.6.6, diffusers 0.42.1, pluggy 1.6.0, tensorboard 2.21.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch


def lightning_should_update_logs(trainer: pl.Trainer) -> bool:
    """Whether loggers record on this training step (every ``log_every_n_steps``).

    ``pl_module.log`` costs about 1 ms on CPU (3% of an llm_tiny step for three
    calls), so per-step metrics are logged only on the steps loggers keep.
    Lightning 2.5-2.6: ``trainer._logger_connector.should_update_logs``; True
    (log every step) where the attribute is gone.
    """
    return bool(getattr(trainer._logger_connector, "should_update_logs", True))


def lightning_logged_step(trainer: pl.Trainer) -> int:
    """The step Lightning gives its own logged metrics, so ours land in the same row.

    Lightning 2.5-2.6: ``fit_loop.epoch_loop._batches_that_stepped`` (it differs
    from ``global_step`` with several optimizers); ``global_step`` where it is gone.
    """
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def wan_qkv_projections(attn: Any, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value of a diffusers ``WanAttention`` for self-attention, ``(B, S, heads * head_dim)``.

    diffusers 0.42: ``transformer_wan._get_qkv_projections`` handles both the
    separate ``to_q``/``to_k``/``to_v`` and the fused ``to_qkv`` projections.
    """
    from diffusers.models.transformers.transformer_wan import _get_qkv_projections

    # Self-attention: keys and values come from the hidden states too (diffusers' None means the same).
    query, key, value = _get_qkv_projections(attn, hidden_states, hidden_states)
    return query, key, value


def wan_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan rotary embedding (``WanAttnProcessor``'s own, interleaved channel pairs) on
    ``x`` ``(B, S, H, D)`` with ``cos``, ``sin`` ``(1, S, 1, D)`` from ``WanRotaryPosEmbed``."""
    import torch

    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(x)


def wan_self_attention_heads(
    attn: Any, hidden_states: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``WanAttnProcessor`` computes before attention itself: the projections, the RMS norms
    of queries and keys, the head split and the rotary embedding; each ``(B, S, H, D)``."""
    query, key, value = wan_qkv_projections(attn, hidden_states)
    query, key = attn.norm_q(query), attn.norm_k(key)
    query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
    if rotary_emb is not None:
        query, key = wan_rotary(query, *rotary_emb), wan_rotary(key, *rotary_emb)
    return query, key, value


def tensorboard_add_summary(writer: Any, summary: Any, step: int) -> None:
    """Write a ready ``Summary`` proto (an animated GIF image: what ``add_video`` writes, without moviepy).

    ``torch.utils.tensorboard.SummaryWriter`` has no public call for a prepared summary;
    ``writer._get_file_writer().add_summary`` is what its own ``add_*`` methods use (torch 2.6 to 2.13).
    """
    writer._get_file_writer().add_summary(summary, step)


def pluggy_subset_caller(manager: pluggy.PluginManager, hook: str, keep: set[str]) -> pluggy.HookCaller:
    """A hook caller of ``hook`` that reaches only the plugins named in ``keep``.

    pluggy's public ``subset_hook_caller`` removes a plugin only if it has an
    attribute named after the hook, so an implementation registered under another
    name (``@hookimpl(specname="configure")``) would still run for a plugin that is
    not enabled. pluggy 1.5-1.6: ``_hooks._SubsetHookCaller(orig, remove_plugins)``
    filters by plugin object whatever the function's name.
    """
    from pluggy._hooks import _SubsetHookCaller

    orig: pluggy.HookCaller = getattr(manager.hook, hook)
    remove = {plugin for name, plugin in manager.list_name_plugin() if name not in keep}
    return _SubsetHookCaller(orig, remove) if remove else orig
