"""The batch-size model of RAD variance (radvar.tradeoff.batch) against direct measurement at a second batch size.

On a finite population (one batch of B examples), E over random sub-batches S of size s of a
statistic quadratic in the batch mean is exactly c̄ + (d̄ − c̄)/s (self and cross terms), so:
per-example sketches must match the average over a partition exactly; shared ones must match the
average over random partitions within a z-bound from both estimates' standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps

from radvar.sketch import Subsample
from radvar.tradeoff import DEFAULT_FAMILIES
from radvar.tradeoff import batch as tb
from radvar.variance.capture import capture, layer_variance

from .tradeoff_cases import small_digits_mlp

B, GROUPS, B2, PARTITIONS = 96, 12, 24, 8
KEEPS = (0.1, 0.3)


@pytest.fixture(scope="module")
def fitted():
    model, _, batch = small_digits_mlp(B)
    return model, batch, tb.batch_model(model, batch, F.cross_entropy, DEFAULT_FAMILIES, KEEPS, groups=GROUPS)


def _group_variances(model, batch, table, order, importance=True):
    """Per group of size B2 under permutation ``order``: every table row's layer variance."""
    (x,), y = batch
    out = []
    for j in range(B // B2):
        idx = order[j * B2:(j + 1) * B2]
        cap = capture(model, (x[idx], y[idx]), F.cross_entropy, importance=importance)
        out.append([layer_variance(cap[r.layer], r.sketch if r.family != "exact" else None)[0]
                    for r in table.itertuples()])
    return np.array(out)


def test_per_example_sketches_scale_as_one_over_batch_exactly(fitted):
    model, batch, bm = fitted
    direct = _group_variances(model, batch, bm.table, torch.arange(B)).mean(0)
    pred = bm.variance_at(B2)
    per_ex = bm.table["sketch"].map(lambda s: s is not None and s.per_example).to_numpy()
    assert per_ex.sum() > 0
    np.testing.assert_allclose(pred[per_ex], direct[per_ex], rtol=1e-9)  # float64 statistics


def test_shared_sketches_match_random_partitions_within_their_standard_errors(fitted):
    model, batch, bm = fitted
    gen = torch.Generator().manual_seed(1)
    shared_table = bm.table.assign(sketch=bm.table["sketch"].map(
        lambda sk: sk if sk is not None and not sk.per_example else None))  # per-example rows: checked above
    per_partition = np.array([_group_variances(model, batch, shared_table, torch.randperm(B, generator=gen),
                                               importance=False).mean(0) for _ in range(PARTITIONS)])
    direct, se_direct = per_partition.mean(0), per_partition.std(0, ddof=1) / np.sqrt(PARTITIONS)
    se_pred = bm.variance_se_at(B2)  # |w| sd(q_g)/√groups from the sub-batches the model was fitted on
    shared = bm.table["sketch"].map(lambda sk: sk is not None and not sk.per_example).to_numpy()
    pred = bm.variance_at(B2)
    z = sps.norm.ppf(1 - 1e-3 / (2 * shared.sum()))  # Bonferroni over the shared options, family-wise 1e-3
    bound = z * np.sqrt(se_pred ** 2 + se_direct ** 2)
    assert np.all(np.abs(pred - direct)[shared] <= bound[shared]), (pred[shared], direct[shared], bound[shared])
    # the model is not trivially flat: the shared variance at B2 exceeds that at B by more than the bound
    q_b = bm.table["variance"].to_numpy()
    assert np.all((direct - q_b)[shared] > bound[shared])


def test_bytes_scale_with_the_batch(fitted):
    _, _, bm = fitted
    np.testing.assert_array_equal(bm.bytes_at(B), bm.base.table["bytes"].to_numpy())
    exact = (bm.table["family"] == "exact").to_numpy()
    np.testing.assert_array_equal(bm.bytes_at(B2)[exact] * (B // B2), bm.bytes_at(B)[exact])


def test_bad_arguments(fitted):
    model, batch, _ = fitted
    with pytest.raises(ValueError, match="groups must be an int in"):
        tb.batch_model(model, batch, F.cross_entropy, DEFAULT_FAMILIES, KEEPS, groups=1)
    with pytest.raises(ValueError, match="view='rows'"):
        tb.batch_model(model, batch, F.cross_entropy, (Subsample.family(view="rows"),), KEEPS)
