"""The muon plugin: the parameter split by role and shape, the update itself, resume, and bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from jevons.framework import distributed
from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.kernels.newton_schulz import newton_schulz_reference
from jevons.plugins.muon.optimizer import FLATTEN, MATRIX, STACK, Muon, parameter_groups
from jevons.plugins.muon.split import split_parameters
from jevons.recipes.llm.model import DecoderLM
from jevons.recipes.llm.shape import TransformerShapeConfig


@pytest.fixture(scope="module")
def groups():
    with distributed.initialized(ParallelConfig()):
        yield


def _roles(model: torch.nn.Module, **kwargs) -> dict[str, str]:
    muon, adamw = split_parameters(model, **kwargs)
    return {a.name: ("muon:" if a in muon else "adamw:") + a.role for a in [*muon, *adamw]}


def _llm(tie: bool) -> DecoderLM:
    shape = TransformerShapeConfig(
        hidden_size=32, num_layers=2, num_heads=2, ffn_hidden_size=64, max_seq_len=16, tie_embeddings=tie
    ).resolve(64)
    return DecoderLM(shape)


def test_split_of_the_llm_model(groups) -> None:
    roles = _roles(_llm(tie=False))
    assert roles["embed.weight"] == "adamw:embedding"
    assert roles["head.weight"] == "adamw:output head"
    assert roles["norm.weight"] == roles["layers.0.attn_norm.weight"] == "adamw:gain/bias"
    for matrix in ("attn.q", "attn.k", "attn.v", "attn.proj", "ffn.gate_up", "ffn.down"):
        assert roles[f"layers.1.{matrix}.weight"] == "muon:hidden matrix"
    assert len(roles) == 2 + 1 + 2 * 8


def test_split_with_tied_embeddings_keeps_the_last_block_on_muon(groups) -> None:
    roles = _roles(_llm(tie=True))
    assert roles["embed.weight"] == "adamw:embedding" and "head.weight" not in roles
    assert roles["layers.1.ffn.down.weight"] == "muon:hidden matrix"


class NamedAnyhow(torch.nn.Module):
    """An LM whose embedding and head carry other names, and whose FFN happens to be vocabulary-wide."""

    def __init__(self, embedding_name: str) -> None:
        super().__init__()
        setattr(self, embedding_name, torch.nn.Embedding(50, 16))
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(16, 50), torch.nn.Linear(50, 16)])
        self.ln_f = torch.nn.LayerNorm(16)
        self.lm_out = torch.nn.Linear(16, 50, bias=False)


@pytest.mark.parametrize("embedding_name", ["wte", "tok_embeddings", "embed"])
def test_roles_do_not_depend_on_names(embedding_name: str) -> None:
    roles = _roles(NamedAnyhow(embedding_name))
    assert roles[f"{embedding_name}.weight"] == "adamw:embedding"
    assert roles["lm_out.weight"] == "adamw:output head"
    assert roles["blocks.0.weight"] == "muon:hidden matrix"  # 50 wide like the vocabulary, but inside a block
    assert roles["blocks.0.bias"] == roles["ln_f.weight"] == roles["ln_f.bias"] == "adamw:gain/bias"


class Experts(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3)
        self.conv = torch.nn.Conv2d(8, 8, 3)
        self.experts = torch.nn.Parameter(torch.randn(4, 12, 8))  # (experts, rows, cols)
        self.out = torch.nn.Linear(8, 2)


def test_split_of_a_model_without_embeddings_with_convs_and_an_expert_stack() -> None:
    muon, adamw = split_parameters(Experts())
    views = {a.name: a.view for a in muon}
    assert views == {"conv.weight": FLATTEN, "experts": STACK}
    roles = {a.name: a.role for a in adamw}
    assert roles["stem.weight"] == "input stem" and roles["out.weight"] == "output head"


def _groups(params_and_views, decayed=(), undecayed=(), lr=0.1, decay=0.0, rule="keller", nesterov=True) -> list:
    """``parameter_groups`` with the muon section's defaults, one rate and one decay for both halves."""
    return parameter_groups(
        params_and_views,
        decayed,
        undecayed,
        lr=lr,
        muon_lr=lr,
        weight_decay=decay,
        muon_weight_decay=decay,
        momentum=0.95,
        nesterov=nesterov,
        ns_steps=5,
        rule=rule,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def _muon(params_and_views, lr=0.1, decay=0.0, rule="keller", nesterov=True) -> Muon:
    groups = _groups(params_and_views, lr=lr, decay=decay, rule=rule, nesterov=nesterov)
    return Muon(
        groups, newton_schulz=lambda g, steps: newton_schulz_reference(g, steps=steps, compute_dtype=torch.float32)
    )


def test_update_matches_the_written_out_rule() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 8))
    start = w.detach().clone()
    optimizer = _muon([(w, MATRIX)], lr=0.1, decay=0.5, rule="moonlight")
    grads = [torch.randn(24, 8), torch.randn(24, 8)]
    momentum = torch.zeros(24, 8)
    expected = start.clone()
    for g in grads:
        w.grad = g.clone()
        optimizer.step()
        momentum = 0.95 * momentum + 0.05 * g
        nesterov = g + 0.95 * (momentum - g)
        expected = expected * (1 - 0.1 * 0.5) - 0.1 * 0.2 * math.sqrt(24) * newton_schulz_reference(
            nesterov, compute_dtype=torch.float32
        )
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_expert_stacks_and_convs_are_orthogonalised_per_matrix() -> None:
    torch.manual_seed(1)
    stack = torch.nn.Parameter(torch.randn(3, 16, 8))
    separate = [torch.nn.Parameter(stack.detach()[i].clone()) for i in range(3)]
    conv = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
    flat = torch.nn.Parameter(conv.detach().reshape(8, 36).clone())
    grad = torch.randn(3, 16, 8)
    conv_grad = torch.randn(8, 4, 3, 3)
    stack.grad, conv.grad, flat.grad = grad.clone(), conv_grad.clone(), conv_grad.reshape(8, 36).clone()
    for p, g in zip(separate, grad):
        p.grad = g.clone()
    _muon([(stack, STACK), (conv, FLATTEN)]).step()
    _muon([(p, MATRIX) for p in separate] + [(flat, MATRIX)]).step()
    assert torch.allclose(stack.detach(), torch.stack([p.detach() for p in separate]), atol=1e-6)
    assert torch.allclose(conv.detach().reshape(8, 36), flat.detach(), atol=1e-6)


def test_fused_projections_are_orthogonalised_per_part() -> None:
    torch.manual_seed(4)
    heads, head_dim, hidden = 2, 4, 8
    q, k, v = (torch.randn(heads * head_dim, hidden) for _ in range(3))
    grads = [torch.randn(heads * head_dim, hidden) for _ in range(3)]

    def interleave(parts):  # (heads, q|k|v, head_dim) rows, as the llm model lays out its fused QKV
        return torch.stack([p.reshape(heads, head_dim, hidden) for p in parts], dim=1).reshape(-1, hidden)

    fused = torch.nn.Parameter(interleave([q, k, v]))
    fused.fused_rows = (3, head_dim)
    fused.grad = interleave(grads)
    separate = [torch.nn.Parameter(t.clone()) for t in (q, k, v)]
    for p, g in zip(separate, grads):
        p.grad = g.clone()
    _muon([(fused, MATRIX)]).step()
    _muon([(p, MATRIX) for p in separate]).step()
    assert torch.allclose(fused.detach(), interleave([p.detach() for p in separate]), atol=1e-6)


def test_matches_torch_optim_muon_on_matrices() -> None:
    torch.manual_seed(2)
    ours = [torch.nn.Parameter(torch.randn(32, 16)), torch.nn.Parameter(torch.randn(16, 48))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    optimizer = _muon([(p, MATRIX) for p in ours], lr=0.02, rule="keller")
    reference = torch.optim.Muon(
        theirs, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True, adjust_lr_fn="original"
    )
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer.step()
        reference.step()
    for p, q in zip(ours, theirs):  # torch runs Newton-Schulz in bfloat16, ours in float32 here
        assert torch.allclose(p, q, atol=3e-3), (p - q).abs().max()


def test_adamw_half_is_torch_adamw_exactly() -> None:
    torch.manual_seed(3)
    ours = [torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(5, 3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    groups = _groups([], [ours[1]], [ours[0]], lr=0.01, decay=0.1)
    optimizer = Muon(groups, newton_schulz=newton_schulz_reference)
    reference = torch.optim.AdamW(
        [{"params": [theirs[1]], "weight_decay": 0.1}, {"params": [theirs[0]], "weight_decay": 0.0}],
        lr=0.01,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    for _ in range(4):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)


def test_muon_refuses_a_vector() -> None:
    with pytest.raises(ValueError, match="Muon needs matrices"):
        _muon([(torch.nn.Parameter(torch.randn(5)), MATRIX)])


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager.load(autoload=False)


def test_bad_muon_config_is_refused_at_config_time(manager: PluginManager) -> None:
    with pytest.raises(UsageError, match=r"muon.lr=-0.1 must be positive"):
        compose_config(manager, ["recipe=llm_tiny_muon", "muon.lr=-0.1"])
    with pytest.raises(UsageError, match=r"Unknown key 'muon.lrr'. Did you mean 'muon.lr'"):
        compose_config(manager, ["recipe=llm_tiny_muon", "+muon.lrr=0.1"])
    with pytest.raises(UsageError, match=r"optimizer.lr=0.0 is not valid"):
        compose_config(manager, ["recipe=llm_tiny_muon", "optimizer.lr=0.0"])
    config = compose_config(manager, ["recipe=llm_tiny_muon"])
    assert config.plugins == ["muon"] and config.muon.lr_scale == "moonlight"


def test_routing_a_vector_to_muon_is_refused_before_training(train, tiny, run_root) -> None:
    with pytest.raises(
        UsageError, match=r"muon.include routes 'norm.weight' .* to Muon, but Muon orthogonalises matrices only"
    ):
        train(tiny("plugins=[muon]", "muon.include=[norm.*]"))
    assert not run_root.exists()


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def test_a_muon_run_prints_its_split_and_resumes_exactly(train, tiny, crasher, tmp_path: Path, capsys) -> None:
    common = tiny(
        "trainer.max_steps=6", "checkpoint.every_n_steps=3", "optimizer.warmup_steps=0", "trainer.limit_val_batches=0"
    )
    straight = train([*common, "plugins=[muon]", f"run.dir={tmp_path / 'straight'}"])
    err = capsys.readouterr().err
    assert "Muon: 12 tensors" in err  # two blocks of q, k, v, proj, gate_up, down
    assert "layers.0.attn.q.weight" in err and "embed.weight" in err and "embedding" in err
    with pytest.raises(RuntimeError, match="injected crash at step 4"):
        train([*common, "plugins=[muon,crasher]", f"run.dir={tmp_path / 'resumed'}"], plugins=[crasher(4)])
    resumed = train([*common, "plugins=[muon]", f"run.dir={tmp_path / 'resumed'}", "checkpoint.resume=auto"])
    assert resumed.summary["resumed_from_step"] == 3
    assert _losses(resumed.run_dir) == _losses(straight.run_dir)
