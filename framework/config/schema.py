"""Typed schemas of the framework's config sections, with their defaults explained.

A run's config is one :class:`Config`: these framework sections, plus the
family's sections (``model``, an extended ``data``), declared by the family's
``config_class`` (a subclass of :class:`Config`), and one section per enabled
plugin, added per run by :func:`jevons.framework.config.compose.run_schema`.
A new feature is new config here, never a new CLI flag (docs/architecture.md, "Conventions").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeVar


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    """Optimizer steps to train for (not micro-batches)."""
    val_check_interval: int = 200
    """Run validation (loss + the family's samples and metrics) every this many steps."""
    limit_val_batches: int = 16
    """Validation batches per validation; 0 turns validation off."""
    log_every_n_steps: int = 10
    """How often training metrics reach metrics.csv and TensorBoard."""
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    """Lightning precision, on CPU and GPU alike. ``bf16-mixed``: fp32 master weights and optimizer
    state, matmuls in bf16 under autocast; ``bf16-true``: weights, gradients and optimizer state in
    bf16. Every family trains at all three, at TP=1 and TP=2 (tests/framework/test_precision.py:
    losses within 3e-3 of fp32's at bf16-mixed, 5e-2 at bf16-true, relative). Whether bf16 is faster
    depends on the chip's matmul units, so it is measured (``benchmarks/precision_throughput.py``):
    on a 2-core Xeon with AMX, bf16 matmul peaked at 6.6x fp32's rate (2,036 against 310 GFLOP/s),
    a 768-wide 4-layer llm trained 2.15x faster at bf16-mixed and bf16-true, and llm_tiny (128 wide)
    8% and 4% slower: its matmuls are too small for the casts to pay."""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    """Clip the global gradient norm to this; null turns clipping off."""
    num_threads: int | None = None
    """torch intra-op threads per process; null keeps torch's default (all cores)."""
    progress_bar: bool = True
    nonfinite: Literal["skip", "stop"] = "skip"
    """A non-finite loss or gradient on any rank: ``skip`` the step on every rank (weights and
    optimizer state unchanged, counted in the summary), or ``stop`` with a message naming the step."""
    max_consecutive_nonfinite: int = 5
    """With ``skip``: stop after this many non-finite steps in a row (training has diverged)."""
    activation_checkpointing: Literal["none", "full"] | int = "none"
    """Recompute blocks' activations in backward instead of keeping them (Chen et al., 2016): ``full``
    for every block (the blocks holding the family's attention and FFN modules), ``N`` for every N-th
    from the first. Costs about one more forward per step; losses and gradients are unchanged."""
    compile: bool = False
    """``torch.compile`` each transformer block in place (the blocks holding the family's attention and
    FFN modules), after plugins changed the model: repeated blocks share one compiled graph."""

    def __post_init__(self) -> None:
        require(self.max_steps > 0, "trainer.max_steps", self.max_steps, "a positive integer")
        require(
            self.max_consecutive_nonfinite > 0,
            "trainer.max_consecutive_nonfinite",
            self.max_consecutive_nonfinite,
            "a positive integer",
        )
        require(
            self.val_check_interval > 0, "trainer.val_check_interval", self.val_check_interval, "a positive integer"
        )
        require(self.limit_val_batches >= 0, "trainer.limit_val_batches", self.limit_val_batches, "0 or more")
        require(self.log_every_n_steps > 0, "trainer.log_every_n_steps", self.log_every_n_steps, "a positive integer")
        require(
            self.accumulate_grad_batches > 0,
            "trainer.accumulate_grad_batches",
            self.accumulate_grad_batches,
            "a positive integer",
        )
        if isinstance(self.activation_checkpointing, int):
            require(
                self.activation_checkpointing > 0,
                "trainer.activation_checkpointing",
                self.activation_checkpointing,
                "none, full, or a positive integer N (every N-th block)",
            )
        if self.num_threads is not None:
            require(self.num_threads > 0, "trainer.num_threads", self.num_threads, "a positive integer or null")


@dataclass
class OptimizerConfig:
    """The default optimizer (AdamW) and the learning-rate schedule every optimizer gets."""

    lr: float = 1e-3
    weight_decay: float = 0.1
    """Decoupled weight decay; norms, gains and biases are never decayed."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over this many steps."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up, down to ``lr * min_lr_ratio`` at ``trainer.max_steps``."""
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        require(self.lr > 0, "optimizer.lr", self.lr, "a positive number")
        require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "0 or more")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optimizer.betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        require(self.warmup_steps >= 0, "optimizer.warmup_steps", self.warmup_steps, "0 or more")
        require(0 <= self.min_lr_ratio <= 1, "optimizer.min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")


@dataclass
class DataConfig:
    """Where the data comes from and how it is batched. Families extend this section."""

    source: str | list[str] = ""
    """A built-in data source (``jevons data`` lists them) or a folder of shard indexes (``train.json``,
    ``val.json``: what ``jevons data import`` writes); or several, blended: ``[DIR_A:0.7, DIR_B:0.3]``
    (weights; without them, by size; docs/data.md)."""
    root: str | None = None
    """Cache for built-in data; null means ``$JEVONS_DATA`` or ``~/.cache/jevons``."""
    batch_size: int = 32
    """Samples per batch per data-parallel rank."""
    val_batch_size: int | None = None
    """Defaults to ``batch_size``."""
    num_workers: int = 1
    """DataLoader worker processes that decode samples."""
    corrupt: Literal["skip", "strict"] = "skip"
    """A sample that does not decode, a truncated shard, a duplicate key: ``skip`` names and
    counts it (run summary) and goes on; ``strict`` stops at the first, naming shard and key."""
    max_corrupt_fraction: float = 0.01
    """With ``skip``: stop once more than this fraction of a split is unreadable."""

    def __post_init__(self) -> None:
        require(self.batch_size > 0, "data.batch_size", self.batch_size, "a positive integer")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "0 or more")
        require(
            0 <= self.max_corrupt_fraction <= 1,
            "data.max_corrupt_fraction",
            self.max_corrupt_fraction,
            "a number in [0, 1]",
        )


@dataclass
class CheckpointConfig:
    every_n_steps: int | None = None
    """Save every this many steps; null saves only at the end of training."""
    keep_last: int = 2
    """Complete checkpoints kept; older ones are deleted after a newer one is complete."""
    resume: str = "never"
    """``never``; ``auto`` (newest complete checkpoint of ``run.dir``, or of this
    recipe's newest run); or the path of a checkpoint directory."""
    save_final: bool = True
    """Save a checkpoint when training ends."""

    def __post_init__(self) -> None:
        if self.every_n_steps is not None:
            require(
                self.every_n_steps > 0, "checkpoint.every_n_steps", self.every_n_steps, "a positive integer or null"
            )
        require(self.keep_last > 0, "checkpoint.keep_last", self.keep_last, "a positive integer")


@dataclass
class ParallelConfig:
    """Megatron-Core parallel sizes; data parallelism is the world size divided by the rest."""

    tensor: int = 1
    pipeline: int = 1
    context: int = 1
    expert: int = 1
    sequence: bool = False
    """Megatron sequence parallelism (needs tensor > 1 and CUDA)."""
    shard: int = 1
    """FSDP2 (``fully_shard``) over this many data-parallel ranks: parameters, gradients and optimizer
    state are split between them, each transformer block gathered for its forward and backward
    (docs/parallelism.md). 1: every data-parallel rank holds the whole model (DDP)."""
    replicate: int | None = None
    """With ``shard > 1``, the data-parallel ranks are ``replicate x shard``: HSDP, replicas of a sharded
    model, gradients all-reduced between replicas. None: whatever the world leaves after shard."""
    ulysses: int = 1
    """Ulysses sequence parallelism: each sample's tokens split over this many ranks, self-attention
    computed whole by head shards after an all-to-all (docs/parallelism.md). Works on CPU."""

    def __post_init__(self) -> None:
        for name in ("tensor", "pipeline", "context", "expert", "shard", "ulysses"):
            require(getattr(self, name) >= 1, f"parallel.{name}", getattr(self, name), "a positive integer")
        if self.replicate is not None:
            require(self.replicate >= 1, "parallel.replicate", self.replicate, "a positive integer or null")


@dataclass
class LauncherConfig:
    """How the run is started; ``launcher=local`` or ``launcher=slurm`` picks the schema."""

    name: str = "local"
    nproc: int = 1
    """Processes on this machine (``launcher=local launcher.nproc=N``)."""

    def __post_init__(self) -> None:
        require(self.nproc >= 1, "launcher.nproc", self.nproc, "a positive integer")

    @property
    def world_size(self) -> int:
        """Processes in the run, all launchers alike."""
        return self.nproc


@dataclass
class RunConfig:
    root: str = "runs"
    """Run directories are created as ``<root>/<recipe>/<timestamp>/``."""
    dir: str | None = None
    """An explicit run directory (resuming into it, or a Slurm job's)."""


@dataclass
class Config:
    """The framework's sections. A family's ``config_class`` subclasses it with the family's sections;
    per run, a subclass of that adds the enabled plugins' sections and the launcher's."""

    family: str = ""
    """The recipe's family; every recipe YAML sets it."""
    recipe: str = ""
    """Filled in from ``recipe=NAME``."""
    seed: int = 0
    plugins: list[str] = field(default_factory=list)
    """The plugins that act on this run; others are loaded but stay out."""
    kernels: dict[str, str] = field(default_factory=dict)
    """Force a kernel implementation per op, e.g. ``{newton_schulz: reference}``."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    run: RunConfig = field(default_factory=RunConfig)


SectionT = TypeVar("SectionT")


def section(config: Config, name: str, schema: type[SectionT]) -> SectionT:
    """The run's ``name`` section, typed as ``schema``: how a plugin reads its own section.

    A run's :class:`Config` gains the enabled plugins' sections at run time, so
    ``config.muon`` is unknown to a type checker; ``section(config, "muon",
    MuonConfig)`` is the same object, checked and typed.
    """
    value = getattr(config, name, None)
    if not isinstance(value, schema):
        from jevons.framework.errors import UsageError

        got = "no such section" if value is None else f"a {type(value).__name__}"
        raise UsageError(
            f"Config section '{name}' should be a {schema.__name__}, but the run's config has {got}. "
            f"Is the plugin that registers it enabled in plugins:?"
        )
    return value


def require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        from jevons.framework.errors import UsageError

        raise UsageError(f"{key}={value!r} is not valid: expected {expected}.")
