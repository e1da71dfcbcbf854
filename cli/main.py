"""Entry point of the ``radvar`` command (installed as ``radvar_cli.main:main``).

Imports nothing heavy at module level, so that Ctrl-C during start-up (torch,
radvar and click load in :func:`main`) also ends with one line and exit 130. Ctrl-C is held
back while they load and acted on after: a KeyboardInterrupt raised inside a third-party
import (numpy's, for one) can be swallowed there and resurface as an unrelated error.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from typing import Any

INTERRUPTED = "radvar: interrupted"
STARTED: float | None = None  # time.perf_counter() when main() began, before the heavy imports


def main() -> None:
    """Run the ``radvar`` click group; Ctrl-C at any point prints one line and exits 130."""
    global STARTED
    STARTED = time.perf_counter()
    try:
        cli = _load_cli()
        cli(prog_name="radvar")
    except KeyboardInterrupt:
        if "--debug" in sys.argv[1:]:
            traceback.print_exc()
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)


def _load_cli() -> Any:
    """Import the click group with SIGINT deferred until the imports are done (then raised as
    KeyboardInterrupt); outside the main thread, where no handler can be set, import plainly."""
    held: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    except ValueError:  # not the main thread
        from .commands import cli

        return cli
    try:
        from .commands import cli
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt
    return cli


def __getattr__(name: str) -> Any:
    """``cli`` (the click group) is loaded on first use: ``from cli.main import cli`` keeps working."""
    if name == "cli":
        from .commands import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
