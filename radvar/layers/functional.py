"""Functional calls inside modules: find them, and route chosen ones to RAD ops (a prototype).

Models call ``F.gelu``, ``F.silu`` and ``F.layer_norm`` inside their own ``forward``
(and ``nn.GELU``/``nn.SiLU``/``nn.LayerNorm`` call them too), where swapping a module's
class cannot reach. While :func:`intercept` is active, a
``torch.overrides.TorchFunctionMode`` sees every such call, and forward pre/post hooks
keep the stack of running modules, so each call gets a *site* key
``"<module name>:<index>"``: the innermost module running (``""`` for the model itself)
and the 0-based index of the call among the intercepted calls that module made
directly in this forward. A plan maps site keys to replacement ops, called with the
function's own arguments; sites not in the plan run unchanged.

Layer kinds register the functions they route with :func:`function_kind` in their own
module (the elementwise activations in :mod:`radvar.layers.activations`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..sketch import Sketch

Op = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class FunctionKind:
    """A torch function radvar can route: its site ``name`` (``gelu``, ``sdpa``, ...), the torch
    callables it covers, and ``factory(sketch) -> op``, an op with the torch function's own
    signature that keeps ``sketch`` of what backward needs. ``families`` restricts the sketch
    families it takes (None: all)."""

    name: str
    functions: tuple[Callable, ...]
    factory: Callable[[Sketch], Op]
    families: tuple[str, ...] | None = None


FUNCTION_KINDS: dict[str, FunctionKind] = {}
INTERCEPTED: dict[Callable, str] = {}  # torch callable -> site name


def function_kind(*functions: Callable, name: str,
                  families: tuple[str, ...] | None = None) -> Callable[[Callable[[Sketch], Op]], Callable[[Sketch], Op]]:
    """Decorator on an op factory ``factory(sketch) -> op``: route calls of ``functions`` under ``name``."""

    def deco(factory: Callable[[Sketch], Op]) -> Callable[[Sketch], Op]:
        if name in FUNCTION_KINDS:
            raise ValueError(f"function_kind: {name!r} is already registered")
        FUNCTION_KINDS[name] = FunctionKind(name, functions, factory, families)
        for fn in functions:
            INTERCEPTED[fn] = name
        return factory

    return deco


class _SiteMode(TorchFunctionMode):
    """Gives each intercepted call its site key and routes planned sites to their ops."""

    def __init__(self, plan: Mapping[str, Op]):
        super().__init__()
        self.plan = plan
        self.stack: list[str] = []
        self.counts: dict[str, int] = {}
        self.sites: dict[str, str] = {}  # site -> function name, every call seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in INTERCEPTED or not self.stack:
            return func(*args, **kwargs)
        module = self.stack[-1]
        index = self.counts.get(module, 0)
        self.counts[module] = index + 1
        site = f"{module}:{index}"
        self.sites[site] = INTERCEPTED[func]
        return self.plan[site](*args, **kwargs) if site in self.plan else func(*args, **kwargs)


@contextlib.contextmanager
def intercept(model: nn.Module, plan: Mapping[str, Op] | None = None) -> Iterator[dict[str, str]]:
    """Run ``model`` with its F.gelu/F.silu/F.layer_norm calls routed by ``plan`` (site -> op).

    Yields the dict of sites seen (site -> function name), filled as the model runs.
    Raises ``ValueError`` at the end of a forward if ``plan`` names a site no call reached.
    """
    plan = dict(plan or {})
    for site, op in plan.items():
        if not isinstance(site, str) or ":" not in site or not callable(op):
            raise TypeError(f"intercept: plan entries must be 'module:index' -> callable op, got {site!r}: {op!r}")
    mode = _SiteMode(plan)
    names = {m: name for name, m in model.named_modules()}

    def enter(module: nn.Module, args: Any) -> None:
        if module is model:
            mode.counts.clear()
        mode.stack.append(names[module])

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        mode.stack.pop()
        missing = sorted(set(plan) - set(mode.sites)) if module is model else []
        if missing:
            raise ValueError(f"intercept: the plan names functional site(s) {missing} that no call reached; "
                             f"sites of this model: {sorted(mode.sites)}")

    handles = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with mode:
            yield mode.sites
    finally:
        for h in handles:
            h.remove()


def functional_sites(model: nn.Module, *inputs: Any) -> dict[str, str]:
    """Every intercepted functional call of one forward of ``model(*inputs)``: site -> function name."""
    with torch.no_grad(), intercept(model) as sites:
        model(*inputs)
    return dict(sites)
