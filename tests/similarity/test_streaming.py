"""Streamed linear CKA equals the in-memory float64 reference, whatever the chunking."""

import numpy as np
import pytest

from mossa.errors import MossaError
from mossa.similarity import (
    StreamingLinearCKA,
    cross_layer_cka,
    cross_layer_linear_cka,
    layerwise_linear_cka,
    stream_chunks,
)


def _pair(rng, layers=4, n=900, d=24, offset=0.0):
    A = rng.normal(size=(layers, n, d)) + offset
    B = A @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=(layers, n, d)) - offset
    return A.astype(np.float32), B.astype(np.float32)


def _stream(arrays, size, pairs):
    acc = StreamingLinearCKA(pairs)
    for chunk in stream_chunks(arrays, size):
        acc.update(chunk)
    return acc


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("size", [1, 37, 900])
def test_streamed_equals_reference_for_any_chunking(debiased, size):
    A, B = _pair(np.random.default_rng(0))
    got = _stream({"A": A, "B": B}, size, [("A", "B")]).results("A", "B", debiased=debiased)
    ref = layerwise_linear_cka(A, B, debiased=debiased)
    np.testing.assert_allclose([r.value for r in got], [r.value for r in ref], rtol=0, atol=1e-6)


def test_large_offsets_do_not_cost_precision():
    """Hidden states with huge means (massive activations): the shift by the layer's centre removes them."""
    A, B = _pair(np.random.default_rng(1), offset=3e3)
    got = _stream({"A": A, "B": B}, 128, [("A", "B")])
    for debiased in (False, True):
        ref = layerwise_linear_cka(A, B, debiased=debiased)
        np.testing.assert_allclose([r.value for r in got.results("A", "B", debiased=debiased)],
                                   [r.value for r in ref], atol=1e-6)


def test_shared_statistics_serve_every_pair():
    rng = np.random.default_rng(2)
    A, C = _pair(rng)
    E = (C + rng.normal(scale=0.1, size=C.shape)).astype(np.float32)
    acc = _stream({"A": A, "E": E, "C": C}, 100, [("A", "C"), ("E", "C")])
    assert set(acc.moments) == {"A", "E", "C"} and (acc.moments["C"].n == 900).all()  # C accumulated once
    for x, X in (("A", A), ("E", E)):
        ref = layerwise_linear_cka(X, C)
        np.testing.assert_allclose([r.value for r in acc.results(x, "C", debiased=False)], [r.value for r in ref],
                                   atol=1e-6)


def test_constant_layer_is_undefined_with_a_reason():
    A, B = _pair(np.random.default_rng(3))
    A[0] = A[0, 0]
    res = _stream({"A": A, "B": B}, 200, [("A", "B")]).results("A", "B", debiased=True)
    assert np.isnan(res[0].value) and res[0].reason == "A does not vary across examples (0/0)"
    assert all(np.isfinite(r.value) for r in res[1:])


def test_cross_layer_matches_in_memory_and_respects_the_budget():
    A, B = _pair(np.random.default_rng(4), layers=5, n=400, d=16)
    A[2] = 1.0
    acc = _stream({"A": A, "B": B}, 64, [("A", "B")])
    chunks = lambda: stream_chunks({"A": A, "B": B}, 64)  # noqa: E731
    ref = cross_layer_linear_cka(A, B)
    for budget in (1, 2**30):  # one layer per pass, or all in one pass
        np.testing.assert_allclose(cross_layer_cka(acc, "A", "B", chunks, budget_bytes=budget), ref, atol=1e-6)


def test_mismatched_chunks_are_refused():
    acc = StreamingLinearCKA([("A", "B")])
    with pytest.raises(MossaError, match="different numbers of rows"):
        acc.update({"A": np.zeros((2, 3, 4), np.float32), "B": np.zeros((2, 4, 4), np.float32)})
    with pytest.raises(MossaError, match="lacks representation"):
        acc.update({"A": np.zeros((2, 3, 4), np.float32)})
    acc.update({"A": np.ones((2, 3, 4), np.float32), "B": np.ones((2, 3, 4), np.float32)})
    with pytest.raises(MossaError, match="chunk of 3 layers does not match layers"):
        acc.update({"A": np.ones((3, 3, 4), np.float32), "B": np.ones((3, 3, 4), np.float32)})
    with pytest.raises(MossaError, match="chunk has 5 features, earlier chunks had 4"):
        acc.update({"A": np.ones((2, 3, 5), np.float32), "B": np.ones((2, 3, 5), np.float32)})


def test_layer_by_layer_chunks_equal_all_layer_chunks():
    A, B = _pair(np.random.default_rng(6), layers=3)
    whole = _stream({"A": A, "B": B}, 300, [("A", "B")])
    acc = StreamingLinearCKA([("A", "B")], n_layers=3)
    held = []
    for layer in (2, 0, 1):
        for start in range(0, 900, 250):
            acc.update({"A": A[[layer], start:start + 250], "B": B[[layer], start:start + 250]}, layers=[layer])
            held.append(len(acc.moments["A"].gram.open) + len(acc.cross[("A", "B")].c.open))
        acc.seal([layer])
    assert max(held) == 2  # one d x d sum per representation and pair, whatever the layer count
    for debiased in (False, True):
        np.testing.assert_allclose([r.value for r in acc.results("A", "B", debiased=debiased)],
                                   [r.value for r in whole.results("A", "B", debiased=debiased)], atol=1e-7)


def test_sealed_layers_take_no_more_rows():
    A, B = _pair(np.random.default_rng(7), layers=2, n=50)
    acc = StreamingLinearCKA([("A", "B")], n_layers=2)
    acc.update({"A": A[[0]], "B": B[[0]]}, layers=[0])
    acc.seal([0])
    with pytest.raises(MossaError, match=r"layer\(s\) \[0\] are sealed"):
        acc.update({"A": A[[0]], "B": B[[0]]}, layers=[0])
    acc.update({"A": A[[1]], "B": B[[1]]}, layers=[1])  # an open layer still takes rows
    acc.results("A", "B", debiased=False)  # reading results seals every layer
    with pytest.raises(MossaError, match="sealed"):
        acc.update({"A": A[[1]], "B": B[[1]]}, layers=[1])
