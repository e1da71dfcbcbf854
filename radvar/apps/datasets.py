"""Bundled datasets for the examples: no downloads.

``digits`` is scikit-learn's bundled 8x8 digits; ``sequential_digits`` reads
them pixel by pixel (the small stand-in for the paper's sequential MNIST);
``synthetic`` draws Gaussian inputs and uniform labels from a private generator.
"""

from __future__ import annotations

import torch


def digits(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download): inputs (N, 64) in [0, 1], labels (N,)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=dtype) / 16.0
    return x, torch.as_tensor(data.target, dtype=torch.long)


def synthetic(n: int, shape: tuple[int, ...], classes: int, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs of ``shape`` with uniform labels, from a private generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=gen, dtype=dtype), torch.randint(0, classes, (n,), generator=gen)


def sequential_digits(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as sequences: inputs (1797, 64, 1) in [0, 1], pixels row-major; labels (1797,)."""
    x, y = digits(dtype)
    return x.unsqueeze(-1), y
