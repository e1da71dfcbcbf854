"""The one shape of radvar's result objects, and the JSON helpers they share.

A :class:`Result` (``radvar.variance.VarianceReport``, ``radvar.report.Analysis``) has

* ``per_layer`` — a pandas DataFrame, one row per layer (per layer and keep where keeps vary);
* ``total`` — a pandas DataFrame of the sums (one row, or one per keep);
* ``meta`` — a dict of what was analysed and how;
* ``summary()`` (plain text, also ``str(result)``), ``_repr_html_()`` (notebooks),
  and ``to_dict()`` / ``from_dict()`` (strict JSON: NaN and infinities become null).

This module imports nothing of radvar, so every layer can use it.
"""

from __future__ import annotations

import abc
import html
import math
from typing import Any, Mapping, TypeVar

import pandas as pd

R = TypeVar("R", bound="Result")


def clean(value: Any) -> Any:
    """A JSON-safe scalar: numpy scalars -> Python, NaN and ±inf -> None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``frame`` as JSON-safe dicts."""
    return [{k: clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def from_records(rows: Any, columns: list[str] | None, what: str) -> pd.DataFrame:
    """Inverse of :func:`records`: a list of dicts -> DataFrame, null back to NaN in numeric columns.

    ``columns`` (if given) must all be present in every record; ``what`` names the field in errors.
    """
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{what} must be a list of objects, got {type(rows).__name__}")
    if columns is not None:
        missing = {c for r in rows for c in columns if c not in r}
        if missing:
            raise ValueError(f"{what} records lack {sorted(missing)}; expected columns {columns}")
    out = pd.DataFrame.from_records(rows, columns=columns)
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: v is None or isinstance(v, (int, float))).all():
            out[col] = pd.to_numeric(out[col], errors="coerce")
    return out


def table(frame: pd.DataFrame) -> str:
    """A frame as aligned text, empty columns dropped, four significant digits."""
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        return frame.dropna(axis=1, how="all").to_string(index=False)


def html_facts(title: str, meta: Mapping[str, Any]) -> str:
    """A heading and the scalar entries of ``meta`` as an HTML list."""
    facts = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>"
                    for k, v in meta.items() if not isinstance(v, (dict, list)))
    return f"<h4>{html.escape(title)}</h4><ul>{facts}</ul>"


class Result(abc.ABC):
    """Base of radvar's result objects: ``per_layer``, ``total``, ``meta`` and the methods below."""

    per_layer: pd.DataFrame
    total: pd.DataFrame
    meta: dict[str, Any]

    @abc.abstractmethod
    def summary(self) -> str:
        """The result as plain text."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The result as strict JSON (NaN and infinities as null)."""

    @classmethod
    @abc.abstractmethod
    def from_dict(cls: type[R], d: Any) -> R:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming what is wrong."""

    @property
    def heading(self) -> str:
        """The title of :meth:`summary` and :meth:`_repr_html_`."""
        return f"radvar {type(self).__name__}"

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        fmt = "{:.4g}".format
        return (html_facts(self.heading, self.meta)
                + self.per_layer.dropna(axis=1, how="all").to_html(index=False, float_format=fmt)
                + "<p>total</p>" + self.total.dropna(axis=1, how="all").to_html(index=False, float_format=fmt))
