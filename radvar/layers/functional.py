"""Functional calls inside modules: their site keys, and the routing that sends chosen ones to RAD ops.

Models call ``F.gelu``, ``F.layer_norm``, ``F.scaled_dot_product_attention``,
``torch.matmul`` and plain products of activations inside their own ``forward``,
where swapping a module's class cannot reach. Layer kinds register the torch
functions they route with :func:`function_kind` in their own module
(:mod:`radvar.layers.activations`, :mod:`radvar.layers.norms`,
:mod:`radvar.layers.attention`, :mod:`radvar.layers.product`).

**Sites.** While a model runs with routing, a ``torch.overrides.TorchFunctionMode``
sees every call of a registered function made inside a module's own ``forward``, and
forward pre/post hooks keep the stack of running modules. Only modules that can hold
a site carry hooks, so a model of twins in containers runs with no per-module cost:
the root (which starts and ends each forward), every module with neither a twin nor a
stock container type (``nn.Sequential``'s forward calls modules, never a function;
:func:`transparent` adds such types), and twins below one of those (they take the mode
off while they run). The mode is on only while such a module is innermost. Each call gets a site key
``"<module>:<function>.<index>"``: the innermost module running (``""`` is the
model itself), the kind's name, and the 0-based index of the call among that
module's calls of that function in this forward (e.g. ``"h.0.attn:sdpa.0"``,
``"model.layers.0.mlp:mul.0"``). Calls made while a module with its own twin is
innermost are not sites: the twin decides what they keep. A kind may declare
that only some calls are sites (``when``; products: both operands need a gradient).

**Routing.** :func:`route` (what ``radvar.convert`` calls when a plan names sites)
installs the hooks as picklable objects, so a routed model deep-copies, pickles
and keeps its state_dict; the root's pre-hook enters the mode and its forward hook,
registered with ``always_call=True``, leaves it even when forward raises. A forward
without autograd (``torch.no_grad()``, inference) enters no mode: nothing would be
routed, and torch's own fast paths (e.g. ``nn.MultiheadAttention``'s) stay on. Entries
map site keys or fnmatch patterns (``"*:mul.*"``, ``"*:*"``) to a sketch or None
(exact): a site's own key wins, else the last matching pattern whose sketch the
site's kind takes (:func:`site_entry`). At the end of the first forward with
autograd on, an entry naming a site that no call reached is a ``ValueError``
listing the model's sites. :func:`intercept` does the same for one block of
code; :func:`functional_sites` lists a model's sites.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fnmatch
import sys
import threading
import weakref
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..sketch import Sketch
from .registry import twin_for

Op = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class FunctionKind:
    """A torch function radvar can route: its site ``name`` (``gelu``, ``sdpa``, ...), the torch
    callables it covers, and ``factory(sketch) -> op``, an op with the torch function's own
    signature that keeps ``sketch`` of what backward needs. ``families`` restricts the sketch
    families it takes (None: all). ``when(args, kwargs)``, if given, says whether a call is a site
    at all (e.g. a product only when both operands need a gradient); other calls run unchanged
    and take no site index."""

    name: str
    functions: tuple[Callable, ...]
    factory: Callable[[Sketch], Op]
    families: tuple[str, ...] | None = None
    when: Callable[[tuple, dict], bool] | None = None

    def accepts(self, sketch: Sketch | None) -> bool:
        """Whether a site of this kind takes ``sketch`` (None, exact, always): its family, and view None
        (a routed op picks its own view)."""
        return sketch is None or ((self.families is None or sketch.kind in self.families) and sketch.view is None)


FUNCTION_KINDS: dict[str, FunctionKind] = {}
INTERCEPTED: dict[Callable, str] = {}  # torch callable -> site name


def function_kind(*functions: Callable, name: str, families: tuple[str, ...] | None = None,
                  when: Callable[[tuple, dict], bool] | None = None
                  ) -> Callable[[Callable[[Sketch], Op]], Callable[[Sketch], Op]]:
    """Decorator on an op factory ``factory(sketch) -> op``: route calls of ``functions`` under ``name``
    (``when``: see :class:`FunctionKind`)."""

    def deco(factory: Callable[[Sketch], Op]) -> Callable[[Sketch], Op]:
        if name in FUNCTION_KINDS:
            raise ValueError(f"function_kind: {name!r} is already registered")
        FUNCTION_KINDS[name] = FunctionKind(name, functions, factory, families, when)
        for fn in functions:
            INTERCEPTED[fn] = name
        return factory

    return deco


# ---- sites and routing ---------------------------------------------------------------------------------

ALL_SITES = "*:*"  # the pattern Plan.uniform uses: every site whose kind takes the sketch
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("radvar_site", default=None)
Entry = Sketch | Op | None  # what a site entry may hold: a sketch, None (exact) or, in intercept, an op


def is_site(key: str) -> bool:
    """Whether a plan key names functional sites (``module:name.index`` or a pattern), not a module."""
    return ":" in key


def is_pattern(key: str) -> bool:
    """Whether a site key is an fnmatch pattern (``*``, ``?`` or ``[``) rather than one site."""
    return any(c in key for c in "*?[")


def split_site(key: str) -> tuple[str, str, str]:
    """(module, function name, index) of a site key ``module:name.index`` (patterns may lack ``.index``)."""
    module, _, call = key.rpartition(":")
    name, dot, index = call.rpartition(".")
    return (module, name, index) if dot else (module, call, "")


def site_entry(entries: Mapping[str, Entry], site: str) -> Entry:
    """What ``entries`` give ``site``: its own entry, else that of the last pattern (fnmatch, in the
    entries' order) that matches it and whose sketch the site's kind takes; None (exact) if none."""
    if site in entries:
        return entries[site]
    kind = FUNCTION_KINDS.get(split_site(site)[1])
    found = None
    for key, entry in entries.items():
        if (is_pattern(key) and fnmatch.fnmatchcase(site, key)
                and (not isinstance(entry, Sketch) or (kind is not None and kind.accepts(entry)))):
            found = entry
    return found


def current_site() -> str | None:
    """The site key of the routed call running now (in this context), or None."""
    return _CURRENT.get()


class _SiteMode(TorchFunctionMode):
    """Hands every intercepted torch call to its router, held weakly: the router's per-thread state holds
    the mode, and a cycle would keep the router's ops (and what they hold) alive until the garbage collector
    runs."""

    def __init__(self, router: "_Router"):
        super().__init__()
        self.router = weakref.ref(router)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            name = INTERCEPTED.get(func)
        except TypeError:  # an unhashable callable is never intercepted
            name = None
        router = self.router() if name is not None else None  # None once the router is gone: plain calls
        return func(*args, **kwargs) if router is None else router.call(func, name, args, kwargs)


def _on_top(mode: TorchFunctionMode) -> bool:
    """Whether ``mode`` is the innermost active torch function mode."""
    depth = torch._C._len_torch_function_stack()
    return depth > 0 and torch._C._get_function_stack_at(depth - 1) is mode


class _Router:
    """The site entries of one model and, per thread, the stack of running modules (None for one
    with its own twin), the call counts and the sites seen in the current forward."""

    def __init__(self, entries: Mapping[str, Entry]):
        self.entries = dict(entries)
        self.checked = False  # whether a forward has reached every named site
        self._fresh()

    def _fresh(self) -> None:
        self.ops: dict[str, Op | None] = {}
        self.local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"entries": self.entries, "checked": self.checked}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fresh()

    def state(self) -> threading.local:
        st = self.local
        if not hasattr(st, "stack"):
            st.stack, st.counts, st.seen, st.depth, st.mode, st.on = [], {}, {}, 0, _SiteMode(self), False
            st.changes = []  # per stack entry: +1 it put the mode on torch's mode stack, -1 took it off, 0 neither
        return st

    def enter(self, name: str | None, root: bool) -> None:
        """Push ``name`` (None: a twin, whose calls are not sites) and put the mode on top while a
        named module runs, off it while a twin runs (restored by :meth:`leave`)."""
        st = self.state()
        if root:
            if st.depth == 0:
                st.counts.clear()
                st.seen.clear()
                st.on = torch.is_grad_enabled()  # without autograd nothing is routed: no mode, no cost
            st.depth += 1
        st.stack.append(name)
        change = 0
        if st.on:
            on_top = _on_top(st.mode)
            if name is None and on_top:  # a twin's own ops skip Python
                torch._C._pop_torch_function_stack()
                change = -1
            elif name is not None and not on_top:
                torch._C._push_on_torch_function_stack(st.mode)
                change = 1
        st.changes.append(change)

    def leave(self, root: bool) -> None:
        st = self.state()
        if st.stack:
            st.stack.pop()
        change = st.changes.pop() if st.changes else 0
        if change == 1 and _on_top(st.mode):
            torch._C._pop_torch_function_stack()
        elif change == -1:
            torch._C._push_on_torch_function_stack(st.mode)
        if not root or st.depth == 0:
            return
        st.depth -= 1
        if st.depth:
            return
        st.stack.clear()
        st.changes.clear()
        if not st.on:
            return
        st.on = False
        if self.checked or sys.exc_info()[0] is not None:
            return
        missing = sorted(k for k in self.entries if not is_pattern(k) and k not in st.seen)
        if missing:
            raise ValueError(f"radvar: the plan names functional site(s) {missing} that no call reached in this "
                             f"forward; sites of this model: {sorted(st.seen)}")
        self.checked = True

    def call(self, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
        st = self.state()
        module = st.stack[-1] if st.stack else None
        kind = FUNCTION_KINDS.get(name)
        if module is None or (kind is not None and kind.when is not None and not kind.when(args, kwargs)):
            return func(*args, **kwargs)
        index = st.counts.get((module, name), 0)
        st.counts[module, name] = index + 1
        site = f"{module}:{name}.{index}"
        st.seen[site] = name
        if site not in self.ops:
            entry = site_entry(self.entries, site)
            self.ops[site] = (entry if entry is None or callable(entry)
                              else kind.factory(entry) if kind is not None else None)
        op = self.ops[site]
        token = _CURRENT.set(site)
        try:
            return func(*args, **kwargs) if op is None else op(*args, **kwargs)
        finally:
            _CURRENT.reset(token)


class _Enter:
    """Forward pre-hook: push the module's name (None if it holds no site: a twin or a container)."""

    def __init__(self, router: _Router, name: str, root: bool):
        self.router, self.name, self.root = router, name, root

    def __call__(self, module: nn.Module, args: Any) -> None:
        self.router.enter(self.name if _holds_sites(module) else None, self.root)


class _Leave:
    """Forward hook (always called, also when forward raises): pop; the root leaves the mode."""

    def __init__(self, router: _Router, root: bool):
        self.router, self.root = router, root

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.router.leave(self.root)


def router_of(model: nn.Module) -> _Router | None:
    """The router installed on ``model`` (as its root), or None."""
    return next((h.router for h in model._forward_pre_hooks.values() if isinstance(h, _Enter) and h.root), None)


def unroute(model: nn.Module) -> None:
    """Remove every routing hook from ``model`` and its submodules."""
    for m in model.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for key in [k for k, h in hooks.items() if isinstance(h, (_Enter, _Leave))]:
                del hooks[key]
                m._forward_hooks_always_called.pop(key, None)


_CONTAINERS: set[type[nn.Module]] = {nn.Sequential, nn.ModuleList, nn.ModuleDict}


def _holds_sites(module: nn.Module) -> bool:
    """Whether a call in ``module``'s own forward can be a site: it has no twin and is no stock container."""
    return twin_for(module) is None and type(module) not in _CONTAINERS


def transparent(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: ``cls``'s own forward makes no functional call (it only calls submodules), so its
    instances hold no site and need no routing hooks (by exact type, like ``nn.Sequential``)."""
    _CONTAINERS.add(cls)
    return cls


def _install(model: nn.Module, router: _Router) -> list[torch.utils.hooks.RemovableHandle]:
    """Routing hooks on the modules that need them (see the module docstring); returns their handles."""
    handles = []

    def hook(m: nn.Module, name: str) -> None:
        handles.append(m.register_forward_pre_hook(_Enter(router, name, m is model), prepend=True))
        handles.append(m.register_forward_hook(_Leave(router, m is model), always_call=True))

    seen: set[int] = set()
    pending = [(model, "", False)]  # depth first, without a recursive closure (a reference cycle)
    while pending:
        m, name, below_sites = pending.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        has_twin = twin_for(m) is not None
        holds_sites = _holds_sites(m)
        if m is model or holds_sites or (has_twin and below_sites):
            hook(m, name)
        if has_twin:
            continue  # its children run inside it, where no call is a site and the mode is off
        pending += reversed([(child, f"{name}.{child_name}" if name else child_name, below_sites or holds_sites)
                             for child_name, child in m.named_children()])
    return handles


def route(model: nn.Module, entries: Mapping[str, Entry]) -> None:
    """Route ``model``'s functional sites by ``entries`` (site key or pattern -> sketch, None or op) on
    every forward of ``model``, replacing any routing it had; no entries: no routing at all."""
    unroute(model)
    if not entries:
        return
    _install(model, _Router(entries))


@contextlib.contextmanager
def intercept(model: nn.Module, plan: Mapping[str, Entry] | None = None) -> Iterator[dict[str, str]]:
    """Run ``model`` with its functional sites routed by ``plan`` (site key or pattern -> sketch, None
    or an op with the function's own signature) for the duration of the block.

    Yields the sites seen in the last forward (site -> function name), filled as the model runs. A
    model converted with sites keeps its own routing: then ``plan`` must be None, and the block only
    observes. Raises ``ValueError`` at the end of a forward if ``plan`` names a site no call reached.
    """
    for key, entry in (plan or {}).items():
        if not isinstance(key, str) or not is_site(key) or not (entry is None or isinstance(entry, Sketch)
                                                                 or callable(entry)):
            raise TypeError(f"intercept: plan entries must be 'module:name.index' -> sketch, None or op, "
                            f"got {key!r}: {entry!r}")
    own = router_of(model)
    if own is not None:
        if plan:
            raise TypeError("intercept: this model was converted with functional sites and routes them itself; "
                            "convert it with a new plan instead")
        yield own.state().seen
        return
    router = _Router(plan or {})
    handles = []
    try:
        handles = _install(model, router)
        yield router.state().seen
    finally:
        for h in handles:
            h.remove()


def functional_sites(model: nn.Module, *inputs: Any) -> dict[str, str]:
    """Every functional site of one forward of ``model(*inputs)``: site key -> function name.

    Runs with autograd on (no backward): products are sites only when both operands need a gradient."""
    with torch.enable_grad(), intercept(model) as sites:
        model(*inputs)
    return dict(sites)
