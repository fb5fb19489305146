"""Streamed linear CKA matches a float64 reference whatever the row order (issue 13, item 4).

Shifting by a layer's first row let an atypical first row cost these cases up to 0.8 (or a
false NaN); the centre is now a median and far rows go through float64 products. The default
accumulator (`exact=True`, what the study streams with: every row in float64, measured within
2e-10) and layers whose rows were all held before their centre was fixed (n < 64) are held to
EXACT_TOL = 1e-8. The fast mode (`exact=False`) keeps the float32 GEMMs' rounding of the rows
near the centre, order-independent and measured up to 9e-8 on these narrow layers, so it is
held to DEFAULT_TOL, which the first-row shift failed on every outlier case (by 5x to 3e6x, or NaN).
"""

import numpy as np
import pytest

from mossa.similarity import StreamingLinearCKA, layerwise_linear_cka

EXACT_TOL = 1e-8
DEFAULT_TOL = 3e-7
TOL = {True: EXACT_TOL, False: DEFAULT_TOL}


def _data(rng, n, d, layers=2, offset=0.0):
    A = rng.normal(size=(layers, n, d))
    B = A @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=(layers, n, d))
    return A + offset, B - offset


def _outlier(arrays, rng, scale, row=0):
    """float32 copies with `row` moved `scale` times the typical spread away from the bulk."""
    out = []
    for X in arrays:
        X = X.copy()
        X[:, row] = X.mean(axis=1) + scale * X.std(axis=1) * rng.normal(size=X[:, row].shape)
        out.append(X.astype(np.float32))
    return out


def test_the_default_accumulator_is_the_exact_one():
    assert StreamingLinearCKA([("A", "B")]).exact


def _stream(A, B, plan, exact=False):
    """Stream rows in chunks of sizes plan[0], plan[1], plan[1], ... (None: all rows at once)."""
    acc = StreamingLinearCKA([("A", "B")], exact=exact)
    start, sizes = 0, list(plan)
    while start < A.shape[1]:
        size = sizes.pop(0) if len(sizes) > 1 else sizes[0]
        size = size or A.shape[1]
        acc.update({"A": A[:, start:start + size], "B": B[:, start:start + size]})
        start += size
    return acc


def _errors(acc, A, B):
    """Per estimator, the largest |streamed - float64 reference| over layers; asserts none undefined."""
    out = {}
    for debiased in (False, True):
        got = acc.results("A", "B", debiased=debiased)
        ref = layerwise_linear_cka(A.astype(np.float64), B.astype(np.float64), debiased=debiased)
        assert all(r.reason is None for r in ref)
        assert [g.reason for g in got] == [None] * len(got), [g.reason for g in got]
        out[debiased] = max(abs(g.value - r.value) for g, r in zip(got, ref))
    return out


PLANS = {"rows one by one": (1,), "outlier alone, then 37": (1, 37), "64": (64,), "one chunk": (None,)}


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("plan", list(PLANS), ids=list(PLANS))
@pytest.mark.parametrize("scale", [10, 100, 300, 1000])
def test_an_outlier_first_row_costs_no_precision(scale, plan, exact):
    rng = np.random.default_rng(scale)
    A, B = _outlier(_data(rng, 150, 40), rng, scale)
    errors = _errors(_stream(A, B, PLANS[plan], exact), A, B)
    assert max(errors.values()) <= TOL[exact], errors


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_row_order_does_not_matter(seed, exact):
    rng = np.random.default_rng(seed)
    A, B = _outlier(_data(rng, 300, 32), rng, 300, row=int(rng.integers(300)))
    order = rng.permutation(300)
    for plan in ((7,), (100,), (None,)):
        errors = _errors(_stream(A[:, order], B[:, order], plan, exact), A, B)
        assert max(errors.values()) <= TOL[exact], (plan, errors)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("n, d", [(40, 64), (100, 128), (600, 24)])
def test_fewer_or_more_examples_than_features(n, d, exact):
    rng = np.random.default_rng(n)
    A, B = _outlier(_data(rng, n, d), rng, 100)
    for plan in ((1, 37), (None,)):
        errors = _errors(_stream(A, B, plan, exact), A, B)
        assert max(errors.values()) <= (EXACT_TOL if exact or n < 64 else DEFAULT_TOL), (plan, errors)


@pytest.mark.parametrize("exact", [False, True])
def test_a_large_common_offset_costs_no_precision(exact):
    rng = np.random.default_rng(5)
    plain = [X.astype(np.float32) for X in _data(rng, 300, 32, offset=1e3)]
    for A, B in (plain, _outlier(_data(rng, 300, 32, offset=1e3), rng, 300)):
        for plan in ((1, 37), (None,)):
            errors = _errors(_stream(A, B, plan, exact), A, B)
            assert max(errors.values()) <= TOL[exact], (plan, errors)


@pytest.mark.parametrize("plan", [(1,), (1, 37), (None,)])
def test_a_constant_layer_stays_exactly_constant(plan):
    rng = np.random.default_rng(6)
    A, B = _outlier(_data(rng, 200, 16, layers=3), rng, 1000)
    A[0] = 1e3 + 0.25  # constant, offset from zero
    acc = _stream(A, B, plan)
    m = acc.moments["A"]
    acc.seal()
    assert m.gram.frob[0] == 0 and not m.s[0].any() and m.a1[0] == 0
    for debiased in (False, True):
        res = acc.results("A", "B", debiased=debiased)
        assert np.isnan(res[0].value) and res[0].reason == "A does not vary across examples (0/0)"
        assert all(r.reason is None for r in res[1:])


def test_rows_held_before_the_centre_count_and_stream_by_layer():
    rng = np.random.default_rng(7)
    A, B = _outlier(_data(rng, 50, 24, layers=3), rng, 300)
    acc = StreamingLinearCKA([("A", "B")], n_layers=3)
    for layer in (2, 0, 1):
        for start in range(0, 50, 10):
            acc.update({"A": A[[layer], start:start + 10], "B": B[[layer], start:start + 10]}, layers=[layer])
        if layer != 1:
            acc.seal([layer])
    assert acc.n == 50 and 1 in acc._held  # layer 1's rows are still held, and counted
    errors = _errors(acc, A, B)
    assert max(errors.values()) <= EXACT_TOL, errors


def test_only_far_rows_take_float64_products(monkeypatch):
    """The common case stays on float32 GEMMs; an outlier, and only it, goes to float64."""
    seen = []
    original = StreamingLinearCKA._add_products

    def spy(self, layer, Z, norms):
        seen.append((next(iter(Z.values())).dtype, len(next(iter(Z.values())))))
        original(self, layer, Z, norms)

    monkeypatch.setattr(StreamingLinearCKA, "_add_products", spy)
    rng = np.random.default_rng(8)
    A, B = (X.astype(np.float32) for X in _data(rng, 300, 32, layers=1))
    _stream(A, B, (100,))
    assert seen == [(np.float32, 100)] * 3
    seen.clear()
    A, B = _outlier((A, B), rng, 30, row=150)
    _stream(A, B, (100,))
    assert seen == [(np.float32, 100), (np.float32, 99), (np.float64, 1), (np.float32, 100)]
