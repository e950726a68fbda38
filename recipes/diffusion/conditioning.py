"""The diffusion family's conditioning contract: what a condition is, and the unconditional one.

The family, not the plugins, knows what conditions a sample: a
:class:`Conditioner` turns a training batch into a :class:`Condition`, embeds a
condition as the transformer's ``encoder_hidden_states``, and gives the
unconditional (negative) condition classifier-free guidance needs (Ho &
Salimans, 2022). Plugins (distillation, the cascade, samplers) use only this
contract: ``model.conditioner.from_batch(batch)``, ``.unconditional(n)``,
``.drop(condition, mask)``, ``.draw(generator)`` for data-free inputs,
``.grid(n)`` for sample grids and ``.group(condition)`` to tell samples of the
same class or prompt apart.

Two kinds:

* :class:`ClassConditioner`: class labels ``(B, 2)`` (one or two digits, or a
  glyph, the second slot possibly "none"), embedded by a learned table of
  ``tokens`` vectors per class; the "none" entry is also the unconditional input.
* :class:`TextConditioner`: text-encoder embeddings ``(B, max_length, text_dim)``
  trimmed at each prompt's mask and zero-padded, as ``WanPipeline`` gives its
  transformer; the unconditional input is the negative prompt's embedding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from jevons.recipes.diffusion.data import NO_DIGIT

if TYPE_CHECKING:
    from jevons.recipes.diffusion.text import PromptEncoder


class Condition:
    """A batch of conditions: named tensors sharing their first (batch) dimension.

    Class labels are ``Condition(labels=(B, 2))``; text is ``Condition(embeddings=(B, L, D))``,
    with ``group`` (B,) naming the prompt of a drawn condition."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        if not tensors:
            raise ValueError("a Condition needs at least one tensor")
        sizes = {name: len(t) for name, t in tensors.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"a Condition's tensors must share their batch size; got {sizes}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, name_or_index: Any) -> Any:
        """``condition["labels"]`` is a tensor; ``condition[index]`` the selected samples' Condition."""
        if isinstance(name_or_index, str):
            return self.tensors[name_or_index]
        return Condition(**{name: t[name_or_index] for name, t in self.tensors.items()})

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={tuple(t.shape)}" for name, t in self.tensors.items())
        return f"Condition({shapes})"

    def to(self, device: torch.device | str) -> Condition:
        return Condition(**{name: t.to(device) for name, t in self.tensors.items()})

    @staticmethod
    def cat(conditions: Sequence[Condition]) -> Condition:
        """The conditions one after another; a tensor only some have (a drawn condition's ``group``) is left out."""
        names = [name for name in conditions[0].tensors if all(name in c.tensors for c in conditions)]
        if not names:
            raise ValueError(f"cannot concatenate conditions of different kinds: {conditions}")
        return Condition(**{name: torch.cat([c.tensors[name] for c in conditions]) for name in names})

    def where(self, replace: torch.Tensor, other: Condition) -> Condition:
        """Per sample: ``other``'s where ``replace`` (a ``(B,)`` bool tensor) is true, else this one's."""
        mixed = {}
        for name, tensor in self.tensors.items():
            if name not in other.tensors:
                continue  # e.g. a drawn condition's group: the unconditional input has none
            mask = replace.view(-1, *([1] * (tensor.ndim - 1))).to(tensor.device)
            mixed[name] = torch.where(mask, other.tensors[name].to(tensor.device), tensor)
        return Condition(**mixed)


class Conditioner(nn.Module, ABC):
    """What conditions the diffusion model; a submodule of the model (``model.conditioner``)."""

    kind: str
    """``labels`` or ``text``."""
    num_groups: int
    """How many distinct conditions :meth:`draw` chooses from (classes, prompts)."""

    @abstractmethod
    def forward(self, condition: Condition) -> torch.Tensor:
        """The transformer's ``encoder_hidden_states`` ``(B, L, text_dim)`` for ``condition``."""

    @abstractmethod
    def from_batch(self, batch: dict[str, Any]) -> Condition:
        """A training batch's conditions (on the batch's device)."""

    @abstractmethod
    def tokens_per_sample(self, batch: dict[str, Any]) -> int:
        """``L``, the condition tokens each sample of ``batch`` gives the transformer."""

    learned: bool = False
    """Whether the condition tokens are trained (carry a gradient back)."""

    @abstractmethod
    def unconditional(self, count: int) -> Condition:
        """``count`` copies of the unconditional (negative) condition."""

    @abstractmethod
    def draw(self, generator: torch.Generator) -> Condition:
        """One condition drawn at random from ``generator`` (a data-free input: a digit, a prompt)."""

    @abstractmethod
    def grid(self, count: int) -> Condition:
        """``count`` conditions for a sample grid, cycling through the classes or prompts."""

    @abstractmethod
    def group(self, condition: Condition) -> torch.Tensor:
        """``(B,)`` integers: equal for samples of the same class or prompt."""

    @property
    def grid_columns(self) -> int:
        """Columns of a sample grid: one per class or prompt."""
        return self.num_groups

    def dropped(self, count: int) -> Condition:
        """What a dropped sample trains on: the unconditional input (text: the empty prompt's embedding,
        while guidance uses the negative prompt's)."""
        return self.unconditional(count)

    def drop(self, condition: Condition, dropped: torch.Tensor) -> Condition:
        """``condition`` with the samples where ``dropped`` is true made unconditional (prompt dropout)."""
        return condition.where(dropped, self.dropped(len(condition)))


class ClassConditioner(Conditioner):
    """Class labels ``(B, slots)`` to encoder hidden states ``(B, slots * tokens, text_dim)`` (a learned
    table of ``classes + 1`` rows: the last, index ``classes``, is "no class", the empty slot and the
    unconditional input). Digits have 10 classes in two slots (a clip may hold two digits); glyphs 32."""

    kind = "labels"

    def __init__(self, text_dim: int, tokens: int, classes: int = NO_DIGIT) -> None:
        super().__init__()
        self.tokens = tokens
        self.classes = classes
        self.num_groups = classes
        self.table = nn.Embedding(classes + 1, tokens * text_dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, condition: Condition) -> torch.Tensor:
        labels = condition["labels"]
        return self.table(labels).reshape(labels.shape[0], labels.shape[1] * self.tokens, -1)

    def from_batch(self, batch: dict[str, Any]) -> Condition:
        return Condition(labels=batch["labels"])

    def tokens_per_sample(self, batch: dict[str, Any]) -> int:
        return int(batch["labels"].shape[1]) * self.tokens

    learned = True

    def unconditional(self, count: int) -> Condition:
        return Condition(labels=torch.full((count, 2), self.classes, dtype=torch.long, device=self.table.weight.device))

    def draw(self, generator: torch.Generator) -> Condition:
        label = int(torch.randint(0, self.classes, (1,), generator=generator))
        return Condition(labels=torch.tensor([[label, self.classes]]))

    def grid(self, count: int) -> Condition:
        return Condition(labels=class_labels(count, self.classes))

    def group(self, condition: Condition) -> torch.Tensor:
        return condition["labels"][:, 0]


def class_labels(count: int, classes: int = NO_DIGIT) -> torch.Tensor:
    """``count`` single-class labels cycling ``0 .. classes - 1``: ``(count, 2)`` with the second slot
    empty (``classes``, "no class")."""
    labels = torch.arange(count) % classes
    return torch.stack([labels, torch.full_like(labels, classes)], dim=1)


class TextConditioner(Conditioner):
    """Text embeddings, padded as ``WanPipeline`` pads them, straight into the transformer (whose own
    ``condition_embedder.text_embedder`` projects them).

    ``negative`` is the negative prompt's embedding (guidance's unconditional input), ``empty`` the empty
    prompt's (what prompt dropout trains on, as Wan trains) and ``prompts`` the embeddings of the prompts
    data-free distillation draws from and sample grids show (``(P, max_length, text_dim)``), all made
    once when the model is built and saved with it. ``encoder`` (held outside the module tree: frozen,
    never saved) encodes a batch's captions when it has no precomputed embeddings
    (``conditioning.online=true``)."""

    kind = "text"
    negative: torch.Tensor
    empty: torch.Tensor
    prompts: torch.Tensor

    def __init__(
        self,
        negative: torch.Tensor,
        prompts: torch.Tensor,
        prompt_texts: Sequence[str],
        encoder: PromptEncoder | None = None,
        empty: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if prompts.ndim != 3 or prompts.shape[1:] != negative.shape or not len(prompts):
            raise ValueError(
                f"prompt embeddings {tuple(prompts.shape)} must be (P >= 1, *negative.shape={tuple(negative.shape)})"
            )
        self.register_buffer("negative", negative.float())
        self.register_buffer("empty", (negative if empty is None else empty).float())
        self.register_buffer("prompts", prompts.float())
        self.prompt_texts = list(prompt_texts)
        self.num_groups = len(prompts)
        self._encoder = [encoder] if encoder is not None else []  # a list: not a submodule

    @property
    def max_length(self) -> int:
        return int(self.negative.shape[0])

    @property
    def encoder(self) -> PromptEncoder | None:
        return self._encoder[0] if self._encoder else None

    def forward(self, condition: Condition) -> torch.Tensor:
        return condition["embeddings"]

    def tokens_per_sample(self, batch: dict[str, Any]) -> int:
        return int(batch["text_embeddings"].shape[1]) if "text_embeddings" in batch else self.max_length

    def from_batch(self, batch: dict[str, Any]) -> Condition:
        if "text_embeddings" in batch:
            return Condition(embeddings=batch["text_embeddings"])
        if self.encoder is None:
            raise ValueError(
                "this batch has captions but no precomputed text embeddings, and the model has no text encoder: "
                "precompute them (jevons data import latents) or set conditioning.online=true"
            )
        embeddings = self.encoder.embed(batch["captions"], self.max_length, self.negative.device)
        return Condition(embeddings=embeddings.to(self.negative.device, self.negative.dtype))

    def unconditional(self, count: int) -> Condition:
        return Condition(embeddings=self.negative.expand(count, -1, -1))

    def dropped(self, count: int) -> Condition:
        return Condition(embeddings=self.empty.expand(count, -1, -1))

    def draw(self, generator: torch.Generator) -> Condition:
        index = torch.randint(0, self.num_groups, (1,), generator=generator)
        return Condition(embeddings=self.prompts[index].cpu(), group=index)

    def grid(self, count: int) -> Condition:
        index = torch.arange(count) % self.num_groups
        return Condition(embeddings=self.prompts[index].cpu(), group=index)

    def group(self, condition: Condition) -> torch.Tensor:
        if "group" not in condition:
            raise ValueError("only drawn or grid text conditions name their prompt (a 'group' tensor)")
        return condition["group"]
