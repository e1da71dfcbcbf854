"""Build an LCG from a small PyTorch function at a point.

The function is traced with ``torch.fx.symbolic_trace``; each traced node
whose value is a floating tensor that depends on the input becomes an LCG
node (tensor level, flattened), and each of its tensor arguments that depends
on the input gets an edge carrying the local Jacobian of that elementary op
at the point, computed by ``torch.func.jacrev`` (dense; an elementwise op
gives a diagonal matrix, a view a permutation). Everything that does not
depend on the input (parameters, constants, shapes) is folded in as a constant.
"""

from __future__ import annotations

from typing import Any, Callable

import types

import torch
import torch.fx

from .graph import LCG, Edge


def _call(gm: torch.fx.GraphModule, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return gm.get_submodule(node.target)(*args, **kwargs)


def trace(fn: Callable[[torch.Tensor], torch.Tensor] | torch.nn.Module, x: torch.Tensor) -> LCG:
    """The LCG of ``fn`` (one tensor in, one tensor out) at the point ``x``; its Jacobian is ``∂fn(x)/∂x``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"trace: x must be a floating torch.Tensor, got {type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if not isinstance(fn, (torch.nn.Module, types.FunctionType)):
        op = fn
        fn = lambda t: op(t)  # noqa: E731  (fx traces Python functions and modules, not builtins)
    gm = torch.fx.symbolic_trace(fn)
    env: dict[torch.fx.Node, Any] = {}
    depends: set[torch.fx.Node] = set()
    sizes: dict[str, int] = {}
    edges: dict[Edge, torch.Tensor] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"trace: fn must take exactly one tensor argument, got {len(placeholders)} ({[n.name for n in placeholders]})")
    output = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = x.detach()
            depends.add(node)
            sizes[node.name] = x.numel()
        elif node.op == "get_attr":
            target: Any = gm
            for part in node.target.split("."):
                target = getattr(target, part)
            env[node] = target
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node) or result not in depends:
                raise ValueError(f"trace: fn must return one tensor that depends on its input, got {result!r}")
            output = result.name
        else:
            args = torch.fx.node.map_arg(node.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
            value = _call(gm, node, args, kwargs)
            env[node] = value
            parents = [p for p in node.all_input_nodes if p in depends]
            if not parents or not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                continue
            depends.add(node)
            sizes[node.name] = value.numel()
            for parent in parents:
                def local(t: torch.Tensor, node: torch.fx.Node = node, parent: torch.fx.Node = parent) -> torch.Tensor:
                    swap = lambda n: t if n is parent else env[n]  # noqa: E731
                    return _call(gm, node, torch.fx.node.map_arg(node.args, swap), torch.fx.node.map_arg(node.kwargs, swap))

                jac = torch.func.jacrev(local)(env[parent])
                edges[(parent.name, node.name)] = jac.reshape(value.numel(), env[parent].numel()).detach()
    assert output is not None
    return LCG(sizes, edges, placeholders[0].name, output)
