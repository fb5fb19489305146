"""Exact linear CKA (biased and debiased) from statistics accumulated over chunks of examples.

Part of the ``similarity`` stage: it reads chunks of per-layer hidden states (rows = examples,
the same rows for every representation) and returns one result per layer and compared pair.
Memory depends on the layer count and width, never on the number of examples.

For each representation ``X`` (shifted by its first row, which changes neither estimator,
removes the large common offsets of hidden states before float32 products, and leaves a
constant layer exactly zero) it keeps, per layer, in float64: ``n``, the column sums ``s``,
the feature-space Gram ``X'X``, the squared row norms' sum and sum of squares, and
``sum_i |x_i|^2 x_i``. Each compared pair adds ``X'Y``, ``sum_i |x_i|^2 |y_i|^2`` and the two
norm-weighted column sums. Those are all the terms of the biased HSIC of centred features and
of Song et al.'s unbiased HSIC (which is invariant to shifting the features), so both
estimators are exact for any n. A representation's statistics are computed once and serve
every pair it is in (C_t's serve B vs C_t and E vs C_t).

Products and row sums of one chunk run in the activations' float32 (BLAS GEMM, the hardware's
fast path); every sum across chunks, and everything after, is float64. With the shift, the
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


_GRAM_PARTS = 4  # feature blocks: the upper triangle of 4 x 4 blocks is 10/16 of a full GEMM


def _gram(X: torch.Tensor) -> torch.Tensor:
    """X'X [d, d] float32 from the GEMMs of the upper triangle of feature blocks (the lower
    blocks are their transposes): torch exposes no SYRK, and this does 5/8 of a full GEMM."""
    d = X.shape[1]
    edges = [d * k // _GRAM_PARTS for k in range(_GRAM_PARTS + 1)]
    out = torch.empty(d, d)
    for i in range(_GRAM_PARTS):
        a, b = edges[i], edges[i + 1]
        for j in range(i, _GRAM_PARTS):
            c, e = edges[j], edges[j + 1]
            out[a:b, c:e] = X[:, a:b].T @ X[:, c:e]
            if j != i:
                out[c:e, a:b] = out[a:b, c:e].T
    return out


def _gram_flops(c: int, d: int) -> float:
    edges = [d * k // _GRAM_PARTS for k in range(_GRAM_PARTS + 1)]
    widths = np.diff(edges)
    return float(sum(2.0 * c * widths[i] * widths[j] for i in range(_GRAM_PARTS) for j in range(i, _GRAM_PARTS)))


@dataclass
class _Moments:
    """Per-layer float64 moments of one representation stack [layers, n, d]."""

    shift: np.ndarray  # [L, d] float32: the first row seen, per layer
    shifted: np.ndarray  # [L] bool: layer has its shift
    n: np.ndarray  # [L] rows seen per layer
    s: np.ndarray  # [L, d]
    gram: np.ndarray  # [L, d, d], X'X
    a1: np.ndarray  # [L], sum_i |x_i|^2
    a2: np.ndarray  # [L], sum_i |x_i|^4
    u: np.ndarray  # [L, d], sum_i |x_i|^2 x_i
    flops: float = 0.0

    @classmethod
    def zeros(cls, n_layers: int, d: int) -> "_Moments":
        return cls(shift=np.zeros((n_layers, d), np.float32), shifted=np.zeros(n_layers, bool),
                   n=np.zeros(n_layers, np.int64), s=np.zeros((n_layers, d)), gram=np.zeros((n_layers, d, d)),
                   a1=np.zeros(n_layers), a2=np.zeros(n_layers), u=np.zeros((n_layers, d)))


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
    n_layers : int, optional
        Layers per representation; needed only when chunks hold some of the layers.

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
    n_layers: int | None = None
    moments: dict[str, _Moments] = field(default_factory=dict)
    cross: dict[tuple[str, str], _Cross] = field(default_factory=dict)
    _self_cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        """Examples accumulated (the same for every layer and representation, else MossaError)."""
        counts = {int(c) for m in self.moments.values() for c in m.n}
        if len(counts) > 1:
            raise MossaError(f"layers or representations saw different numbers of examples: {sorted(counts)}")
        return counts.pop() if counts else 0

    @property
    def flops(self) -> float:
        """Floating-point operations of the chunk products (GEMMs actually run) so far."""
        return sum(m.flops for m in self.moments.values())

    def update(self, chunk: Mapping[str, np.ndarray], layers=None, *, consume: bool = False) -> None:
        """Add a chunk: name -> float32 [k, c, d], the same c rows (same examples) for all names,
        holding layers `layers` (default: all layers, k = n_layers). With `consume`, the chunk's
        float32 arrays are shifted in place (no copy) and must not be used afterwards."""
        names = {name for pair in self.pairs for name in pair}
        missing = names - set(chunk)
        if missing:
            raise MossaError(f"chunk lacks representation(s) {', '.join(sorted(missing))}")
        shapes = {name: np.shape(chunk[name]) for name in names}
        if len({s[1] for s in shapes.values()}) != 1:
            raise MossaError(f"chunk representations hold different numbers of rows: "
                             f"{sorted({s[1] for s in shapes.values()})}")
        k = next(iter(shapes.values()))[0]
        if self.n_layers is None:
            self.n_layers = k
        layers = list(range(k)) if layers is None else [int(x) for x in layers]
        if len(layers) != k or any(not 0 <= x < self.n_layers for x in layers):
            raise MossaError(f"chunk of {k} layers does not match layers {layers} of {self.n_layers}")
        if next(iter(shapes.values()))[1] == 0:
            return
        shifted, norms = {}, {}
        for name in names:
            shifted[name], norms[name] = self._update_moments(name, chunk[name], layers, consume)
        for x, y in self.pairs:
            self._update_cross((x, y), layers, shifted[x], shifted[y], norms[x], norms[y])
        self._self_cache.clear()

    def _update_moments(self, name: str, block, layers: list[int], consume: bool
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        B = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
        k, c, d = B.shape
        m = self.moments.get(name)
        if m is None:
            m = self.moments[name] = _Moments.zeros(self.n_layers, d)
        elif m.s.shape[1] != d:
            raise MossaError(f"representation {name!r}: chunk has {d} features, earlier chunks had {m.s.shape[1]}")
        for i, layer in enumerate(layers):
            if not m.shifted[layer]:
                m.shift[layer] = B[i, 0].numpy()
                m.shifted[layer] = True
        shift = torch.from_numpy(m.shift[layers])[:, None, :]
        X = B.sub_(shift) if consume and B.data_ptr() == np.asarray(block).__array_interface__["data"][0] \
            else B - shift  # [k, c, d] float32
        a = torch.linalg.vector_norm(X, dim=2).square_()  # [k, c] squared row norms
        a64 = a.double()
        s, u = X.sum(dim=1).double().numpy(), torch.bmm(a[:, None, :], X)[:, 0].double().numpy()
        for i, layer in enumerate(layers):
            m.gram[layer] += _gram(X[i]).numpy()  # float32 products of this chunk, summed in float64
            m.s[layer] += s[i]
            m.u[layer] += u[i]
            m.a1[layer] += float(a64[i].sum())
            m.a2[layer] += float((a64[i] * a64[i]).sum())
            m.n[layer] += c
        m.flops += k * _gram_flops(c, d)
        return X, a

    def _update_cross(self, pair, layers: list[int], X: torch.Tensor, Y: torch.Tensor, a: torch.Tensor,
                      b: torch.Tensor) -> None:
        k, c, d1 = X.shape
        d2 = Y.shape[2]
        acc = self.cross.get(pair)
        if acc is None:
            L = self.n_layers
            acc = self.cross[pair] = _Cross(c=np.zeros((L, d1, d2)), ab=np.zeros(L), v_xy=np.zeros((L, d1)),
                                            v_yx=np.zeros((L, d2)))
        ab = (a.double() * b.double()).sum(dim=1).numpy()
        v_xy = torch.bmm(b[:, None, :], X)[:, 0].double().numpy()
        v_yx = torch.bmm(a[:, None, :], Y)[:, 0].double().numpy()
        for i, layer in enumerate(layers):
            acc.c[layer] += (X[i].T @ Y[i]).numpy()
            acc.ab[layer] += ab[i]
            acc.v_xy[layer] += v_xy[i]
            acc.v_yx[layer] += v_yx[i]
        self.moments[pair[0]].flops += 2.0 * k * c * d1 * d2

    # ------------------------------------------------------------------------------------
    def _self_terms(self, name: str):
        """Per-layer (biased self-HSIC, unbiased self-HSIC, its term scale, constant flag)."""
        if name not in self._self_cache:
            self._self_cache[name] = self._compute_self_terms(name)
        return self._self_cache[name]

    def _compute_self_terms(self, name: str):
        m = self.moments[name]
        n = self.n
        biased, unbiased, scale = _hsic_terms(m.gram, m.a2, m.u, m.u, m.s, m.s, m.a1, m.a1, n)
        total = m.a1 - np.einsum("li,li->l", m.s, m.s) / n  # trace of the centred Gram
        shift = m.shift.astype(np.float64)
        raw = m.a1 + 2.0 * np.einsum("li,li->l", shift, m.s) + n * np.einsum("li,li->l", shift, shift)
        return biased, unbiased, scale, total <= (_CONSTANT_RTOL**2) * raw  # constant: no variation

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
        biased, unbiased, _ = _hsic_terms(acc.c, acc.ab, acc.v_xy, acc.v_yx, mx.s, my.s, mx.a1, my.a1, n)
        if debiased:
            return _results(unbiased, ux, uy, cx, cy, ux <= _DEBIASED_RTOL * sx, uy <= _DEBIASED_RTOL * sy, n=n,
                            debiased=True, names=names)
        return _results(biased, bx, by, cx, cy, bx <= 0.0, by <= 0.0, n=n, debiased=False, names=names)


def _hsic_terms(c, ab, v_xy, v_yx, s_x, s_y, a1_x, a1_y, n):
    """Per layer, from moments ([L, ...] arrays): the biased HSIC of the centred features
    |C - s_x s_y'/n|^2, Song et al.'s unbiased HSIC times n(n-3), and the magnitude of its terms.

    With K~, L~ the Grams with zeroed diagonals: tr(K~L~) = |X'Y|^2 - sum_i a_i b_i,
    1'K~1 = |s_x|^2 - sum_i a_i, and 1'K~L~1 = s_x' X'Y s_y - s_x' v_xy - s_y' v_yx + sum_i a_i b_i.
    """
    frob = np.einsum("lij,lij->l", c, c)
    s_c_s = np.einsum("li,li->l", s_x, np.einsum("lij,lj->li", c, s_y))
    ss_x, ss_y = np.einsum("li,li->l", s_x, s_x), np.einsum("li,li->l", s_y, s_y)
    biased = frob - 2.0 * s_c_s / n + ss_x * ss_y / n**2
    trace = frob - ab
    ones_kl = s_c_s - np.einsum("li,li->l", s_x, v_xy) - np.einsum("li,li->l", s_y, v_yx) + ab
    t2 = (ss_x - a1_x) * (ss_y - a1_y) / ((n - 1) * (n - 2))
    t3 = 2.0 / (n - 2) * ones_kl
    return biased, trace + t2 - t3, np.abs(trace) + np.abs(t2) + np.abs(t3)


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
