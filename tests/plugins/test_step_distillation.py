"""Data-free step distillation (TDM, BOSS): frozen teacher, where gradients go, no data read, resume, collapse guard."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from jevons.framework import distributed
from jevons.framework.build import build
from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import TrainingStopped, UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.plugins.step_distillation.flow import diffuse, renoise, sample_on_schedule, shifted_schedule, x0_and_noise
from jevons.plugins.step_distillation.guard import within_class_diversity
from jevons.plugins.step_distillation.objectives import bellman_optimal_schedule
from jevons.recipes.diffusion.conditioning import ClassConditioner, Condition

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "benchmarks" / "teachers" / "image-16px"
DISTILL = [
    "recipe=image_distill_tiny",
    f"model.pretrained={TEACHER}",
    "data.num_workers=0",
    "data.batch_size=8",
    "step_distillation.val_samples=8",
    "step_distillation.teacher_steps=8",
    "step_distillation.calibration_samples=8",
    "step_distillation.pool_size=32",
    "sample.fd_samples=0",
    "trainer.progress_bar=false",
    "optimizer.warmup_steps=0",
]


@pytest.fixture(scope="module")
def groups():
    with distributed.initialized(ParallelConfig()):
        yield


def _built(*overrides: str):
    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, [*DISTILL, *overrides])
    torch.manual_seed(0)
    return build(manager, manager.family(config.family), config)


def test_flow_arithmetic_inverts_and_diffuses_to_the_right_marginal() -> None:
    torch.manual_seed(0)
    x0, noise = torch.randn(4, 1, 1, 4, 4), torch.randn(4, 1, 1, 4, 4)
    sigma = torch.tensor([0.1, 0.4, 0.7, 0.95])
    x = renoise(x0, noise, sigma)
    back_x0, back_noise = x0_and_noise(x, sigma, noise - x0)  # the true velocity recovers both
    torch.testing.assert_close(back_x0, x0)
    torch.testing.assert_close(back_noise, noise)
    clean = torch.zeros(20000)
    diffused = diffuse(
        renoise(clean, torch.randn(20000), torch.full((20000,), 0.3)).view(-1, 1),
        torch.full((20000,), 0.3),
        torch.full((20000,), 0.8),
        torch.randn(20000, 1),
    )
    assert diffused.std().item() == pytest.approx(0.8, abs=0.02)  # x_0.8 of a zero image has std 0.8
    assert shifted_schedule(4, 1.0).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_tdm_teacher_frozen_gradients_reach_the_student_and_the_fake_in_its_own_step(groups) -> None:
    built = _built()
    model, objective = built.model, built.objective
    teacher_before = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    fake_before = {k: v.clone() for k, v in objective.fake.state_dict().items()}
    teacher_params = dict(objective.teacher.named_parameters())
    assert all(
        torch.equal(p, teacher_params[name]) for name, p in model.named_parameters()
    )  # the student starts as the teacher
    batch = built.datasets["train"].collate([built.datasets["train"][i] for i in range(8)])
    model.train()
    objective.train()
    out = objective(model, batch)
    out.loss.backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.transformer.blocks.parameters() if p.requires_grad
    )
    assert all(p.grad is None for p in objective.fake.parameters())  # the fake was stepped inside, nothing left over
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert any(not torch.equal(fake_before[k], v) for k, v in objective.fake.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in objective.teacher.state_dict().items())
    student_ids = {id(p) for group in built.optimization.optimizer.param_groups for p in group["params"]}
    assert not student_ids & {id(p) for p in objective.fake.parameters()}
    assert objective.checkpoint_state()["fake_optimizer"]["state"]  # its Adam moments go into checkpoints


def test_boss_schedule_is_bellman_optimal_on_the_grid(groups) -> None:
    from jevons.recipes.diffusion.model import DiffusionModel

    teacher = DiffusionModel.from_pretrained(TEACHER, 4)
    noise = torch.randn(6, 1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = Condition(labels=torch.tensor([[d, 10] for d in range(6)]))
    sigmas, cost = bellman_optimal_schedule(teacher, noise, labels, steps=2, teacher_steps=6, shift=1.0, guidance=2.0)
    grid = shifted_schedule(6, 1.0)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and len(sigmas) == 3
    # brute force over every interior point of the 6-step grid: none is cheaper than the chosen one
    from jevons.plugins.step_distillation.objectives import teacher_points

    points = teacher_points(teacher, noise, labels, grid, 6, 1.0, 2.0)

    def euler_cost(i: int, j: int) -> float:
        from jevons.plugins.step_distillation.flow import guided_velocity

        v = guided_velocity(teacher, points[i], torch.full((6,), float(grid[i])), labels, 2.0)
        return float((points[i] + (grid[j] - grid[i]) * v - points[j]).pow(2).mean())

    with torch.no_grad():
        costs = {m: euler_cost(0, m) + euler_cost(m, 6) for m in range(1, 6)}
    assert cost == pytest.approx(min(costs.values()), rel=1e-5)
    assert float(sigmas[1]) == pytest.approx(float(grid[min(costs, key=costs.get)]))


def test_distillation_never_reads_the_dataset(train, run_root: Path, monkeypatch) -> None:
    from jevons.recipes.diffusion.family import DiffusionFamily

    class Unreadable:
        def __getattr__(self, name):
            raise RuntimeError("the distillation objective read the family's dataset")

    monkeypatch.setattr(DiffusionFamily, "build_dataset", lambda self, config, split: Unreadable())
    result = train([*DISTILL, "trainer.max_steps=3", "trainer.val_check_interval=3", f"run.root={run_root}"])
    assert result.summary["steps"] == 3 and result.summary["val_loss"] is not None


def test_boss_training_lowers_the_distillation_loss_and_guard_reports(groups, train, run_root: Path) -> None:
    settings = ["step_distillation.method=boss", "optimizer.lr=1e-3"]
    untrained = _built(*settings)
    seeds = untrained.datasets["val"]
    untrained.model.eval()
    before = untrained.objective(untrained.model, seeds.collate([seeds[i] for i in range(len(seeds))])).loss.item()
    result = train(
        [*DISTILL, *settings, "trainer.max_steps=30", "trainer.val_check_interval=15", f"run.root={run_root}"]
    )
    with open(result.run_dir / "metrics.csv") as handle:
        val = [float(r["val/loss"]) for r in csv.DictReader(handle) if r.get("val/loss")]
    assert len(val) == 2 and val[-1] < 0.8 * before, (before, val)
    figures = result.summary["plugin_figures"]["step_distillation"]
    assert figures["student_steps"] == 4 and figures["collapse_warnings"] == 0
    assert 0.35 < figures["diversity_ratio_vs_teacher"] < 3.0


def test_tdm_trains_the_fake_score_and_stays_diverse(train, run_root: Path) -> None:
    result = train(
        [
            *DISTILL,
            "trainer.max_steps=20",
            "trainer.val_check_interval=20",
            "trainer.log_every_n_steps=1",
            f"run.root={run_root}",
        ]
    )
    with open(result.run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/fake_score_loss")]
    assert len(rows) == 20 and all(0 < float(r["train/fake_score_loss"]) < 1 for r in rows)
    assert all(float(r["train/loss"]) == float(r["train/loss"]) for r in rows)  # finite: no NaN
    figures = result.summary["plugin_figures"]["step_distillation"]
    assert figures["collapse_warnings"] == 0 and figures["diversity_ratio_vs_teacher"] > 0.35


def _crash_plugin():
    spec = importlib.util.spec_from_file_location(
        "jt_crash_at", REPO / "tests" / "plugins_for_tests" / "jt_crash_at.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("plugins", [["step_distillation"], ["lora", "step_distillation"]], ids=["full", "lora"])
def test_tdm_resumed_mid_distillation_equals_an_uninterrupted_run(train, tmp_path: Path, plugins) -> None:
    """With LoRA the fake score's adapter sits in the student's model: it and its optimizer resume too."""
    common = [
        *DISTILL,
        f"plugins=[{','.join(plugins)}]",
        "lora.rank=4",
        "trainer.max_steps=6",
        "checkpoint.every_n_steps=3",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "step_distillation.collapse_guard=off",
    ]
    straight = train([*common, f"run.dir={tmp_path / 'straight'}"])
    with pytest.raises(RuntimeError, match="injected crash after step 4"):
        train(
            [
                *common,
                f"run.dir={tmp_path / 'crashed'}",
                f"plugins=[{','.join([*plugins, 'jt_crash_at'])}]",
                "jt_crash_at.step=4",
                "jt_crash_at.how=raise",
            ],
            plugins=[("jt_crash_at", _crash_plugin())],
        )
    resumed = train([*common, f"run.dir={tmp_path / 'crashed'}", "checkpoint.resume=auto"])
    assert resumed.summary["resumed_from_step"] == 3

    def losses(run_dir: Path) -> dict[int, float]:
        with open(run_dir / "metrics.csv") as handle:
            return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}

    assert losses(resumed.run_dir) == losses(straight.run_dir) and len(losses(straight.run_dir)) == 6


def test_collapse_guard_stops_a_collapsed_student(train, run_root: Path, monkeypatch) -> None:
    from jevons.plugins.step_distillation import guard as step_distillation_guard

    # A student whose samples ignore the noise (every sample of a class identical) is collapsed by definition.
    monkeypatch.setattr(
        step_distillation_guard,
        "sample_on_schedule",
        lambda model, noise, labels, sigmas, guidance=1.0: (
            sample_on_schedule(model, torch.zeros_like(noise), labels, sigmas, guidance)
            if guidance == 1.0
            else sample_on_schedule(model, noise, labels, sigmas, guidance)
        ),
    )
    with pytest.raises(TrainingStopped, match="within-class sample diversity is 0.000 of the teacher's"):
        train(
            [
                *DISTILL,
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "step_distillation.collapse_guard=stop",
                f"run.root={run_root}",
            ]
        )


def test_diversity_is_zero_for_identical_samples_and_positive_otherwise() -> None:
    labels = torch.tensor([1] * 3 + [2] * 3)  # each sample's class
    assert within_class_diversity(torch.ones(6, 1, 1, 4, 4), labels) == 0.0
    assert within_class_diversity(torch.randn(6, 1, 1, 4, 4), labels) > 1.0


def test_collapse_guard_draws_guard_per_class_samples_of_every_digit() -> None:
    from types import SimpleNamespace

    from jevons.plugins.step_distillation.guard import CollapseGuard

    guard = CollapseGuard("warn", 0.35, 2.0, per_class=2)
    objective = SimpleNamespace(shape=(1, 1, 16, 16), conditioner=ClassConditioner(text_dim=4, tokens=1))
    noise, condition, groups = guard._inputs(objective, torch.device("cpu"))
    assert noise.shape == (20, 1, 1, 16, 16) and torch.equal(groups, condition["labels"][:, 0])
    assert torch.bincount(condition["labels"][:, 0], minlength=10).tolist() == [2] * 10


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.pretrained=null", "needs a dense teacher"),
        ("step_distillation.teacher=/nonexistent", "is not a Jevons diffusion export"),
        ("step_distillation.steps=0", "step_distillation.steps=0"),
        ("step_distillation.guard_per_class=1", "guard_per_class=1 must be at least 2"),
        (
            f"model.pretrained=null step_distillation.teacher={TEACHER} model.num_layers=2",
            "is not the student's architecture",
        ),
    ],
)
def test_bad_distillation_settings_are_refused(train, run_root: Path, override: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        train([*DISTILL, *override.split(), "trainer.max_steps=1", f"run.root={run_root}"])


def test_blade_student_attends_sparsely_while_the_teacher_stays_dense(groups) -> None:
    """plugins=[block_sparse_attention, step_distillation]: BLADE, with no code in either plugin naming the other."""
    from jevons.plugins.block_sparse_attention.processor import BlockSparseWanProcessor

    built = _built(
        "plugins=[block_sparse_attention,step_distillation]",
        "block_sparse_attention.block_size=16",
        "block_sparse_attention.max_density=0.5",
    )
    student = [b.attn1.processor for b in built.model.transformer.blocks]
    teacher = [b.attn1.processor for b in built.objective.teacher.transformer.blocks]
    assert all(isinstance(p, BlockSparseWanProcessor) for p in student)
    assert not any(isinstance(p, BlockSparseWanProcessor) for p in teacher)
    batch = built.datasets["train"].collate([built.datasets["train"][i] for i in range(4)])
    built.model.train()
    built.objective(built.model, batch).loss.backward()
    import ast

    for plugin, other in (
        ("block_sparse_attention", "step_distillation"),
        ("step_distillation", "block_sparse_attention"),
    ):
        for path in (REPO / "plugins" / plugin).glob("*.py"):
            imported = [
                getattr(node, "module", None) or ",".join(a.name for a in node.names)
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom))
            ]
            assert not [m for m in imported if other in m], f"{path.name} imports {other}"


def _held_bytes(built) -> int:
    """Bytes of every distinct parameter tensor the student, the objective and its teacher hold."""
    tensors = [*built.model.parameters(), *built.objective.parameters(), *built.objective.teacher.parameters()]
    return sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in tensors}.values())


def test_with_lora_teacher_and_fake_score_share_the_students_frozen_base(groups) -> None:
    """plugins=[lora, step_distillation]: the teacher is the base with adapters off, the fake score the base
    with its own adapter; the base exists once (three copies without LoRA)."""
    from jevons.plugins.lora.inject import adapter_parameters
    from jevons.plugins.step_distillation.shared import SharedBaseView

    full = _built()
    shared = _built("plugins=[lora,step_distillation]", "lora.rank=4")
    base = sum(p.numel() * p.element_size() for p in full.model.parameters())
    adapters = {name: adapter_parameters(shared.model, name) for name in ("default", "fake")}
    adapter_bytes = sum(p.numel() * p.element_size() for group in adapters.values() for p in group.values())
    assert _held_bytes(full) == 3 * base
    assert _held_bytes(shared) == base + adapter_bytes
    assert len(adapters["default"]) == len(adapters["fake"]) > 0
    teacher, fake = shared.objective.teacher, shared.objective.fake
    assert isinstance(teacher, SharedBaseView) and isinstance(fake, SharedBaseView)
    student_ids = {id(p) for group in shared.optimization.optimizer.param_groups for p in group["params"]}
    assert student_ids == {id(p) for p in adapters["default"].values()}  # the fake's adapter: its own optimizer

    batch = shared.datasets["train"].collate([shared.datasets["train"][i] for i in range(8)])
    noise, condition = shared.objective.inputs(batch, torch.device("cpu"))
    sigma = torch.full((len(noise),), 0.7)
    with torch.no_grad():
        loaded = full.objective.teacher(noise, sigma, condition)
        torch.testing.assert_close(teacher(noise, sigma, condition), loaded, atol=1e-6, rtol=0)
        torch.testing.assert_close(fake(noise, sigma, condition), loaded, atol=1e-6, rtol=0)  # B = 0: the teacher

    frozen = {n: p.clone() for n, p in shared.model.named_parameters() if not p.requires_grad}
    fake_before = {n: p.clone() for n, p in adapters["fake"].items()}
    shared.model.train()
    shared.objective(shared.model, batch).loss.backward()
    assert all(p.grad is not None for p in adapters["default"].values())
    assert all(p.grad.abs().sum() > 0 for n, p in adapters["default"].items() if ".lora_B." in n)  # A's: 0 at B = 0
    assert all(p.grad is None for p in adapters["fake"].values())  # stepped inside the objective
    assert all(p.requires_grad for group in adapters.values() for p in group.values())
    assert any(not torch.equal(fake_before[n], p) for n, p in adapters["fake"].items())
    assert all(torch.equal(frozen[n], p) for n, p in shared.model.named_parameters() if n in frozen)
    with torch.no_grad():
        torch.testing.assert_close(teacher(noise, sigma, condition), loaded, atol=1e-6, rtol=0)  # still the base


def test_blade_with_lora_switches_sparsity_per_call_on_the_shared_modules(groups) -> None:
    """BLADE's recipe, plugins=[lora, block_sparse_attention, step_distillation]: one set of attention
    modules, sparse for the student, dense for the teacher and fake score."""
    from jevons.plugins.block_sparse_attention.processor import BlockSparseWanProcessor

    built = _built(
        "plugins=[lora,block_sparse_attention,step_distillation]",
        "lora.rank=4",
        "block_sparse_attention.block_size=16",
        "block_sparse_attention.max_density=0.5",
    )
    processors = [b.attn1.processor for b in built.model.transformer.blocks]
    assert all(isinstance(p, BlockSparseWanProcessor) for p in processors)
    dense = _built()
    batch = built.datasets["train"].collate([built.datasets["train"][i] for i in range(4)])
    noise, condition = built.objective.inputs(batch, torch.device("cpu"))
    sigma = torch.full((len(noise),), 0.7)
    with torch.no_grad():
        calls = [p.stats.calls for p in processors]
        teacher = built.objective.teacher(noise, sigma, condition)
        built.objective.fake(noise, sigma, condition)
        assert [p.stats.calls for p in processors] == calls, "teacher and fake score attended densely"
        torch.testing.assert_close(teacher, dense.objective.teacher(noise, sigma, condition), atol=1e-6, rtol=0)
        student = built.model(noise, sigma, condition)
        assert [p.stats.calls for p in processors] == [c + 1 for c in calls], "the student attended sparsely"
        assert (student - teacher).abs().max() > 1e-4  # sparse attention computes something else
    built.model.train()
    built.objective(built.model, batch).loss.backward()


def test_checkpointed_blocks_rerun_as_the_network_that_ran_them(groups) -> None:
    """Activation checkpointing on a shared base: the fake score's backward reruns its blocks after its
    call returned, so the rerun must see the fake's adapter and dense attention, not the student's."""
    from jevons.plugins.lora.inject import adapter_parameters

    plugins = ["plugins=[lora,block_sparse_attention,step_distillation]", "lora.rank=4"]
    sparse = ["block_sparse_attention.block_size=16", "block_sparse_attention.max_density=0.5"]
    after = {}
    for setting in ("none", "full"):
        built = _built(*plugins, *sparse, f"trainer.activation_checkpointing={setting}")
        batch = built.datasets["train"].collate([built.datasets["train"][i] for i in range(4)])
        built.model.train()
        torch.manual_seed(1)
        built.objective(built.model, batch).loss.backward()
        fake = {n: p.detach().clone() for n, p in adapter_parameters(built.model, "fake").items()}
        grads = {n: p.grad.clone() for n, p in adapter_parameters(built.model, "default").items()}
        after[setting] = (fake, grads)
    for plain, checkpointed in zip(after["none"], after["full"], strict=True):
        assert plain.keys() == checkpointed.keys() and plain
        for name, value in plain.items():
            torch.testing.assert_close(checkpointed[name], value, atol=1e-6, rtol=0, msg=name)
