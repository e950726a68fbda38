"""Model FLOPs of a training step, counted analytically, and the utilisation they imply (MFU).

A family's ``train_flops(model, batch)`` adds up the matrix multiplications
of one forward and backward pass of its model on the batch with
:class:`TrainFlops`. The conventions are those of PaLM's MFU (Chowdhery et
al., 2022, appendix B) and torchtitan: a multiply-add is 2 FLOPs; the
backward costs twice the forward (the gradients of the input and of the
weight), except where the input needs no gradient (a layer reading the data:
only the weight's); attention counts its two products over the full
query x key square, causal or not; normalisations, activations, softmax and
embedding lookups are not counted. Work a plugin adds or removes (sparse
attention, experts, a distillation teacher) is not counted either: MFU says
how well the machine runs the family's model, not how much a method saves.

Model FLOPs utilisation is model FLOPs per second over the device's peak
matmul rate, which Jevons measures on the device in the run's precision
(:mod:`jevons.kernels.peak`) instead of reading it from a spec sheet.
"""

from __future__ import annotations


class TrainFlops:
    """A running count of one training step's matmul FLOPs, forward and backward."""

    def __init__(self) -> None:
        self.total = 0.0

    def matmul(self, rows: int, fan_in: int, fan_out: int, input_needs_grad: bool = True) -> None:
        """A linear layer (or a convolution: ``rows`` output positions, ``fan_in`` = channels x kernel)
        applied to ``rows`` vectors."""
        forward = 2.0 * rows * fan_in * fan_out
        self.total += forward * (3 if input_needs_grad else 2)

    def attention(self, batch: int, heads: int, queries: int, keys: int, head_dim: int) -> None:
        """Scaled dot-product attention: ``Q K^T`` and ``P V``, forward and backward."""
        self.total += 3 * 2 * (2.0 * batch * heads * queries * keys * head_dim)
