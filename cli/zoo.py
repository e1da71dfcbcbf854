"""``radvar zoo``: the built-in models and datasets."""

from __future__ import annotations

import click

from radvar import zoo as zoo_lib

from .options import runtime_options


@click.command()
@runtime_options
def zoo() -> None:
    """Built-in models and datasets (usable as MODEL and --data)."""
    width = max(map(len, zoo_lib.DESCRIPTIONS))
    for title, names in (("models", zoo_lib.MODELS), ("datasets", zoo_lib.DATASETS)):
        click.echo(f"{title}:")
        for name in names:
            click.echo(f"  {name:<{width}}  {zoo_lib.DESCRIPTIONS[name]}")
