"""Options shared by the commands, and loading of the problem they describe."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

import click
import torch
from torch import nn
from tqdm import tqdm

import radvar
from radvar import _native, outputs
from radvar.tradeoff.frontier import smallest_batch

from . import specs

DEBUG_KEY = "radvar.debug"
QUIET_KEY = "radvar.quiet"


def _flag(key: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta[key] = True

    return callback


def runtime_options(f: Callable) -> Callable:
    """``--quiet`` and ``--debug``: kept in ``ctx.meta`` (shared with the group), not passed on."""
    f = click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_flag(DEBUG_KEY),
                     help="Show tracebacks.")(f)
    return click.option("--quiet", "-q", is_flag=True, expose_value=False, is_eager=True,
                        callback=_flag(QUIET_KEY), help="No progress bars or messages on stderr.")(f)


def problem_options(f: Callable) -> Callable:
    """MODEL, --data, --loss, --model-arg, --weights, --seed, --device."""
    for decorator in reversed([
        click.argument("model", required=False),
        click.option("--data", "data_spec", metavar="SPEC",
                     help="digits | mnist5k | synthetic:SHAPE:CLASSES[:N] | file.pt | file.npz | module:fn "
                          "[default: digits; synthetic data for the zoo cnn/wide_mlp]"),
        click.option("--loss", "loss_spec", default="cross_entropy", show_default=True, metavar="SPEC",
                     help="cross_entropy | mse | module:fn"),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword argument for the model factory (repeatable)."),
        click.option("--weights", type=str, metavar="FILE.pt", help="A state_dict to load (weights_only)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of model initialisation and of RAD draws."),
        click.option("--device", type=str, default="cpu", show_default=True, metavar="cpu|cuda|auto"),
    ]):
        f = decorator(f)
    return f


def output_option(*names: str) -> Callable[[Callable], Callable]:
    """``--output KEY|INDEX`` (``names`` where a command uses --output for a file): which entry of a
    tuple/dict/ModelOutput model output the loss sees (radvar.outputs.select)."""
    return click.option(*(names or ("--output",)), "output_key", metavar="KEY|INDEX",
                        help="Entry of a tuple, dict or ModelOutput model output given to the loss: a key "
                             "(logits) or an index (0) [default: logits when present, else the first tensor].")


@dataclasses.dataclass
class Problem:
    """What a command analyses: a model, its data, a loss and where they live."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: specs.LossFn
    meta: dict[str, Any]


def load_problem(model: str | None, data_spec: str | None, loss_spec: str, model_args: tuple[str, ...],
                 weights: str | None, seed: int, device: str, output_key: str | None = None) -> Problem:
    """Resolve the specs (data first, so a zoo model can be sized to it), make the model return the
    tensor ``output_key`` selects, check they fit and all data is valid, move to device."""
    dev = specs.resolve_device(device)
    torch.manual_seed(seed)
    radvar.seed(seed)
    data_spec = data_spec or specs.default_data(model)
    x, y = specs.load_data(data_spec)
    net = specs.load_model(model, model_args, weights, data=(x, y))
    outputs.attach(net, outputs.parse_key(output_key))
    loss_fn = specs.load_loss(loss_spec)
    specs.check_fit(net, x, y, loss_fn)
    meta = {"model": model or "mlp (built-in default)", "data": data_spec, "loss": loss_spec,
            "examples": len(x), "input_shape": list(x.shape[1:]), "seed": seed, "device": str(dev),
            "parameters": sum(p.numel() for p in net.parameters())}
    return Problem(net.to(dev), x.to(dev), y.to(dev), loss_fn, meta)


def check_batch_size(problem: Problem, batch_size: int) -> None:
    """A step cannot use more examples than the data holds, nor fewer than the model runs on."""
    if batch_size > len(problem.x):
        raise specs.SpecError(f"--batch-size: {batch_size} is larger than the {len(problem.x)} examples of "
                              f"--data {problem.meta['data']!r}")
    if batch_size < (smallest := smallest_batch(problem.model)):
        raise specs.SpecError(f"--batch-size: {batch_size} is too small for a BatchNorm in training mode (it needs "
                              f"more than one value per channel); use --batch-size >= {smallest}")


def quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get(QUIET_KEY))


def timing_context() -> dict[str, Any]:
    """What measured step times depend on: torch's version, its intra-op threads and whether radvar's compiled
    CPU kernels ran (``compiled (<build hash>)`` or ``not built (numpy paths)``)."""
    kernels = f"compiled ({_native.build_id()})" if _native.available() else "not built (numpy paths)"
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "kernels": kernels}


def log(message: str) -> None:
    """A status line on stderr (silent under --quiet)."""
    if not quiet():
        click.echo(message, err=True)


def progress(total: int | None, desc: str) -> tqdm:
    """A tqdm bar on stderr, shown only when the work lasts over a second and not --quiet."""
    return tqdm(total=total, desc=desc, file=sys.stderr, delay=1.0, disable=quiet(), leave=False)


def ticker(bar: tqdm) -> Callable[[str], None]:
    """A progress callback: one tick per finished stage, the stage's name shown after the bar."""
    def tick(stage: str) -> None:
        bar.set_postfix_str(stage, refresh=False)
        bar.update()

    return tick
