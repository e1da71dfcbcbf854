"""The family registry: families named as families, one module each, no isinstance chains elsewhere."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import warnings

import pytest
import torch

from radvar import rng
from radvar.sketch import (Bernoulli, Family, Importance, Projection, Sketch, Subsample, ViewStats, families, family,
                           lookup)
from radvar.sketch.base import CLOSED

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_family_is_registered_under_its_kind():
    expected = {"bernoulli": Bernoulli, "importance": Importance, "projection": Projection, "subsample": Subsample}
    assert expected.items() <= families().items()
    assert lookup("subsample") is Subsample
    with pytest.raises(ValueError, match=r"unknown sketch kind 'sparse'; allowed: \['bernoulli'"):
        lookup("sparse")


def test_families_are_named_as_families():
    fam = Subsample.family(per_example=True)
    assert isinstance(fam, Family)
    assert fam.label() == "Subsample(per-example)" and repr(fam) == "Subsample.family(per_example=True)"
    assert fam.at(0.2) == Subsample(0.2, per_example=True)
    assert fam.sweep([0.1, 0.5]) == [Subsample(0.1, per_example=True), Subsample(0.5, per_example=True)]
    assert Projection.family(dist="gaussian").label() == "Projection(shared, dist=gaussian)"
    with pytest.raises(ValueError, match="per_example must be True"):
        Importance.family(per_example=False)


def test_axis_is_a_deprecated_alias_of_view():
    with pytest.warns(DeprecationWarning, match="use view="):
        s = Subsample(0.1, axis="rows")
    assert s == Subsample(0.1, view="rows")
    with pytest.warns(DeprecationWarning, match="use Sketch.view"):
        assert s.axis == "rows"
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="give view only"):
        Subsample(0.1, view="features", axis="rows")
    old = {"kind": "subsample", "keep": 0.1, "per_example": False, "axis": "rows", "replace": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Sketch.from_dict(old) == s  # plan files written before the rename still load, silently


def test_a_new_family_is_one_class_and_one_decorator():
    """A toy family (keep every entry, scale 1): registered, serialised, analysed, parsed by the CLI."""
    from cli import specs
    from radvar.tradeoff.candidates import reserved_bytes

    @family
    @dataclasses.dataclass(frozen=True)
    class Identityish(Sketch):
        tag: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
        kind = "identityish_test"

        def compress(self, x, gen):
            return (x.clone(),), {}

        def restore(self, saved, meta, gen):
            return saved[0]

        def saved_bytes(self, shape, dtype=torch.float32):
            return shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size()

        def variance(self, view):
            return 0.0, CLOSED

    try:
        s = Identityish(0.5, tag="b")
        assert Sketch.from_dict(s.to_dict()) == s
        assert specs.parse_sketch("identityish_test:0.5:b") == s
        view = ViewStats(3, 4, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, CLOSED)
        assert view.variance(s) == (0.0, CLOSED)
        assert reserved_bytes(s, (3, 4), torch.float32) == 48
        saved, meta = s.compress(torch.ones(3, 4), rng.generator(0, "cpu"))
        assert torch.equal(s.restore(saved, meta, rng.generator(0, "cpu")), torch.ones(3, 4))
    finally:
        del Sketch.registry["identityish_test"]


def test_a_kind_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="kind 'subsample' is already registered by Subsample"):
        @family
        @dataclasses.dataclass(frozen=True)
        class Other(Subsample):
            pass


def test_a_family_that_needs_entries_must_define_entry_stats():
    with pytest.raises(TypeError, match="NeedsEntries sets needs_entries = True but defines no entry_stats"):
        @family
        @dataclasses.dataclass(frozen=True)
        class NeedsEntries(Bernoulli):
            kind = "needs-entries-test"
            needs_entries = True
    assert "needs-entries-test" not in Sketch.registry


def test_entry_statistics_are_asked_for_by_name():
    view = ViewStats(2, 3, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, CLOSED)
    with pytest.raises(ValueError, match="Importance: its variance needs per-entry statistics"):
        view.variance(Importance(0.5))


@pytest.mark.parametrize("path", ["radvar/variance/forms.py", "radvar/tradeoff/candidates.py",
                                  "cli/specs/values.py", "radvar/variance/capture.py", "radvar/variance/analytic.py",
                                  "radvar/variance/plan_input.py"])
def test_no_isinstance_on_a_family_outside_its_module(path):
    names = set(families())
    classes = {cls.__name__ for cls in families().values()}
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            used = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            assert not used & classes, f"{path}:{node.lineno} dispatches on a family with isinstance"
    assert names  # the registry is not empty


def test_view_stats_has_no_family_specific_fields():
    fields = {f.name for f in dataclasses.fields(ViewStats)}
    for cls in families().values():
        assert not any(cls.kind in f or cls.__name__.lower() in f for f in fields), fields
    assert not any(f.startswith("proj") for f in fields)
