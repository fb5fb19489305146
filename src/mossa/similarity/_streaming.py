"""Exact linear CKA (biased and debiased) from statistics accumulated over chunks of examples.

Part of the ``similarity`` stage: it reads chunks of per-layer hidden states (rows = examples,
the same rows for every representation) and returns one result per layer and compared pair.
Memory depends on the layer count and width, never on the number of examples.

For each representation ``X`` (shifted by its first chunk's mean, which changes neither
estimator) it keeps, per layer, in float64: ``n``, the column sums ``s``, the feature-space
Gram ``X'X``, the squared row norms' sum and sum of
squares, and ``sum_i |x_i|^2 x_i``. Each compared pair adds ``X'Y``, ``sum_i |x_i|^2 |y_i|^2``
and the two norm-weighted column sums. Those are all the terms of the biased HSIC of centred
features and of Song et al.'s unbiased HSIC (which is invariant to shifting the features), so
both estimators are exact for any n. A representation's statistics are computed once and
serve every pair it is in (C_t's serve B vs C_t and E vs C_t).

Products and row sums of one chunk run in the activations' float32 (BLAS GEMM, the
hardware's fast path); every sum across chunks, and everything after, is float64. With the shift, the
statistics carry a relative error of about 1e-7, far below any difference CKA can resolve;
``bench/cka.py`` measures it against a float64 reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import torch

from mossa.errors import MossaError
from mossa.similarity._cka import (
    _CONSTANT_RTOL,
    _DEBIASED_RTOL,
    _MIN_DEBIASED_EXAMPLES,
    SimilarityResult,
    _results,
)

__all__ = ["StreamingLinearCKA", "cross_layer_cka", "stream_chunks"]


@dataclass
class _Moments:
    """Per-layer float64 moments of one representation stack [layers, n, d]."""

    shift: np.ndarray  # [L, d] float32, the first chunk's column means
    n: int = 0
    s: np.ndarray | None = None  # [L, d]
    gram: np.ndarray | None = None  # [L, d, d], X'X
    a1: np.ndarray | None = None  # [L], sum_i |x_i|^2
    a2: np.ndarray | None = None  # [L], sum_i |x_i|^4
    u: np.ndarray | None = None  # [L, d], sum_i |x_i|^2 x_i
    flops: float = 0.0


@dataclass
class _Cross:
    """Per-layer float64 cross statistics of a pair (X, Y)."""

    c: np.ndarray  # [L, d1, d2], X'Y
    ab: np.ndarray  # [L], sum_i |x_i|^2 |y_i|^2
    v_xy: np.ndarray  # [L, d1], sum_i |y_i|^2 x_i
    v_yx: np.ndarray  # [L, d2], sum_i |x_i|^2 y_i


@dataclass
class StreamingLinearCKA:
    """Accumulate chunks, then read per-layer linear CKA (biased and debiased) of each pair.

    Parameters
    ----------
    pairs : list of (str, str)
        The compared pairs, by representation name; every name in a pair must appear in
        each chunk passed to :meth:`update`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.normal(size=(2, 3, 500, 8)).astype(np.float32)
    >>> acc = StreamingLinearCKA([("A", "B")])
    >>> for start in range(0, 500, 128):
    ...     acc.update({"A": A[:, start:start + 128], "B": B[:, start:start + 128]})
    >>> len(acc.results("A", "B", debiased=False))
    3
    """

    pairs: list[tuple[str, str]]
    moments: dict[str, _Moments] = field(default_factory=dict)
    cross: dict[tuple[str, str], _Cross] = field(default_factory=dict)
    _self_cache: dict = field(default_factory=dict, repr=False)
    _buffers: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return next(iter(self.moments.values())).n if self.moments else 0

    @property
    def flops(self) -> float:
        """Floating-point operations of the chunk products (GEMMs) so far."""
        return sum(m.flops for m in self.moments.values())

    def update(self, chunk: Mapping[str, np.ndarray]) -> None:
        """Add a chunk: name -> float32 [layers, c, d], the same c rows (same examples) for all."""
        names = {name for pair in self.pairs for name in pair}
        missing = names - set(chunk)
        if missing:
            raise MossaError(f"chunk lacks representation(s) {', '.join(sorted(missing))}")
        rows = {chunk[name].shape[1] for name in names}
        if len(rows) != 1:
            raise MossaError(f"chunk representations hold different numbers of rows: {sorted(rows)}")
        if rows.pop() == 0:
            return
        shifted, norms = {}, {}
        for name in names:
            shifted[name], norms[name] = self._update_moments(name, np.asarray(chunk[name]))
        for x, y in self.pairs:
            self._update_cross((x, y), shifted[x], shifted[y], norms[x], norms[y])

    def _update_moments(self, name: str, block: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        block = np.ascontiguousarray(block, dtype=np.float32)
        n_layers, c, d = block.shape
        m = self.moments.get(name)
        if m is None:
            m = _Moments(shift=block.astype(np.float64).mean(axis=1).astype(np.float32))
            m.s, m.u = np.zeros((n_layers, d)), np.zeros((n_layers, d))
            m.gram = np.zeros((n_layers, d, d))
            m.a1, m.a2 = np.zeros(n_layers), np.zeros(n_layers)
            self.moments[name] = m
        elif block.shape[0::2] != m.s.shape:
            raise MossaError(f"representation {name!r}: chunk has {n_layers} layers x {d} features, earlier "
                             f"chunks had {m.s.shape[0]} x {m.s.shape[1]}")
        buf = self._buffers.get(name)
        if buf is None or buf.shape != block.shape:  # reused: fresh 100 MB arrays cost page faults
            buf = self._buffers[name] = torch.empty(block.shape, dtype=torch.float32)
        X = torch.sub(torch.from_numpy(block), torch.from_numpy(m.shift)[:, None, :], out=buf)  # [L, c, d]
        a = torch.linalg.vector_norm(X, dim=2).square_()  # [L, c] squared row norms
        for layer in range(n_layers):  # one GEMM per layer runs faster than a batched bmm here
            m.gram[layer] += (X[layer].T @ X[layer]).numpy()
        m.s += X.sum(dim=1).numpy()
        a64 = a.double().numpy()
        m.a1 += a64.sum(axis=1)
        m.a2 += (a64 * a64).sum(axis=1)
        m.u += torch.bmm(a[:, None, :], X)[:, 0].numpy()
        m.n += c
        m.flops += 2.0 * n_layers * c * d * d
        self._self_cache.pop(name, None)
        return X, a

    def _update_cross(self, pair, X: torch.Tensor, Y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        n_layers, c, d1 = X.shape
        d2 = Y.shape[2]
        acc = self.cross.get(pair)
        if acc is None:
            acc = _Cross(c=np.zeros((n_layers, d1, d2)), ab=np.zeros(n_layers), v_xy=np.zeros((n_layers, d1)),
                         v_yx=np.zeros((n_layers, d2)))
            self.cross[pair] = acc
        for layer in range(n_layers):
            acc.c[layer] += (X[layer].T @ Y[layer]).numpy()  # float32 products of this chunk
        acc.ab += (a.double() * b.double()).sum(dim=1).numpy()
        acc.v_xy += torch.bmm(b[:, None, :], X)[:, 0].numpy()
        acc.v_yx += torch.bmm(a[:, None, :], Y)[:, 0].numpy()
        self.moments[pair[0]].flops += 2.0 * n_layers * c * d1 * d2

    # ------------------------------------------------------------------------------------
    def _self_terms(self, name: str):
        """Per-layer (biased self-HSIC, unbiased self-HSIC, its term scale, constant flag)."""
        if name not in self._self_cache:
            self._self_cache[name] = self._compute_self_terms(name)
        return self._self_cache[name]

    def _compute_self_terms(self, name: str):
        m = self.moments[name]
        n = m.n
        biased, unbiased, scale, const = [], [], [], []
        for layer in range(len(m.a1)):
            g, s = m.gram[layer], m.s[layer]
            centred = g - np.outer(s, s) / n
            biased.append(np.einsum("ij,ij->", centred, centred))
            hsic, mag = _song(g, m.a2[layer], m.u[layer], m.u[layer], s, s, m.a1[layer], m.a1[layer], n)
            unbiased.append(hsic)
            scale.append(mag)
            total = m.a1[layer] - s @ s / n  # trace of the centred Gram: sum of squared deviations
            shift = m.shift[layer].astype(np.float64)
            raw = m.a1[layer] + 2.0 * shift @ s + n * shift @ shift  # sum of squared raw entries
            const.append(total <= (_CONSTANT_RTOL**2) * raw)
        return np.array(biased), np.array(unbiased), np.array(scale), np.array(const)

    def results(self, x: str, y: str, *, debiased: bool, names: tuple[str, str] | None = None
                ) -> list[SimilarityResult]:
        """Per-layer linear CKA of pair (x, y), NaN with a reason where a layer is undefined."""
        if (x, y) not in self.cross:
            raise MossaError(f"pair ({x}, {y}) was not accumulated; pairs are {self.pairs}")
        n = self.n
        names = names or (x, y)
        if n < 2:
            raise MossaError(f"linear CKA needs at least 2 examples, got n={n}")
        if debiased and n < _MIN_DEBIASED_EXAMPLES:
            raise MossaError(f"the debiased estimator needs at least {_MIN_DEBIASED_EXAMPLES} examples, got n={n}")
        mx, my, acc = self.moments[x], self.moments[y], self.cross[(x, y)]
        bx, ux, sx, cx = self._self_terms(x)
        by, uy, sy, cy = self._self_terms(y)
        cross = np.empty(len(acc.ab))
        for layer in range(len(cross)):
            if debiased:
                cross[layer] = _song(acc.c[layer], acc.ab[layer], acc.v_xy[layer], acc.v_yx[layer], mx.s[layer],
                                     my.s[layer], mx.a1[layer], my.a1[layer], n)[0]
            else:
                centred = acc.c[layer] - np.outer(mx.s[layer], my.s[layer]) / n
                cross[layer] = np.einsum("ij,ij->", centred, centred)
        if debiased:
            return _results(cross, ux, uy, cx, cy, ux <= _DEBIASED_RTOL * sx, uy <= _DEBIASED_RTOL * sy, n=n,
                            debiased=True, names=names)
        return _results(cross, bx, by, cx, cy, bx <= 0.0, by <= 0.0, n=n, debiased=False, names=names)


def _song(c, ab, v_xy, v_yx, s_x, s_y, a1_x, a1_y, n) -> tuple[float, float]:
    """Song et al.'s unbiased HSIC times n(n-3), and the magnitude of its terms, from moments.

    With K~, L~ the Grams with zeroed diagonals: tr(K~L~) = |X'Y|^2 - sum_i a_i b_i,
    1'K~1 = |s_x|^2 - sum_i a_i, and 1'K~L~1 = s_x' X'Y s_y - s_x' v_xy - s_y' v_yx + sum_i a_i b_i.
    """
    trace = np.einsum("ij,ij->", c, c) - ab
    ones_k = s_x @ s_x - a1_x
    ones_l = s_y @ s_y - a1_y
    ones_kl = s_x @ c @ s_y - s_x @ v_xy - s_y @ v_yx + ab
    t2 = ones_k * ones_l / ((n - 1) * (n - 2))
    t3 = 2.0 / (n - 2) * ones_kl
    return float(trace + t2 - t3), float(abs(trace) + abs(t2) + abs(t3))


def stream_chunks(arrays: Mapping[str, np.ndarray], size: int) -> Iterable[dict[str, np.ndarray]]:
    """Chunks of in-memory stacks [layers, n, d] (for tests and small inputs)."""
    n = next(iter(arrays.values())).shape[1]
    for start in range(0, n, size):
        yield {k: v[:, start:start + size] for k, v in arrays.items()}


def cross_layer_cka(acc: StreamingLinearCKA, x: str, y: str, chunks, *, budget_bytes: int = 512 * 2**20
                    ) -> np.ndarray:
    """Biased linear CKA of every layer of x with every layer of y, [layers_x, layers_y].

    `acc` must already hold both representations' moments (its pass fixed their shifts);
    `chunks` is a callable returning a fresh iterator over the same rows as that pass. The
    cross-products of all layer pairs accumulate in float64 blocks of at most `budget_bytes`,
    so a block of x's layers is finished per pass over the rows (one pass when it fits).
    NaN where a layer does not vary across examples.
    """
    mx, my = acc.moments[x], acc.moments[y]
    n = acc.n
    bx, _, _, cx = acc._self_terms(x)
    by, _, _, cy = acc._self_terms(y)
    lx, d1 = mx.s.shape
    ly, d2 = my.s.shape
    per_layer = 8 * d1 * ly * d2
    block = max(1, min(lx, budget_bytes // max(per_layer, 1)))
    out = np.full((lx, ly), np.nan)
    for start in range(0, lx, block):
        layers = list(range(start, min(start + block, lx)))
        total = np.zeros((len(layers) * d1, ly * d2))
        for chunk in chunks():
            X = np.ascontiguousarray(chunk[x][layers], dtype=np.float32) - mx.shift[layers, None, :]
            Y = np.ascontiguousarray(chunk[y], dtype=np.float32) - my.shift[:, None, :]
            c = X.shape[1]
            xf = torch.from_numpy(np.ascontiguousarray(X.transpose(1, 0, 2).reshape(c, -1)))
            yf = torch.from_numpy(np.ascontiguousarray(Y.transpose(1, 0, 2).reshape(c, -1)))
            total += (xf.T @ yf).numpy()
        for k, i in enumerate(layers):
            for j in range(ly):
                if cx[i] or cy[j]:
                    continue
                cij = total[k * d1:(k + 1) * d1, j * d2:(j + 1) * d2] - np.outer(mx.s[i], my.s[j]) / n
                out[i, j] = np.einsum("ij,ij->", cij, cij) / np.sqrt(bx[i] * by[j])
    return out
