"""Autograd Functions: what RAD layers save and how they compute backward."""

from .activation import compact_leaky_relu, compact_relu
from .attention import rad_sdpa, rad_softmax
from .conv import rad_conv, rad_convolution
from .dropout import compact_dropout
from .linear import rad_linear
from .pool import adaptive_avg_pool2d, avg_pool1d, avg_pool2d, max_pool2d

__all__ = [
    "rad_linear", "rad_conv", "rad_convolution", "rad_sdpa", "rad_softmax", "compact_relu", "compact_leaky_relu", "compact_dropout",
    "avg_pool1d", "avg_pool2d", "adaptive_avg_pool2d", "max_pool2d",
]
