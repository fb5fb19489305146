import numpy as np
import pytest

from mossa.errors import MossaError
from mossa.similarity import cross_layer_linear_cka, linear_cka_result


def test_matrix_equals_pairwise_calls():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 30, 12))
    B = rng.normal(size=(3, 30, 50)) + A[:3, :, :1]
    A[0] = 2.0  # constant layer
    m = cross_layer_linear_cka(A, B)
    assert m.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            ref = linear_cka_result(A[i], B[j])
            if ref.reason:
                assert np.isnan(m[i, j])
            else:
                assert abs(m[i, j] - ref.value) < 1e-10


def test_row_mismatch_is_an_error():
    with pytest.raises(MossaError, match="same examples"):
        cross_layer_linear_cka(np.ones((2, 5, 3)), np.ones((2, 6, 3)))
