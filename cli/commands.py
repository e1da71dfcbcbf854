"""The ``radvar`` click group: errors are one line and exit status 2.

Bad input (any ``ValueError``/``TypeError``/``OSError`` raised while parsing
specs or calling the library) prints ``radvar: error: ...`` on stderr and
exits 2, as does a bad option value click rejects; anything else is a bug: one line and exit 1. ``--debug`` re-raises
so the traceback shows. Ctrl-C prints ``radvar: interrupted`` and exits 130
(the traceback too under ``--debug``). A closed stdout (``radvar zoo | head -1``)
ends the command quietly with status 141, as SIGPIPE would.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from typing import Any

import click

import radvar

from . import analyze, bench, report, tune, zoo
from .main import INTERRUPTED
from .options import DEBUG_KEY, runtime_options

BAD_INPUT = (ValueError, TypeError, OSError)


class Group(click.Group):
    """A click group that turns exceptions from its commands into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.UsageError as e:  # a subcommand's bad option value: one line too, exit 2
            if ctx.meta.get(DEBUG_KEY) or type(e).__name__ == "NoArgsIsHelpError":
                raise
            click.echo(f"radvar: error: {' '.join(e.format_message().split())}", err=True)
            ctx.exit(2)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            if ctx.meta.get(DEBUG_KEY):
                traceback.print_exc()
            click.echo(INTERRUPTED, err=True)
            ctx.exit(130)
        except BrokenPipeError:  # stdout closed early (radvar ... | head): stop quietly, as SIGPIPE would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except Exception as e:
            if ctx.meta.get(DEBUG_KEY):
                raise
            text = " ".join(str(e).split()) or type(e).__name__
            if isinstance(e, BAD_INPUT):
                click.echo(f"radvar: error: {text}", err=True)
                ctx.exit(2)
            click.echo(f"radvar: internal error: {type(e).__name__}: {text} (rerun with --debug for the traceback)",
                       err=True)
            ctx.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(radvar.__version__, "--version", prog_name="radvar", message="%(prog)s %(version)s")
@runtime_options
def cli() -> None:
    """Randomized automatic differentiation: where memory goes, what RAD saves, what it costs in variance."""


for command in (analyze.analyze, tune.tune, report.report, bench.bench, zoo.zoo):
    cli.add_command(command)
if importlib.util.find_spec(f"{__package__}.train") is not None:
    from .train import train

    cli.add_command(train)

