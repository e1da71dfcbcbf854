"""IRNN: an Elman RNN with ReLU and identity recurrent init, and sequential digits.

Cell (Elman 1990; identity init: Le, Jaitly & Hinton 2015, "A simple way to
initialize recurrent networks of rectified linear units")::

    h_t = relu(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh),   h_0 = 0 unless given

with W_hh = I and zero biases at init; W_ih has ``nn.Linear``'s default init.
:class:`IRNN`'s forward is a plain Python loop over steps of two
``nn.Linear`` maps and ``torch.relu`` — the "plain PyTorch loop with the same
cell" that RAD is measured against. ``radvar.convert`` makes both maps
``RADLinear`` (their weight gradients randomized at every step, a fresh draw
per step) and the IRNN itself :class:`CompactIRNN` (below), whose
ReLU keeps a 1-bit mask. The paper's experiment (Oktay et al., ICLR 2021,
§6) is an IRNN with hidden size 100 on sequential MNIST (784 steps);
:func:`radvar.apps.datasets.sequential_digits` gives the small stand-in bundled with scikit-learn:
8x8 digits read pixel by pixel in row-major order, 64 steps of one input each.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..layers import Twin, register
from ..ops.activation import compact_relu
from .datasets import sequential_digits  # noqa: F401  (public here too: the sequences this model reads)

NONLINEARITIES = ("relu",)

Activation = Callable[[torch.Tensor], torch.Tensor]


def _positive_int(value: object, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


class IRNN(nn.Module):
    """Single-layer Elman RNN with ReLU: ``h_t = relu(ih(x_t) + hh(h_{t-1}))``.

    The two maps are ``nn.Linear`` children, ``ih`` (input_size → hidden_size)
    and ``hh`` (hidden_size → hidden_size), called once per step: a plan gives
    each its own sketch (``"rnn.ih"``, ``"rnn.hh"``), the memory ledger
    attributes each map's saved sketches to it, and variance capture sees
    every step as one call of the same layer (per-step RAD variances add up). Input is
    (batch, steps, input_size) with ``batch_first=True`` (default), else
    (steps, batch, input_size). ``forward(x, h0=None)`` returns
    ``(output, h_n)``: every hidden state, laid out like the input, and the
    last one, (batch, hidden_size). Only ``nonlinearity="relu"`` is offered:
    tanh's derivative needs its output, which would keep the full hidden state
    for backward and void RAD's memory saving.
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "relu", bias: bool = True,
                 batch_first: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.input_size = _positive_int(input_size, "input_size", "IRNN")
        self.hidden_size = _positive_int(hidden_size, "hidden_size", "IRNN")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"IRNN: nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        for name, flag in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(flag, bool):
                raise TypeError(f"IRNN: {name} must be a bool, got {flag!r} ({type(flag).__name__})")
        self.nonlinearity, self.batch_first = nonlinearity, batch_first
        self.ih = nn.Linear(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.hh = nn.Linear(hidden_size, hidden_size, bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W_hh = I and biases 0 (Le et al. 2015); W_ih keeps ``nn.Linear``'s init (Kaiming uniform, a = √5)."""
        with torch.no_grad():
            self.ih.reset_parameters()
            self.hh.weight.copy_(torch.eye(self.hidden_size))
            for b in (self.ih.bias, self.hh.bias):
                if b is not None:
                    b.zero_()

    def _check(self, x: torch.Tensor, h0: torch.Tensor | None) -> None:
        layout = "(batch, steps, input_size)" if self.batch_first else "(steps, batch, input_size)"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"IRNN: x must be a tensor {layout}, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[2] != self.input_size or 0 in x.shape:
            raise ValueError(f"IRNN: x must have shape {layout} with input_size={self.input_size} and no "
                             f"empty dimension, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"IRNN: x must be a floating-point tensor, got dtype {x.dtype}")
        batch = x.shape[0] if self.batch_first else x.shape[1]
        if h0 is not None and (not isinstance(h0, torch.Tensor) or tuple(h0.shape) != (batch, self.hidden_size)):
            got = tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0).__name__
            raise ValueError(f"IRNN: h0 must be None or a tensor of shape (batch, hidden_size) = "
                             f"{(batch, self.hidden_size)}, got {got}")

    def run(self, x: torch.Tensor, h0: torch.Tensor | None,
            activation: Activation) -> tuple[torch.Tensor, torch.Tensor]:
        """The loop ``h_t = activation(ih(x_t) + hh(h_{t-1}))``; returns ``(output, h_n)``."""
        self._check(x, h0)
        steps = x.unbind(1 if self.batch_first else 0)
        h = h0 if h0 is not None else x.new_zeros(steps[0].shape[0], self.hidden_size)
        outputs = []
        for x_t in steps:
            h = activation(self.ih(x_t) + self.hh(h))
            outputs.append(h)
        return torch.stack(outputs, 1 if self.batch_first else 0), h

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run(x, h0, torch.relu)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}, "
                f"bias={self.ih.bias is not None}, batch_first={self.batch_first}")


class IRNNClassifier(nn.Module):
    """An :class:`IRNN` read out by a linear layer on its last hidden state: logits = h_T Wᵀ + b."""

    def __init__(self, input_size: int = 1, hidden_size: int = 100, classes: int = 10) -> None:
        super().__init__()
        _positive_int(classes, "classes", "IRNNClassifier")
        self.rnn = IRNN(input_size, hidden_size)
        self.head = nn.Linear(hidden_size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[1])


def irnn(input_size: int = 1, hidden_size: int = 100, classes: int = 10) -> IRNNClassifier:
    """The paper's sequential-MNIST model (IRNN, hidden 100, linear readout); ``input_size=1`` reads a pixel a step."""
    return IRNNClassifier(input_size, hidden_size, classes)


@register(IRNN)
class CompactIRNN(IRNN, Twin):
    """:class:`IRNN` whose ReLU keeps a packed mask (1 bit an element) for backward.

    An IRNN's maps are ``nn.Linear`` children, so ``convert`` randomizes them as
    ``RADLinear`` (plan entries ``"<name>.ih"`` and ``"<name>.hh"``); each step's
    call draws a fresh key (:func:`radvar.rng.next_key`), so steps are sketched
    independently and indices are regenerated in backward, never stored. A step
    then keeps a sketch of x_t, a sketch of h_{t-1} and the ReLU mask in 1 bit an
    element (the plain loop keeps every h_t in full)::

        h_t = compact_relu(ih(x_t) + hh(h_{t-1}))

    Input and bias gradients are exact, so the backpropagated
    g_t = ∂L/∂(pre-activation at t) is exact and ∂Ŵ_hh = Σ_t g_tᵀ ĥ_{t-1} is
    unbiased with variance Σ_t Var_t (independent draws add; likewise W_ih).
    As with ``CompactReLU`` before an exact ``Linear``, an exact ``hh`` still keeps
    h_{t-1} in full, so the all-exact twin keeps the plain bytes plus the masks;
    the ledger then attributes h_{t-1} to ``hh``, the map whose sketch removes it.
    """

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run(x, h0, compact_relu)
