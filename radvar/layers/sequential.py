"""``nn.Sequential`` that runs a compact ReLU (or LeakyReLU) and the RAD ``Linear`` after it as one op.

Apart, the pair pays two custom autograd Functions per step: the activation keeps a 1-bit mask of
x > 0, the linear a sketch of its input. :class:`FusingSequential` calls
:func:`radvar.ops.linear.rad_relu_linear` instead, which keeps the same mask and the same sketch
in one Function: the same bytes, the same RAD draw, bitwise the same output and gradients.
When the linear runs exact on a call (no sketch, or inside ``radvar.exact()``) with a weight that
trains, it keeps the ReLU's output itself, so a 1-bit mask beside it would only add bytes and time:
the pair then runs ``torch.relu``, whose saved tensor is that same output (fewer bytes by the mask,
bitwise the same output and gradients; the default MLP's all-exact conversion stepped at 1.24-1.39x
plain with the compact ReLUs, at plain speed with this). A LeakyReLU stays compact (torch's saves
its input, a second full tensor), and so does a ReLU before a frozen linear (which keeps nothing).
The saved-tensor ledger, whose hooks turn this off like the fusion, measures the masks: an upper
bound by 1/32 of those ReLU outputs.

The fusion is invisible by construction: it happens only where nothing could observe the activation's
output, i.e. the two modules are adjacent in the Sequential, the activation is a plain compact twin
(:class:`~radvar.layers.activation.CompactReLU` or ``CompactLeakyReLU``) and the linear a plain
:class:`~radvar.layers.linear.RADLinear` that randomizes on this call, and neither module has hooks
(nor are global module hooks set: the saved-tensor ledger's per-layer attribution and the variance
capture register hooks, so they see each module run on its own). Otherwise every module runs as in
``nn.Sequential``. :func:`fuse` swaps the class of each ``nn.Sequential`` holding such a pair
(:func:`radvar.convert` does it for compact conversions); parameters and state_dict keys are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from ..ops.linear import rad_relu_linear
from .activation import CompactLeakyReLU, CompactReLU
from .functional import transparent
from .linear import RADLinear
from .registry import twin_for

_ACTIVATIONS = (CompactReLU, CompactLeakyReLU)
_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _hooked(module: nn.Module) -> bool:
    return any(getattr(module, name, None) for name in _MODULE_HOOKS)


def _global_hooks() -> bool:
    return any(getattr(torch_module, name, None) for name in _GLOBAL_HOOKS)


def _pair(activation: nn.Module, linear: nn.Module) -> bool:
    """Whether ``activation`` then ``linear`` is a pair :func:`rad_relu_linear` computes (types only)."""
    return type(activation) in _ACTIVATIONS and type(linear) is RADLinear


@transparent
class FusingSequential(nn.Sequential):
    """``nn.Sequential`` running each unobserved (compact ReLU/LeakyReLU, RAD Linear) pair as one op, or,
    when the linear runs exact, a ReLU as ``torch.relu`` and the linear."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        modules = list(self._modules.values())
        free = not _global_hooks()
        i = 0
        while i < len(modules):
            module = modules[i]
            if (free and i + 1 < len(modules) and _pair(module, modules[i + 1])
                    and not _hooked(module) and not _hooked(modules[i + 1])):
                linear = modules[i + 1]
                slope = module.negative_slope if isinstance(module, nn.LeakyReLU) else 0.0
                if linear._randomizes():
                    input = rad_relu_linear(input, linear.weight, linear.bias, linear.sketch, slope)
                elif slope == 0.0 and linear.weight.requires_grad:  # the exact linear keeps the output,
                    input = linear(torch.relu(input))  # which is what torch's relu saves: no mask beside it
                else:  # a frozen linear keeps nothing; torch's leaky_relu saves its input: the mask is less
                    input = linear(module(input))
                i += 2
            else:
                input = module(input)
                i += 1
        return input


def fused_pairs(model: nn.Module) -> dict[str, str]:
    """{linear: ReLU} by qualified name, for every (ReLU, Linear) pair adjacent in an ``nn.Sequential`` of the
    unconverted ``model`` (types as :func:`radvar.convert` twins them): the ReLU keeps a mask (in the fused op)
    when its linear is sketched, and runs as ``torch.relu`` when the linear runs exact."""
    out = {}
    for prefix, module in model.named_modules():
        if type(module) is nn.Sequential:
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                if twin_for(module._modules[a]) is CompactReLU and twin_for(module._modules[b]) is RADLinear:
                    out[f"{prefix}.{b}" if prefix else b] = f"{prefix}.{a}" if prefix else a
    return out


def fuse(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Sequential`` in ``model`` (itself included) that holds an adjacent (compact
    ReLU/LeakyReLU, RAD Linear) pair to :class:`FusingSequential`, in place; returns ``model``."""
    for module in model.modules():
        if type(module) is nn.Sequential:
            children = list(module.children())
            if any(_pair(a, b) for a, b in zip(children, children[1:])):
                module.__class__ = FusingSequential
    return model
