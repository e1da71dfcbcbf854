"""One hooked forward pass: observe what modules receive without changing the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def run_with_pre_hooks(model: nn.Module, inputs: Any, hooks: Iterable[tuple[nn.Module, Callable[..., Any]]]) -> None:
    """``model(inputs)`` without gradients, each ``(module, hook)`` registered as a forward
    pre-hook for this call only (removed even when the forward raises)."""
    handles = [module.register_forward_pre_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
