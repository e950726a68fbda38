"""The modality-aware mixture-of-experts feed-forward layer (MoMa; Lin et al., 2024).

Experts are split into groups, one per modality (e.g. 4 text + 4 image). A
token only ever reaches its own modality's group — the split is by the
modality id in the forward context, not learned — and inside a group a
learned router chooses:

* **expert choice** (Zhou et al., 2022, "Mixture-of-Experts with Expert Choice
  Routing"; MoMa's choice): router probabilities are a softmax over the
  group's experts per token; each expert takes the ``capacity`` tokens of the
  group with the highest probability for it, ``capacity = ceil(capacity_factor
  * tokens / experts)``; a token's output is the probability-weighted sum of
  the experts that took it (none: the residual passes it through). Balanced by
  construction, no balancing loss.
* **token choice** (Switch / GShard style): each token picks its ``top_k``
  experts; an expert keeps at most ``ceil(capacity_factor * top_k * tokens /
  experts)`` of them, the most probable first (Megatron's "probs" drop
  policy); a load-balancing loss (Fedus et al., 2022) keeps experts used.

Expert choice looks at every token of the batch to choose, including tokens
later in the same sequence, which autoregressive inference does not have.
Two causal answers, token by token, for evaluation and generation:

* ``threshold`` (default): each expert's selection threshold in training —
  the router probability of the last token it took — is tracked as a moving
  average; at inference a token goes to every expert of its group whose
  probability reaches that expert's threshold. It reproduces the training
  selection up to batch-to-batch variation of the threshold, and needs no
  extra network; measured here, its validation loss equals batch-level
  expert choice's (benchmarks/modality_experts.py).
* ``auxiliary`` (MoMa's answer): an auxiliary router per group (a linear
  layer on the detached input, trained with binary cross-entropy to predict
  whether each expert chose the token); a token goes to every expert whose
  auxiliary logit is positive. Its mistakes cost more here (see the benchmark).

``inference_routing=expert_choice`` keeps batch-level expert choice in
evaluation (not causal: a reference only).

Expert weights are 3-D stacks ``(experts, in, out)`` (``gate``, ``up``,
``down`` of a SwiGLU per expert), which the ``muon`` plugin orthogonalises
expert by expert. Padding tokens (``context.real`` False) are not routed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jevons.framework.activation_checkpointing import recomputing

EXPERT_CHOICE, TOKEN_CHOICE = "expert_choice", "token_choice"


@dataclass(frozen=True)
class Assignments:
    """Which expert (local to a group) processes which token (row of the group's input), with what weight."""

    expert: torch.Tensor  # (A,)
    token: torch.Tensor  # (A,)
    weight: torch.Tensor  # (A,)


class ModalityExperts(nn.Module):
    """SwiGLU experts in modality groups; ``forward(x, context)`` with a ``TokenContext``.

    :param experts_per_group: experts of each modality's group, in modality id
        order (``[4, 4]``: text and image); one entry puts every modality in one
        mixed group (a standard, modality-blind MoE).
    """

    # Buffers, registered in __init__ (declared here: nn.Module's attribute lookup is untyped).
    thresholds: torch.Tensor
    expert_load: torch.Tensor
    counts: torch.Tensor

    def __init__(
        self,
        hidden_size: int,
        ffn_hidden_size: int,
        experts_per_group: list[int],
        routing: str = EXPERT_CHOICE,
        capacity_factor: float = 1.0,
        top_k: int = 1,
        load_balancing_coeff: float = 0.01,
        inference_routing: str = "threshold",
        init_std: float = 0.02,
        out_init_std: float | None = None,
    ) -> None:
        super().__init__()
        if routing not in (EXPERT_CHOICE, TOKEN_CHOICE):
            raise ValueError(f"routing={routing!r}: expected {EXPERT_CHOICE!r} or {TOKEN_CHOICE!r}")
        self.experts_per_group = list(experts_per_group)
        self.group_names = (
            ["mixed"] if len(experts_per_group) == 1 else [f"group{g}" for g in range(len(experts_per_group))]
        )
        """Named after the modalities at the first forward."""
        self.offsets = [sum(experts_per_group[:g]) for g in range(len(experts_per_group))]
        self.routing = routing
        self.capacity_factor = capacity_factor
        self.top_k = top_k
        self.load_balancing_coeff = load_balancing_coeff
        self.inference_routing = inference_routing
        total = sum(experts_per_group)
        self.gate = nn.Parameter(torch.randn(total, hidden_size, ffn_hidden_size) * init_std)
        self.up = nn.Parameter(torch.randn(total, hidden_size, ffn_hidden_size) * init_std)
        self.down = nn.Parameter(torch.randn(total, ffn_hidden_size, hidden_size) * (out_init_std or init_std))
        routers = [nn.Linear(hidden_size, n, bias=False) for n in experts_per_group]
        for router in routers:
            nn.init.normal_(router.weight, std=init_std)
        self.routers = nn.ModuleList(routers)
        self.aux_routers = (
            nn.ModuleList(nn.Linear(hidden_size, n) for n in experts_per_group) if routing == EXPERT_CHOICE else None
        )
        # Each expert's selection threshold in training (the probability of the last token it took), averaged.
        self.register_buffer("thresholds", torch.full((total,), -1.0))
        # Counters since the last reset: tokens routed and expert assignments, in training and in evaluation.
        self.register_buffer("expert_load", torch.zeros(total, dtype=torch.long), persistent=False)
        self.register_buffer(
            "counts", torch.zeros(4, dtype=torch.long), persistent=False
        )  # train tokens, assignments; eval tokens, assignments

    @torch.no_grad()
    def copy_dense(self, gate_up: torch.Tensor, down: torch.Tensor) -> None:
        """Make every expert the dense SwiGLU with fused ``gate_up`` ``(2F, C)`` (rows unit by unit,
        gate then up) and ``down`` ``(C, F)`` weights (sparse upcycling, Komatsuzaki et al., 2023)."""
        self.gate.copy_(gate_up[0::2].t().expand_as(self.gate))
        self.up.copy_(gate_up[1::2].t().expand_as(self.up))
        self.down.copy_(down.t().expand_as(self.down))

    def forward(self, x: torch.Tensor, context: Any) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        modality = context.modality.reshape(-1)
        real = context.real.reshape(-1) if context.real is not None else torch.ones_like(modality, dtype=torch.bool)
        group_of_token = self._groups(modality, context.modalities)
        out = torch.zeros_like(flat)
        dropped = flat.new_zeros(())
        routed = 0
        for group in range(len(self.experts_per_group)):
            rows = torch.nonzero((group_of_token == group) & real).squeeze(1)
            if rows.numel() == 0:
                continue
            tokens = flat[rows]
            assignments = self._route(group, tokens, context)
            expert_out = self._experts(group, tokens, assignments)
            out.index_add_(0, rows, expert_out.to(out.dtype))
            covered = torch.zeros(len(rows), dtype=torch.bool, device=x.device)
            covered[assignments.token] = True
            dropped = dropped + (~covered).sum()
            routed += len(rows)
            self._count(group, len(rows), assignments)
        if routed:
            context.add_stat("moe_tokens_without_expert_fraction", dropped / routed)
        return out.reshape_as(x)

    def _groups(self, modality: torch.Tensor, modalities: tuple[str, ...]) -> torch.Tensor:
        """Each token's group: its modality, or 0 for everyone with a single mixed group."""
        if len(self.experts_per_group) == 1:
            return torch.zeros_like(modality)
        if len(modalities) != len(self.experts_per_group):
            raise ValueError(
                f"{len(self.experts_per_group)} expert groups ({self.experts_per_group}) for {len(modalities)} modalities "
                f"{modalities}: give one expert count per modality, or a single count for one mixed group"
            )
        self.group_names = list(modalities)
        return modality

    def _route(self, group: int, tokens: torch.Tensor, context: Any) -> Assignments:
        experts = self.experts_per_group[group]
        probs = torch.softmax(self.routers[group](tokens).float(), dim=-1)  # (N, E)
        if self.routing == TOKEN_CHOICE:
            return self._token_choice(probs, context)
        if self.training or self.inference_routing == EXPERT_CHOICE:
            capacity = min(len(tokens), math.ceil(self.capacity_factor * len(tokens) / experts))
            weight, token = probs.t().topk(capacity, dim=1)  # (E, capacity): each expert's chosen tokens
            expert = torch.arange(experts, device=tokens.device)[:, None].expand_as(token)
            if self.training:
                self._train_auxiliary_router(group, tokens, token, context)
                self._track_thresholds(group, weight[:, -1].detach())
            return Assignments(expert.reshape(-1), token.reshape(-1), weight.reshape(-1))
        if self.inference_routing == "threshold":
            offset = self.offsets[group]
            chosen = probs >= self.thresholds[offset : offset + experts]  # (N, E): causal, token by token
        else:
            chosen = self._aux_routers()[group](tokens) > 0
        token, expert = torch.nonzero(chosen, as_tuple=True)
        return Assignments(expert, token, probs[token, expert])

    @torch.no_grad()
    def _track_thresholds(self, group: int, lowest_taken: torch.Tensor, momentum: float = 0.99) -> None:
        view = self.thresholds[self.offsets[group] : self.offsets[group] + len(lowest_taken)]
        view.copy_(torch.where(view < 0, lowest_taken, momentum * view + (1 - momentum) * lowest_taken))

    def _train_auxiliary_router(self, group: int, tokens: torch.Tensor, chosen: torch.Tensor, context: Any) -> None:
        target = torch.zeros(len(tokens), self.experts_per_group[group], device=tokens.device)
        target.scatter_(0, chosen.t(), 1.0)  # chosen is (E, capacity): token indices per expert
        logits = self._aux_routers()[group](tokens.detach()).float()
        context.add_loss("aux_router_loss", F.binary_cross_entropy_with_logits(logits, target))
        context.add_stat("aux_router_accuracy", ((logits > 0) == (target > 0)).float().mean())

    def _aux_routers(self) -> nn.ModuleList:
        """The auxiliary routers, which expert choice has (token choice routes without them)."""
        if self.aux_routers is None:
            raise ValueError(f"routing={self.routing!r} has no auxiliary routers; they belong to expert choice")
        return self.aux_routers

    def _token_choice(self, probs: torch.Tensor, context: Any) -> Assignments:
        tokens, experts = probs.shape
        k = min(self.top_k, experts)
        weight, expert = probs.topk(k, dim=-1)  # (N, k)
        token = torch.arange(tokens, device=probs.device)[:, None].expand_as(expert).reshape(-1)
        expert, weight = expert.reshape(-1), weight.reshape(-1)
        if self.training:
            routed_fraction = torch.bincount(expert, minlength=experts).float() / (tokens * k)
            balance = experts * (routed_fraction * probs.mean(0)).sum()
            context.add_loss("load_balancing_loss", self.load_balancing_coeff * balance)
            capacity = math.ceil(self.capacity_factor * k * tokens / experts)
            keep = torch.zeros_like(expert, dtype=torch.bool)
            for e in range(experts):
                mine = torch.nonzero(expert == e).squeeze(1)
                keep[mine[weight[mine].topk(min(capacity, len(mine))).indices]] = True
            token, expert, weight = token[keep], expert[keep], weight[keep]
        return Assignments(expert, token, weight)

    def _experts(self, group: int, tokens: torch.Tensor, assignments: Assignments) -> torch.Tensor:
        """Sum over each token's assignments of ``weight * expert(token)``: ``(N, C)``."""
        out = torch.zeros_like(tokens)
        offset = self.offsets[group]
        for e in range(self.experts_per_group[group]):
            mine = torch.nonzero(assignments.expert == e).squeeze(1)
            if mine.numel() == 0:
                continue
            rows = assignments.token[mine]
            h = tokens[rows]
            y = (F.silu(h @ self.gate[offset + e]) * (h @ self.up[offset + e])) @ self.down[offset + e]
            out.index_add_(0, rows, y * assignments.weight[mine, None].to(y.dtype))
        return out

    @torch.no_grad()
    def _count(self, group: int, tokens: int, assignments: Assignments) -> None:
        if recomputing():  # a checkpointed block's rerun for backward: counted once
            return
        phase = 0 if self.training else 2
        if self.training:  # utilisation is a training figure
            load = torch.bincount(assignments.expert, minlength=self.experts_per_group[group])
            self.expert_load[self.offsets[group] : self.offsets[group] + len(load)] += load.to(self.expert_load.device)
        self.counts[phase] += tokens
        self.counts[phase + 1] += len(assignments.expert)
