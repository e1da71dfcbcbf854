"""Atomic writes: nothing half-written is ever left at the destination.

Temporary files and folders are created with ``os.open(..., 0o666)`` and ``os.mkdir(..., 0o777)``,
so what radvar writes gets the user's umask (0644 files and 0755 folders under umask 022), as
any ordinary write would. A write error names the path the caller gave, never a temporary one.

Output folders carry a marker file (``.radvar-KIND.json``: format and version). A folder is only
ever replaced when it holds that marker and nothing but the files radvar writes there; a folder
holding anything else is refused, never merged into or emptied.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable, Collection, Iterator

MARKER_VERSION = 1


def _fresh(path: Path, make: Callable[[str], None], suffix: str = "") -> Path:
    """A new hidden entry beside ``path``, created by ``make`` (another name on a clash)."""
    for _ in range(100):
        tmp = path.absolute().parent / f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            make(str(tmp))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"cannot create a temporary name beside {str(path)!r}")


def _new_file(tmp: str) -> None:
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _new_folder(tmp: str) -> None:
    os.mkdir(tmp, 0o777)


def _named(e: OSError, path: str | os.PathLike) -> OSError:
    """The same kind of error, naming ``path`` (what the caller gave) and not a temporary file."""
    parent = Path(path).absolute().parent
    why = (f"folder {os.fspath(parent)!r} does not exist" if isinstance(e, FileNotFoundError) and not parent.is_dir()
           else (e.strerror or str(e)).lower())
    err = type(e)(f"cannot write {os.fspath(path)!r}: {why}")
    err.errno = e.errno
    return err


def _not_a_folder(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {os.fspath(path)!r}: it is a folder")


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block ends, so a swap of two paths is never cut in half."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:  # None: set outside Python
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(signal.SIGINT)  # now handled as it would have been (KeyboardInterrupt by default)


def check_writable(path: str | os.PathLike) -> None:
    """Raise, naming ``path``, unless a file can be written there (tried with a temporary file)."""
    _not_a_folder(Path(path))
    try:
        os.unlink(_fresh(Path(path), _new_file))
    except OSError as e:
        raise _named(e, path) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same suffix); it is renamed onto ``path`` when the
    block succeeds (``os.replace``, atomic on POSIX) and removed when it raises."""
    path = Path(path)
    _not_a_folder(path)
    try:
        tmp = _fresh(path, _new_file, path.suffix)
    except OSError as e:
        raise _named(e, path) from None
    try:
        yield str(tmp)
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _named(e, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def marker_name(kind: str) -> str:
    """The marker file of a radvar ``kind`` folder (e.g. ``.radvar-report.json``)."""
    return f".radvar-{kind}.json"


def check_folder(out: str | os.PathLike, kind: str, names: Collection[str]) -> Path:
    """Raise, naming ``out``, unless it can become a radvar ``kind`` folder: it does not exist, is
    empty, or holds radvar's marker and nothing but ``names``; and a folder can be made beside it."""
    out = Path(out)
    where = f"output folder {os.fspath(out)!r}"
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir():
            raise FileExistsError(f"{where} exists and is not a folder; choose a new path")
        present = {p.name for p in out.iterdir()}
        marker = marker_name(kind)
        if present and marker not in present:
            raise FileExistsError(f"{where} is not a radvar {kind} folder: it is not empty and has no {marker} "
                                  "marker; choose a new path or empty it")
        foreign = sorted(n for n in present if n not in {marker, *names}
                         or (out / n).is_symlink() or not (out / n).is_file())
        if foreign:
            raise FileExistsError(f"{where} is not a radvar {kind} folder: it holds {', '.join(foreign[:5])}"
                                  f"{', ...' if len(foreign) > 5 else ''}, which radvar did not write; "
                                  "choose a new path or move them")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{where}: parent folder {os.fspath(parent)!r} does not exist")
    try:
        os.rmdir(_fresh(out, _new_folder))  # a folder can be made beside it (permissions, read-only disk)
    except OSError as e:
        raise _named(e, out) from None
    return out


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, kind: str, names: Collection[str]) -> Iterator[Path]:
    """Yield a new temporary folder beside ``out`` to write ``names`` into. When the block succeeds
    the marker is added and the folder takes the place of ``out`` (an earlier radvar folder there,
    checked by :func:`check_folder`, is removed file by file); when it raises, nothing is left."""
    out = check_folder(out, kind, names)
    try:
        tmp = _fresh(out, _new_folder)
    except OSError as e:
        raise _named(e, out) from None
    old = None
    try:
        yield tmp
        (tmp / marker_name(kind)).write_text(json.dumps({"format": f"radvar-{kind}", "version": MARKER_VERSION})
                                             + "\n")
        with _deferred_interrupt():
            check_folder(out, kind, names)
            if out.exists() and any(out.iterdir()):
                old = _fresh(out, lambda t: os.rename(out, t))
            try:
                os.replace(tmp, out)
            except OSError as e:
                if old is not None:
                    os.rename(old, out)
                raise _named(e, out) from None
            if old is not None:
                _remove(old, [marker_name(kind), *names])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a fresh name of ours: nothing else is in it
        raise


def _remove(folder: Path, names: Collection[str]) -> None:
    """Remove ``names`` from ``folder``, then the folder if that left it empty."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        folder.rmdir()
