"""The catalogue: validation, serialisation, contractions, saved bytes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radvar import _bits, _native, rng
from radvar.sketch import Bernoulli, Importance, Projection, Quantize, Sketch, Subsample, inclusion_probabilities

ALL = [Bernoulli(0.25), Bernoulli(0.25, per_example=False), Subsample(0.25), Subsample(0.25, per_example=True),
       Subsample(0.25, replace=True), Subsample(0.25, True, replace=True), Projection(0.25),
       Projection(0.25, dist="gaussian", per_example=True), Importance(0.25)]


@pytest.mark.parametrize("cls", [Bernoulli, Subsample, Projection, Importance])
@pytest.mark.parametrize("keep", [0, -0.1, 1.0001, 2, math.nan, math.inf])
def test_bad_keep_is_a_value_error_naming_the_value(cls, keep):
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\], got"):
        cls(keep)


@pytest.mark.parametrize("keep", ["0.1", None, True])
def test_non_numeric_keep_is_a_type_error(keep):
    with pytest.raises(TypeError, match="keep must be a number"):
        Subsample(keep)


def test_bad_options():
    with pytest.raises(ValueError, match=r"dist must be one of \('rademacher', 'gaussian'\), got 'uniform'"):
        Projection(0.1, dist="uniform")
    with pytest.raises(ValueError, match="view must be one of"):
        Subsample(0.1, view="channels")
    with pytest.raises(ValueError, match="per_example must be True"):
        Importance(0.1, per_example=False)
    with pytest.raises(TypeError, match="replace must be a bool"):
        Subsample(0.1, replace="yes")
    with pytest.raises(ValueError, match="unknown sketch kind 'sparse'"):
        Sketch.from_dict({"kind": "sparse", "keep": 0.1})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['scale'\]"):
        Sketch.from_dict({"kind": "subsample", "keep": 0.1, "scale": 2})


@pytest.mark.parametrize("sketch", ALL, ids=lambda s: s.label())
def test_round_trip_and_contractions(sketch):
    assert Sketch.from_dict(sketch.to_dict()) == sketch
    x = torch.randn(9, 16, dtype=torch.float64).relu()
    saved, meta = sketch.compress(x, rng.generator(3, "cpu"))
    dense = sketch.restore(saved, meta, rng.generator(3, "cpu"))
    a, b = torch.randn(4, 9, dtype=torch.float64), torch.randn(16, 5, dtype=torch.float64)
    torch.testing.assert_close(sketch.left_matmul(a, saved, meta, rng.generator(3, "cpu")), a @ dense)
    torch.testing.assert_close(sketch.right_matmul(saved, meta, rng.generator(3, "cpu"), b), dense @ b)


@pytest.mark.parametrize("sketch", [s for s in ALL if not isinstance(s, (Bernoulli, Importance))],
                         ids=lambda s: s.label())
def test_saved_bytes_matches_what_compress_keeps(sketch):
    x = torch.randn(30, 40)
    saved, _ = sketch.compress(x, rng.generator(1, "cpu"))
    assert sum(t.numel() * t.element_size() for t in saved) == sketch.saved_bytes((30, 40), torch.float32)


def test_random_size_sketches_keep_their_expected_bytes_on_average():
    x = torch.randn(50, 64)
    for sketch in [Bernoulli(0.2), Importance(0.2)]:
        sizes = [sum(t.numel() * t.element_size() for t in sketch.compress(x, rng.generator(i, "cpu"))[0])
                 for i in range(50)]
        expected = sketch.saved_bytes((50, 64))
        assert abs(sum(sizes) / len(sizes) - expected) < 0.05 * expected


def test_importance_probabilities():
    x = torch.tensor([[10.0, 1.0, 1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 3.0, 0.0, 0.0, 0.0]])
    pi = inclusion_probabilities(x, keep=0.5)  # budget 3 per row
    torch.testing.assert_close(pi[0], torch.tensor([1.0, 0.5, 0.5, 0.5, 0.0, 0.5]))
    torch.testing.assert_close(pi[1], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    big = torch.randn(20, 50)
    pi = inclusion_probabilities(big, keep=0.1)
    torch.testing.assert_close(pi.sum(1), torch.full((20,), 5.0))
    assert (pi <= 1).all() and (pi >= 0).all()


def test_importance_picks_the_smaller_index_format():
    x = torch.randn(40, 1000)
    assert Importance(0.01).compress(x, rng.generator(0, "cpu"))[1]["format"] == "int16"
    assert Importance(0.5).compress(x, rng.generator(0, "cpu"))[1]["format"] == "bitmap"


@pytest.mark.skipif(not _native.available(), reason="radvar's C kernels were not built (no C compiler at install)")
@pytest.mark.parametrize("shape, keep, relu", [((150, 784), 0.1, True), ((40, 1000), 0.01, False), ((7, 13), 0.3, True),
                                               ((3, 5), 0.9, False), ((1, 1), 0.5, False)])
def test_importance_compiled_kernel_gives_the_numpy_paths_draw(shape, keep, relu, monkeypatch):
    """Importance's compiled compress stores bitwise what its numpy path stores with the same row scales
    (values, index format and index), rows with capped entries, all-zero rows and both index formats
    included; the compiled restore rebuilds bitwise the numpy path's x̂."""
    from radvar.sketch import importance

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    x = x.relu() if relu else x
    x[0, : max(1, shape[1] // 2)] = 0.0
    sketch = Importance(keep)
    saved, meta = sketch.compress(x, rng.generator(9, "cpu"))
    restored = sketch.restore(saved, meta, rng.generator(9, "cpu"))
    monkeypatch.setattr(_native, "available", lambda: False)
    scales, torch_scales = _native.importance_scales(x, keep), importance._row_scales
    monkeypatch.setattr(importance, "_row_scales", lambda v, k: (torch_scales(v, k)[0], scales))  # same c
    want, want_meta = sketch.compress(x, rng.generator(9, "cpu"))
    assert meta == want_meta and len(saved) == len(want)
    for got, ref in zip(saved, want):
        assert got.dtype == ref.dtype and torch.equal(got, ref)
    assert torch.equal(restored, sketch.restore(want, want_meta, rng.generator(9, "cpu")))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_bit_packing_round_trip(bits):
    mask = torch.tensor(bits)
    packed = _bits.pack(mask)
    assert packed.numel() == (len(bits) + 7) // 8
    assert torch.equal(_bits.unpack(packed, mask.shape), mask)
    torch.testing.assert_close(_bits.select(packed, mask.shape, 2.0, -1.0, torch.float64),
                               torch.where(mask, 2.0, -1.0).double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_numpy_and_torch_bit_paths_agree(dtype, monkeypatch):
    mask = torch.rand(1001, generator=torch.Generator().manual_seed(2)) < 0.4
    fast = _bits.pack(mask), _bits.select(_bits.pack(mask), mask.shape, 1.0, 0.25, dtype)
    monkeypatch.setattr(_bits, "numpy_ok", lambda t: False)
    slow = _bits.pack(mask), _bits.select(_bits.pack(mask), mask.shape, 1.0, 0.25, dtype)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1]) and fast[1].dtype == dtype


@pytest.mark.skipif(not _native.available(), reason="radvar's C kernels were not built (no C compiler at install)")
def test_compiled_importance_scales_match_the_sorted_water_filling():
    """The compiled row scales (fixed-point water-filling, a sort after 16 rounds) equal the sorted torch path's
    to float32 rounding: uncapped rows, heavy-tailed rows, a geometric row whose capped set grows one entry a
    round (the sort fallback), rows with at most keep·n nonzeros (∞) and all-zero rows."""
    from radvar.sketch.importance import _row_scales

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(12, 300, generator=gen).relu() * torch.rand(12, 1, generator=gen) ** 4
    x[1] = torch.randn(300, generator=gen).abs() ** 6
    x[2] = 0.7 ** torch.arange(300.0)  # keep 0.5: about 20 rounds, so the sort fallback
    x[3] = 0.0
    x[4] = 0.0
    x[4, :5] = torch.tensor([1.0, -2.0, 3.0, 0.5, 7.0])
    for keep in (0.01, 0.1, 0.5):
        want = _row_scales(x, keep)[1]
        got = _native.importance_scales(x, keep)
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got)) and not finite[3] and bool(finite[4]) == (5 > keep * 300)
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-6, atol=0.0)


@pytest.mark.skipif(not _native.available(), reason="radvar's C kernels were not built (no C compiler at install)")
@pytest.mark.parametrize("sketch", [Subsample(0.1), Subsample(0.37), Bernoulli(0.2, per_example=False)],
                         ids=lambda s: s.label())
def test_shared_column_weight_gradient_compiled_equals_torch(sketch, monkeypatch):
    """A shared column sketch's ``left_matmul`` (the weight gradient): the compiled zero-and-scatter pass gives
    bitwise torch's tensor; an index outside the columns is refused."""
    gen = torch.Generator().manual_seed(2)
    x, a = torch.randn(150, 97, generator=gen), torch.randn(31, 150, generator=gen)
    saved, meta = sketch.compress(x, rng.generator(3, "cpu"))
    fast = sketch.left_matmul(a, saved, meta, rng.generator(3, "cpu"))
    monkeypatch.setattr(_native, "available", lambda: False)
    assert torch.equal(fast, sketch.left_matmul(a, saved, meta, rng.generator(3, "cpu")))
    cols, idx = torch.randn(7, 5, generator=gen), torch.tensor([4, 0, 9, 2, 6])
    want = torch.zeros(7, 10)
    want[:, idx] = cols * 2.5
    for layout in (cols, cols.t().contiguous().t()):  # row-major, and a transposed product's strides
        assert torch.equal(_native.scatter_columns(layout, idx, 10, 2.5), want)
    with pytest.raises(ValueError, match="outside"):
        _native.scatter_columns(torch.ones(2, 2), torch.tensor([0, 7]), 5, 1.0)


@pytest.mark.skipif(not _native.available(), reason="radvar's C kernels were not built (no C compiler at install)")
def test_compiled_scatter_refuses_an_index_that_does_not_match_its_values():
    """The compiled restore writes only in bounds and says when the index and the values disagree."""
    values = torch.ones(3)
    with pytest.raises(ValueError, match="names 2 kept entries"):
        _native.scatter_kept(values, (_bits.pack(torch.tensor([True, False, True, False])),), (2, 2))
    with pytest.raises(ValueError, match="outside"):
        _native.scatter_kept(values, (torch.tensor([0, 5, 1], dtype=torch.int16),
                                      torch.tensor([2, 1], dtype=torch.int32)), (2, 2))
    with pytest.raises(ValueError, match="uint8 bytes"):
        _native.scatter_kept(values, (torch.zeros(9, dtype=torch.uint8),), (2, 2))
    out = _native.scatter_kept(values, (torch.tensor([1, 0, 1], dtype=torch.int16),
                                        torch.tensor([2, 1], dtype=torch.int32)), (2, 2))
    assert torch.equal(out, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))


@pytest.mark.skipif(not _native.available(), reason="radvar's C kernels were not built (no C compiler at install)")
@pytest.mark.parametrize("numel", [1, 7, 8, 1001, 4096])
@pytest.mark.parametrize("on, off", [(1.0, 0.0), (1.0, 0.01), (1.0 / 0.7, 0.0)])
def test_scale_by_mask_compiled_equals_the_decoded_product(numel, on, off, monkeypatch):
    """A gradient through a kept 1-bit mask: the compiled one-pass product is bitwise the decoded
    ``g * select(...)``, out of place and in place (negative zeros and NaN included)."""
    gen = torch.Generator().manual_seed(numel)
    g = torch.randn(numel, generator=gen)
    g[0] = float("nan") if numel > 1 else -1.0
    packed = _bits.pack(torch.rand(numel, generator=gen) < 0.5)
    fast, inplace = _bits.scale_by_mask(g, packed, on, off), _bits.scale_by_mask(g.clone(), packed, on, off, True)
    monkeypatch.setattr(_native, "available", lambda: False)
    want = _bits.scale_by_mask(g, packed, on, off)
    assert torch.equal(fast.nan_to_num(7.0), want.nan_to_num(7.0)) and torch.equal(inplace.isnan(), want.isnan())
    assert torch.equal(fast.signbit(), want.signbit()) and torch.equal(inplace.nan_to_num(7.0), want.nan_to_num(7.0))


@pytest.mark.skipif(not _native.available(), reason="radvar's C kernels were not built (no C compiler at install)")
@pytest.mark.parametrize("numel", [1, 7, 8, 13, 1001, 4096])
def test_relu_and_its_mask_compiled_equal_torch(numel, monkeypatch):
    """The ReLU forward that keeps a 1-bit mask: the compiled one-pass output and mask are bitwise torch.relu's
    and the packed ``y.bool()`` (NaN, infinities and both zeros included; lengths off whole bytes)."""
    from radvar.ops.activation import leaky_relu_mask

    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    special = torch.tensor([float("nan"), -0.0, 0.0, -1.0, float("inf"), -float("inf"), 2.0])
    x[:min(numel, 7)] = special[:min(numel, 7)]
    y, mask = leaky_relu_mask(x, 0.0)
    monkeypatch.setattr(_native, "available", lambda: False)
    y_torch, mask_torch = leaky_relu_mask(x, 0.0)
    assert torch.equal(y.nan_to_num(7.0), y_torch.nan_to_num(7.0)) and torch.equal(y.signbit(), y_torch.signbit())
    assert torch.equal(y.isnan(), y_torch.isnan()) and torch.equal(mask, mask_torch)


@pytest.mark.parametrize("sketch", ALL, ids=lambda s: s.label())
def test_float64_stays_float64(sketch):
    """Saved values and the reconstruction keep float64 (issue: Importance rounded through float32)."""
    x = torch.randn(9, 16, dtype=torch.float64).relu()
    saved, meta = sketch.compress(x, rng.generator(3, "cpu"))
    assert all(t.dtype == torch.float64 for t in saved if t.is_floating_point())
    assert sketch.restore(saved, meta, rng.generator(3, "cpu")).dtype == torch.float64


def test_importance_float64_is_exact_where_every_nonzero_is_kept():
    """π = 1 for every nonzero when a row has at most keep·n of them: x̂ = x bit for bit in float64."""
    x = torch.zeros(6, 40, dtype=torch.float64)
    x[:, :5] = torch.randn(6, 5, dtype=torch.float64) * 1e3 + 1 / 3
    sketch = Importance(0.25)
    pi = inclusion_probabilities(x, 0.25)
    assert pi.dtype == torch.float64
    saved, meta = sketch.compress(x, rng.generator(0, "cpu"))
    assert torch.equal(sketch.restore(saved, meta, rng.generator(0, "cpu")), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,keep,sparse", [((16, 64), 0.3, False), ((16, 64), 0.3, True), ((20, 400), 0.01, False)])
def test_importance_saved_bytes_bounds_the_mean_and_the_reservation_every_draw(dtype, shape, keep, sparse):
    """``saved_bytes`` is an upper bound on the mean bytes (checked within 4 standard errors of the
    sample mean); the tuner's reservation is never exceeded by any of 500 draws."""
    from radvar.tradeoff.candidates import reserved_bytes

    x = torch.randn(shape, dtype=dtype)
    x = x.relu() if sparse else x
    sketch = Importance(keep)
    sizes = torch.tensor([float(sum(t.numel() * t.element_size() for t in sketch.compress(x, rng.generator(i, "cpu"))[0]))
                          for i in range(500)], dtype=torch.float64)
    se = float(sizes.std()) / len(sizes) ** 0.5
    assert float(sizes.mean()) <= sketch.saved_bytes(shape, dtype) + 4 * se
    assert float(sizes.max()) <= reserved_bytes(sketch, shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cpu_fast_paths_agree_with_torch(dtype):
    """``less`` (numpy's comparison on CPU) equals torch's ``<`` for tensors, broadcast rows, scalars on
    either side and NaN."""
    from radvar.sketch.base import less

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(7, 33, generator=g, dtype=dtype), torch.rand(7, 33, generator=g, dtype=dtype)
    a[0, :5] = float("nan")
    b[1, :3] = a[1, :3]  # ties: not less
    for got, want in [(less(a, b), a < b), (less(a, b[:1]), a < b[:1]), (less(a, 0.3), a < 0.3),
                      (less(0.3, a), a > 0.3)]:
        assert got.dtype == torch.bool and torch.equal(got, want)


def test_bernoulli_positions_are_iid_trials():
    """``bernoulli_positions``: sorted distinct positions in [0, numel), the same for the same key; over 4,000
    draws of 60 trials each position succeeds with frequency p within 5 binomial sd (geometric gaps on CPU
    for p <= GAP_KEEP); above GAP_KEEP, exactly the true entries of ``coins``."""
    from radvar.sketch.base import GAP_KEEP, bernoulli_positions, coins, flat_nonzero

    like = torch.zeros(())
    for p in (0.01, 0.1, GAP_KEEP):
        pos = bernoulli_positions(150 * 784, p, rng.generator(1, "cpu"), like)
        assert pos.dtype == torch.int64 and (pos.diff() > 0).all() and 0 <= pos[0] and pos[-1] < 150 * 784
        assert abs(pos.numel() - p * 150 * 784) <= 5 * (150 * 784 * p * (1 - p)) ** 0.5
        assert torch.equal(pos, bernoulli_positions(150 * 784, p, rng.generator(1, "cpu"), like))
        draws, numel = 4000, 60
        counts = torch.zeros(numel)
        for key in range(draws):
            counts[bernoulli_positions(numel, p, rng.generator(key, "cpu"), like)] += 1
        assert ((counts - draws * p).abs() <= 5 * (draws * p * (1 - p)) ** 0.5).all(), (p, counts)
    assert torch.equal(bernoulli_positions(500, 0.5, rng.generator(2, "cpu"), like),
                       flat_nonzero(coins((500,), 0.5, rng.generator(2, "cpu"), like)))


def _check_k_subsets_uniform(seed: int) -> None:
    """k distinct columns per row, the same for the same key; over 20,000 rows each column is kept with
    frequency k/n within 5 binomial standard deviations (a position bias would show); every 2-subset of 6
    columns equally likely over 30,000 rows (chi-square statistic below its 1e-6 upper quantile)."""
    from scipy.stats import chi2

    from radvar.sketch.base import k_subsets

    like = torch.zeros(())
    picked = k_subsets(7, 33, 5, rng.generator(seed, "cpu"), like)
    assert picked.shape == (7, 5) and picked.dtype == torch.int64
    assert torch.equal(picked, k_subsets(7, 33, 5, rng.generator(seed, "cpu"), like))
    assert torch.equal(k_subsets(3, 4, 4, rng.generator(seed, "cpu"), like).sort(1).values, torch.arange(4).repeat(3, 1))
    rows, n, k = 20_000, 33, 5
    many = k_subsets(rows, n, k, rng.generator(seed + 1, "cpu"), like)
    assert (many.sort(1).values.diff(dim=1) > 0).all() and many.min() >= 0 and many.max() < n
    counts = torch.bincount(many.reshape(-1), minlength=n).double()
    p = k / n
    assert ((counts - rows * p).abs() <= 5 * (rows * p * (1 - p)) ** 0.5).all(), counts
    rows, n = 30_000, 6
    pairs = k_subsets(rows, n, 2, rng.generator(seed + 2, "cpu"), like).sort(1).values
    seen = torch.bincount(pairs[:, 0] * n + pairs[:, 1], minlength=n * n).double()
    observed = seen[[i * n + j for i in range(n) for j in range(i + 1, n)]]
    expected = rows / observed.numel()
    assert observed.sum() == rows
    assert float(((observed - expected) ** 2 / expected).sum()) < chi2.isf(1e-6, observed.numel() - 1), observed


@pytest.mark.skipif(not _native.available(), reason="radvar's C kernels were not built (no C compiler at install)")
def test_k_subsets_compiled_floyd_is_uniform():
    """``k_subsets`` with the compiled kernel (Floyd's algorithm)."""
    _check_k_subsets_uniform(3)


def test_k_subsets_numpy_picks_the_k_smallest_keys_uniformly(monkeypatch):
    """``k_subsets`` without the compiled kernel: per row the positions of the k smallest raw words one key
    draws (numpy's argpartition), and uniform as above."""
    import numpy as np

    from radvar.sketch.base import _words, k_subsets

    monkeypatch.setattr(_native, "available", lambda: False)
    like = torch.zeros(())
    picked = k_subsets(7, 33, 5, rng.generator(3, "cpu"), like)
    keys = torch.from_numpy(_words(rng.generator(3, "cpu"), (7, 33)).astype(np.int64))
    assert torch.equal(picked.sort(1).values, keys.argsort(1)[:, :5].sort(1).values)
    _check_k_subsets_uniform(3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_signs_are_fair_and_reproducible(dtype):
    """``signs`` gives exactly ±scale, each with probability 1/2 (the count of + lies within 5 binomial
    standard deviations of half), the same draws for the same key, and odd shapes."""
    from radvar.sketch.base import signs

    like = torch.zeros((), dtype=dtype)
    r = signs((301, 7), rng.generator(4, "cpu"), like, 0.25)
    assert r.shape == (301, 7) and r.dtype == dtype
    assert torch.equal(r.abs(), torch.full_like(r, 0.25))
    n, plus = r.numel(), int((r > 0).sum())
    assert abs(plus - n / 2) <= 5 * (n / 4) ** 0.5
    assert torch.equal(r, signs((301, 7), rng.generator(4, "cpu"), like, 0.25))
    assert not torch.equal(r, signs((301, 7), rng.generator(5, "cpu"), like, 0.25))


@pytest.mark.parametrize("p", [1e-7, 0.1, 0.25, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coins_draw_what_uniform_below_p_draws(p, dtype):
    """``coins`` (raw words against an integer threshold on CPU) is bitwise ``uniform < p`` for one key."""
    from radvar.sketch.base import coins, less, uniform

    like = torch.zeros((), dtype=dtype)
    for shape in [(150, 784), (7,), (3, 5, 9)]:
        assert torch.equal(coins(shape, p, rng.generator(9, "cpu"), like),
                           less(uniform(shape, rng.generator(9, "cpu"), like), p))


@pytest.mark.parametrize("sketch", [Importance(0.3), Bernoulli(0.3), Quantize(2)], ids=lambda s: s.label())
def test_entry_variance_is_the_spread_of_independent_draws(sketch):
    """Sketches that draw entries independently give Var(x̂_ij) per entry, so Var(Σ a_ij x̂_ij) = Σ a_ij²
    Var(x̂_ij) for any fixed a (what the variance analysis uses): 4,000 draws of a 6 x 10 float64 tensor (one
    entry exactly zero) for 5 random a, each sample variance within 5 sd of Σ a² Var (sd from the draws' own
    fourth moment of the sum: √((μ4/σ⁴ − 1)/N)); zero variance where a draw never moves the entry (x = 0 when
    sampled, each row's ends when rounded); the draws of different entries uncorrelated (|r| < 5/√N)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, dtype=torch.float64, generator=gen)
    x[2, 3] = 0.0
    assert sketch.independent_entries
    draws = torch.stack([_drawn(sketch, x, seed) for seed in range(4000)])
    want, centred = sketch.entry_variance(x), draws - x
    some = want > 0
    assert (draws.var(0)[~some] == 0).all() and (isinstance(sketch, Quantize) or not some[2, 3])
    for a in torch.randn(5, 6, 10, dtype=torch.float64, generator=gen):
        sums = (centred * a).sum((1, 2))
        var, expected = float(sums.var()), float((a * a * want).sum())
        kurtosis = float((sums - sums.mean()).pow(4).mean()) / var ** 2
        assert abs(var - expected) <= 5 * expected * math.sqrt((kurtosis - 1) / len(draws)), (var, expected)
    corr = torch.corrcoef(centred[:, some].t()) - torch.eye(int(some.sum()), dtype=torch.float64)
    assert corr.abs().max() < 5 / math.sqrt(len(draws))


def _drawn(sketch: Sketch, x: torch.Tensor, seed: int) -> torch.Tensor:
    """x̂ of one draw: compress and restore with the same generator state (as the ops do)."""
    saved, meta = sketch.compress(x, rng.generator(seed, x.device))
    return sketch.restore(saved, meta, rng.generator(seed, x.device))


@pytest.mark.parametrize("sketch", [Subsample(0.3), Subsample(0.3, per_example=True), Bernoulli(0.3, per_example=False),
                                    Projection(0.3), Quantize(2, sample=Subsample(0.5))], ids=lambda s: s.label())
def test_sketches_with_dependent_entries_give_no_entry_variance(sketch):
    assert not sketch.independent_entries
    with pytest.raises(ValueError, match="not drawn independently"):
        sketch.entry_variance(torch.randn(4, 8))
