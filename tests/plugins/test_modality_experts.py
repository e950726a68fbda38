"""The modality-experts layer: routing stays in modality groups, capacity holds, dense equivalence, gradients, causality."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jevons.framework import distributed
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import UsageError
from jevons.plugins.modality_experts.layer import ModalityExperts
from jevons.recipes.llm.shape import TransformerShapeConfig
from jevons.recipes.mixed_modal.model import DenseFFN, TokenContext

HIDDEN, FFN = 16, 24


@pytest.fixture(scope="module")
def groups():
    with distributed.initialized(ParallelConfig()):
        yield


def layer(experts: list[int], **options) -> ModalityExperts:
    torch.manual_seed(0)
    return ModalityExperts(HIDDEN, FFN, experts, init_std=0.2, **options)


def context(modality: torch.Tensor, real: torch.Tensor | None = None) -> TokenContext:
    return TokenContext(modality, real, ("text", "image"))


@settings(max_examples=25, deadline=None)
@given(
    layout=st.lists(st.lists(st.integers(0, 1), min_size=6, max_size=6), min_size=1, max_size=3),
    routing=st.sampled_from(["expert_choice", "token_choice"]),
    seed=st.integers(0, 2**16),
)
def test_routing_never_crosses_modality_groups(layout: list[list[int]], routing: str, seed: int) -> None:
    """Text outputs ignore image experts and image tokens; image outputs ignore text experts and text tokens."""
    modality = torch.tensor(layout)
    moe = layer([2, 3], routing=routing, capacity_factor=1.5, top_k=2).train()
    x = torch.randn(*modality.shape, HIDDEN, generator=torch.Generator().manual_seed(seed))
    before = moe(x, context(modality))
    experts_of = {0: slice(0, 2), 1: slice(2, 5)}
    for group in (0, 1):
        other = 1 - group
        changed_moe = copy.deepcopy(moe)
        with torch.no_grad():  # the other group's experts and router, and the other modality's tokens
            for p in (changed_moe.gate, changed_moe.up, changed_moe.down):
                p[experts_of[other]].mul_(-3.0)
            changed_moe.routers[other].weight.mul_(5.0)
        changed_x = x + 4.0 * (modality == other)[..., None] * torch.randn_like(x)
        after = changed_moe(changed_x, context(modality))
        torch.testing.assert_close(after[modality == group], before[modality == group])


def test_expert_choice_capacity_is_exact_and_padding_is_not_routed() -> None:
    modality = torch.tensor([[0] * 10 + [1] * 20, [0] * 6 + [1] * 24])
    real = torch.ones_like(modality, dtype=torch.bool)
    real[1, -4:] = False  # 4 padded image positions
    moe = layer([4, 4], capacity_factor=1.25).train()
    moe(torch.randn(2, 30, HIDDEN), context(modality, real))
    text, image = 16, 40  # real tokens per group
    assert moe.expert_load[:4].tolist() == [math.ceil(1.25 * text / 4)] * 4
    assert moe.expert_load[4:].tolist() == [math.ceil(1.25 * image / 4)] * 4
    assert moe.counts[0].item() == text + image


def test_token_choice_keeps_each_expert_within_capacity() -> None:
    modality = torch.zeros(4, 32, dtype=torch.long)
    moe = layer([4], routing="token_choice", top_k=2, capacity_factor=0.5).train()
    with torch.no_grad():
        moe.routers[0].weight[0].fill_(1.0)  # a router that prefers expert 0 for most tokens
    x = torch.randn(4, 32, HIDDEN).abs()
    tokens_context = context(modality)
    moe(x, tokens_context)
    capacity = math.ceil(0.5 * 2 * 128 / 4)
    assert moe.expert_load.max().item() <= capacity
    assert moe.expert_load[0].item() == capacity  # the overloaded expert kept exactly its capacity
    assert "load_balancing_loss" in tokens_context.aux_losses


@pytest.mark.parametrize(
    "experts, routing", [([1, 1], "expert_choice"), ([1], "expert_choice"), ([1, 1], "token_choice")]
)
def test_one_expert_per_group_at_capacity_one_equals_the_dense_ffn(groups, experts: list[int], routing: str) -> None:
    shape = TransformerShapeConfig(
        hidden_size=HIDDEN, num_layers=2, num_heads=2, ffn_hidden_size=FFN, max_seq_len=8
    ).resolve(32)
    torch.manual_seed(1)
    dense = DenseFFN(shape)
    moe = layer(experts, routing=routing, capacity_factor=1.0).train()
    moe.copy_dense(dense.gate_up.weight, dense.down.weight)
    x = torch.randn(3, 8, HIDDEN)
    modality = torch.randint(0, 2, (3, 8))
    torch.testing.assert_close(moe(x, context(modality)), dense(x), rtol=1e-5, atol=1e-6)


def test_gradients_reach_only_the_experts_that_chose_the_token() -> None:
    moe = layer([4], capacity_factor=0.25).train()  # each expert takes 2 of 32 tokens
    x = torch.randn(1, 32, HIDDEN)
    out = moe(x, context(torch.zeros(1, 32, dtype=torch.long)))
    chosen = [e for e in range(4) if _expert_took(moe, x, e, token=int(out.norm(dim=-1).argmax()))]
    assert chosen, "the token with the largest output was processed by some expert"
    out[0, int(out.norm(dim=-1).argmax())].sum().backward()
    for e in range(4):
        reached = moe.down.grad[e].abs().sum().item() > 0
        assert reached == (e in chosen), f"expert {e}: gradient {reached}, chose the token {e in chosen}"


def _expert_took(moe: ModalityExperts, x: torch.Tensor, expert: int, token: int) -> bool:
    probs = torch.softmax(moe.routers[0](x[0]).float(), dim=-1)
    capacity = math.ceil(moe.capacity_factor * 32 / 4)
    return token in probs[:, expert].topk(capacity).indices.tolist()


@pytest.mark.parametrize("routing", ["threshold", "auxiliary"])
def test_inference_routing_is_causal(routing: str) -> None:
    moe = layer([2, 2], inference_routing=routing)
    x = torch.randn(1, 12, HIDDEN)
    modality = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]])
    moe.train()(torch.randn(4, 12, HIDDEN), context(modality.expand(4, -1)))  # sets the thresholds
    moe.eval()
    later_changed = x.clone()
    later_changed[:, 6:] = torch.randn(1, 6, HIDDEN)
    with torch.no_grad():
        torch.testing.assert_close(moe(later_changed, context(modality))[:, :6], moe(x, context(modality))[:, :6])


def test_threshold_routing_reproduces_the_expert_choice_of_the_batch_it_was_set_on() -> None:
    moe = layer([3, 2], capacity_factor=1.0)
    x = torch.randn(2, 16, HIDDEN)
    modality = torch.randint(0, 2, (2, 16))
    trained = moe.train()(x, context(modality))  # the first batch sets each threshold to its last chosen probability
    with torch.no_grad():
        torch.testing.assert_close(moe.eval()(x, context(modality)), trained.detach())
    assert (moe.thresholds > 0).all()


def test_auxiliary_router_learns_the_expert_choice() -> None:
    moe = layer([4]).train()
    optimizer = torch.optim.Adam(moe.aux_routers.parameters(), lr=0.05)
    x = torch.randn(8, 16, HIDDEN)
    accuracies = []
    for _ in range(60):
        tokens_context = context(torch.zeros(8, 16, dtype=torch.long))
        moe(x, tokens_context)
        optimizer.zero_grad()
        tokens_context.aux_losses["aux_router_loss"].backward()
        optimizer.step()
        accuracies.append(tokens_context.stats["aux_router_accuracy"][0].item())
    assert accuracies[-1] > 0.9 > accuracies[0]
    assert all(p.grad is None for p in (moe.gate, moe.up, moe.down))  # the auxiliary loss never trains experts


def test_expert_stacks_are_orthogonalised_per_expert_by_muon() -> None:
    from jevons.plugins.muon.split import split_parameters

    muon, _ = split_parameters(torch.nn.ModuleList([layer([2, 2])]))
    views = {a.name: a.view for a in muon}
    assert views["0.gate"] == views["0.up"] == views["0.down"] == "stack"


def test_group_count_must_match_the_modalities() -> None:
    moe = layer([2, 2, 2])
    with pytest.raises(ValueError, match="3 expert groups .* for 2 modalities"):
        moe(torch.randn(1, 4, HIDDEN), context(torch.zeros(1, 4, dtype=torch.long)))


def test_tensor_parallel_is_refused(train, run_root) -> None:
    with pytest.raises(UsageError, match="parallel.tensor=2"):
        train(["recipe=mixed_modal_moma_tiny", "parallel.tensor=2", f"run.root={run_root}"])
