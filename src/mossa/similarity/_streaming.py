"""Exact linear CKA (biased and debiased) from statistics accumulated over chunks of examples.

Part of the ``similarity`` stage: it reads chunks of per-layer hidden states (rows = examples,
the same rows for every representation) and returns one result per layer and compared pair.
Memory depends on the layer count and width, never on the number of examples.

Each representation is shifted, per layer, by a centre: the coordinate-wise median of the
layer's first 64 rows (a layer's first rows are held until 64 have come, or it is sealed).
The shift changes neither estimator; it removes the large common offsets of hidden states
before float32 products and leaves a constant layer exactly zero (the median is one of its
values). The centre cannot be atypical: a coordinate's median stays within the range of the
bulk of its values however far up to half of them lie. A single row (such as the first, the
former centre) or a mean can sit far from every other row; shifted by it, every product is of
large values whose float32 rounding swamps the centred statistics (an atypical first row put
CKA off by up to 1e-3, or made it a false NaN).

For each representation ``X`` (shifted by its centre) it keeps, per layer, in float64: ``n``,
the column sums ``s``, the feature-space Gram ``X'X``, the squared row norms' sum and sum of
squares, and ``sum_i |x_i|^2 x_i``. Each compared pair adds ``X'Y``, ``sum_i |x_i|^2 |y_i|^2``
and the two norm-weighted column sums. Those are all the terms of the biased HSIC of centred
features and of Song et al.'s unbiased HSIC (which is invariant to shifting the features), so both
estimators are exact for any n. A representation's statistics are computed once and serve
every pair it is in (C_t's serve B vs C_t and E vs C_t). The d x d sums are needed only until
their layer's rows are all in (see :meth:`StreamingLinearCKA.seal`); then two numbers of each
are kept and the matrix is reused for the next layer.

With ``exact=False``, products and row sums of one chunk run in the activations' float32 (GEMMs; the Gram from two
blocks, 3/4 of a GEMM's work); every sum across chunks, and everything after, is float64. Two
kinds of rows, being few, go through float64 products instead: the held first rows (of their
exact shifts), and any row with |x - centre|^2 above 16 times the median of that over the
centre's rows, in any representation (an outlier, wherever it comes; rows drifting away from
the first ones cost float64 time, never precision). Float32 products would round an outlier's
own terms, its |x|^2 |y|^2 among them, by more than the debiased estimator's cancellation of
them leaves; its float32 shift, rounded once like every row's, costs no more than theirs.
With ``exact=False`` what remains is the float32 GEMMs' rounding of the rows near the centre,
relative errors of about 1e-7 in the products: streamed CKA within about 1e-8 of a float64
reference whatever the row order (measured 1e-9 to 1e-7 on test layers of 24 to 128 features,
1.6e-8 on ``bench/cka.py``'s 640). The default, ``exact=True`` (what the study uses), takes every
row in float64, within about 1e-10, at about twice the product time.

Every product and elementwise pass here runs in torch (MKL and its OpenMP threads). NumPy's and
SciPy's wheels each bundle an OpenBLAS with its own thread pool: interleaving calls to two
pools, whose idle threads spin, made each call about twice as slow on a 2-core machine, and
torch's GEMMs were faster than OpenBLAS's at these shapes (SYRK included).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import torch

from mossa.errors import MossaError
from mossa.similarity._cka import _DEBIASED_RTOL, _MIN_DEBIASED_EXAMPLES, _results
from mossa.similarity._result import _CONSTANT_RTOL, SimilarityResult

__all__ = ["StreamingLinearCKA", "cross_layer_cka", "stream_chunks"]

# A layer's centre is the coordinate-wise median of its first _CENTRE_ROWS rows; a row is far
# from it when |x - centre|^2 exceeds _FAR times the median of that over those rows.
_CENTRE_ROWS = 64
_FAR = 16.0


def _matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A @ B of float32 or float64 matrices (torch's BLAS; transposed views are passed as such)."""
    return torch.mm(torch.from_numpy(A), torch.from_numpy(B)).numpy()


def _tensor(X: np.ndarray) -> torch.Tensor:
    """X as a tensor, without a copy; read-only views too (torch only reads them here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.from_numpy(X)


def _gram(X: np.ndarray) -> np.ndarray:
    """X'X [d, d] in X's dtype, from two GEMMs over halves of the features, [X1 X2]'[X1 X2] =
    [[X1'X, .], [X2'X1, X2'X2]], the lower left block copied from the upper right: 3/4 of a
    full GEMM's work (torch exposes no SYRK; finer blocks made GEMMs too thin to gain)."""
    T = torch.from_numpy(X)
    d, h = T.shape[1], T.shape[1] // 2
    out = torch.empty(d, d, dtype=T.dtype)
    torch.mm(T[:, :h].T, T, out=out[:h])
    torch.mm(T[:, h:].T, T[:, h:], out=out[h:, h:])
    out[h:, :h] = out[:h, h:].T
    return out.numpy()


def _gram_flops(c: int, d: int) -> float:
    h = d // 2
    return 2.0 * c * (h * d + (d - h) ** 2)


class _Pool:
    """Reused float64 matrices: a fresh multi-MB array costs page faults on every first touch,
    which on a VM took longer than the products summed into it."""

    def __init__(self):
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}

    def take(self, like: np.ndarray) -> np.ndarray:
        """A float64 copy of `like`, in a reused array when one is free."""
        free = self._free.get(like.shape)
        out = free.pop() if free else np.empty(like.shape)
        np.copyto(out, like)
        return out

    def give(self, array: np.ndarray) -> None:
        self._free.setdefault(array.shape, []).append(array)


@dataclass
class _Products:
    """Per-layer float64 sums of chunk products P (X'X or X'Y), held while their layer is open.

    Sealing a layer keeps just the two numbers both CKA estimators need from P, |P|_F^2 and
    s_x'P s_y, and returns the matrix to the pool for the next layer, so a layer-by-layer pass
    holds one matrix per representation and pair whatever the layer count.
    """

    frob: np.ndarray  # [L], |P|_F^2 of sealed layers
    sps: np.ndarray  # [L], s_x'P s_y of sealed layers
    open: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def zeros(cls, n_layers: int) -> "_Products":
        return cls(frob=np.zeros(n_layers), sps=np.zeros(n_layers))

    def add(self, layer: int, product: np.ndarray, pool: _Pool) -> None:
        held = self.open.get(layer)
        if held is None:
            self.open[layer] = pool.take(product)
        else:
            held += product

    def seal(self, layer: int, s_x: np.ndarray, s_y: np.ndarray, pool: _Pool) -> None:
        P = self.open.pop(layer)
        T = torch.from_numpy(P)
        self.frob[layer] = float(torch.dot(T.reshape(-1), T.reshape(-1)))
        self.sps[layer] = float(torch.dot(torch.from_numpy(s_x), T.mv(torch.from_numpy(s_y))))
        pool.give(P)


@dataclass
class _Moments:
    """Per-layer float64 moments of one representation stack [layers, n, d], shifted by its centre."""

    shift: np.ndarray  # [L, d] float32: the centre, per layer
    spread: np.ndarray  # [L]: median over the centre's rows of |x - centre|^2
    n: np.ndarray  # [L] rows seen per layer
    s: np.ndarray  # [L, d]
    gram: _Products  # X'X
    a1: np.ndarray  # [L], sum_i |x_i|^2
    a2: np.ndarray  # [L], sum_i |x_i|^4
    u: np.ndarray  # [L, d], sum_i |x_i|^2 x_i
    flops: float = 0.0

    @classmethod
    def zeros(cls, n_layers: int, d: int) -> "_Moments":
        return cls(shift=np.zeros((n_layers, d), np.float32), spread=np.zeros(n_layers),
                   n=np.zeros(n_layers, np.int64), s=np.zeros((n_layers, d)),
                   gram=_Products.zeros(n_layers), a1=np.zeros(n_layers), a2=np.zeros(n_layers),
                   u=np.zeros((n_layers, d)))


@dataclass
class _Cross:
    """Per-layer float64 cross statistics of a pair (X, Y)."""

    c: _Products  # X'Y
    ab: np.ndarray  # [L], sum_i |x_i|^2 |y_i|^2
    v_xy: np.ndarray  # [L, d1], sum_i |y_i|^2 x_i
    v_yx: np.ndarray  # [L, d2], sum_i |x_i|^2 y_i


@dataclass
class _Accumulator:
    """The streaming part of `StreamingLinearCKA`: per representation and layer, float64 sums of the rows'
    products (each layer centred on its first rows), and per pair their cross-products."""

    pairs: list[tuple[str, str]]
    n_layers: int | None = None
    exact: bool = True
    moments: dict[str, _Moments] = field(default_factory=dict)
    cross: dict[tuple[str, str], _Cross] = field(default_factory=dict)
    _self_cache: dict = field(default_factory=dict, repr=False)
    _sealed: set = field(default_factory=set, repr=False)
    _pool: _Pool = field(default_factory=_Pool, repr=False)
    _scratch: dict = field(default_factory=dict, repr=False)
    _held: dict = field(default_factory=dict, repr=False)  # layer -> row blocks held until it has a centre
    _centred: set = field(default_factory=set, repr=False)

    @property
    def n(self) -> int:
        """Examples accumulated (the same for every layer and representation, else MossaError)."""
        held = np.zeros(self.n_layers or 0, np.int64)
        for layer, blocks in self._held.items():
            held[layer] = sum(len(next(iter(b.values()))) for b in blocks)
        counts = {int(c) for m in self.moments.values() for c in m.n + held}
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
        names = list(dict.fromkeys(name for pair in self.pairs for name in pair))
        missing = set(names) - set(chunk)
        if missing:
            raise MossaError(f"chunk lacks representation(s) {', '.join(sorted(missing))}")
        shapes = {name: np.shape(chunk[name]) for name in names}
        if len({s[1] for s in shapes.values()}) != 1:
            raise MossaError(f"chunk representations hold different numbers of rows: "
                             f"{sorted({s[1] for s in shapes.values()})}")
        k, c = next(iter(shapes.values()))[:2]
        if self.n_layers is None:
            self.n_layers = k
        layers = list(range(k)) if layers is None else [int(x) for x in layers]
        if len(layers) != k or any(not 0 <= x < self.n_layers for x in layers):
            raise MossaError(f"chunk of {k} layers does not match layers {layers} of {self.n_layers}")
        if self._sealed.intersection(layers):
            raise MossaError(f"layer(s) {sorted(self._sealed.intersection(layers))} are sealed: their results "
                             f"were read, so no rows can be added to them")
        for name in names:
            m, d = self.moments.get(name), shapes[name][2]
            if m is None:
                self.moments[name] = _Moments.zeros(self.n_layers, d)
            elif m.s.shape[1] != d:
                raise MossaError(f"representation {name!r}: chunk has {d} features, earlier chunks had {m.s.shape[1]}")
        if c == 0:
            return
        blocks = {name: np.asarray(chunk[name]) for name in names}
        for i, layer in enumerate(layers):
            rows = {name: block[i] for name, block in blocks.items()}
            if layer in self._centred:
                self._add_rows(layer, rows, consume)
                continue
            held = self._held.pop(layer, [])
            if sum(len(h[names[0]]) for h in held) + c >= _CENTRE_ROWS:
                self._release(layer, held, rows, consume)
            else:  # copies: the caller may reuse its buffers
                self._held[layer] = held + [{name: np.array(x, dtype=np.float32) for name, x in rows.items()}]
        self._self_cache.clear()

    def _release(self, layer: int, held: list[dict], rows: Mapping[str, np.ndarray] | None,
                 consume: bool = False) -> None:
        """Fix `layer`'s centres from its first rows (the held blocks, then `rows`) and add them:
        the held rows, fewer than _CENTRE_ROWS, in float64; `rows` like any chunk's.

        The centre is the coordinate-wise median of the first _CENTRE_ROWS rows (one of their
        values, so a constant layer shifts to exactly zero), the spread the median of
        |x - centre|^2 over them: neither moves however far up to half of those rows lie."""
        blocks = held + ([rows] if rows is not None else [])
        for name in blocks[0]:
            first = np.concatenate([np.asarray(b[name][:_CENTRE_ROWS], dtype=np.float32) for b in blocks])
            first = first[:_CENTRE_ROWS]
            k, m = (len(first) - 1) // 2, self.moments[name]  # lower medians; partition: 8x torch.median
            m.shift[layer] = np.partition(first, k, axis=0)[k]
            diff = first.astype(np.float64) - m.shift[layer]
            m.spread[layer] = np.partition(np.einsum("ij,ij->i", diff, diff), k)[k]
        self._centred.add(layer)
        if held:
            self._add_rows(layer, {name: np.concatenate([h[name] for h in held]) for name in held[0]}, exact=True)
        if rows is not None:
            self._add_rows(layer, rows, consume)

    def _shifted(self, name: str, layer: int, X: np.ndarray, consume: bool) -> np.ndarray:
        """Rows [c, d] of `name` at `layer` minus the layer's centre, float32: in place with
        `consume`, else in reused scratch (fresh pages per chunk cost more than the subtraction)."""
        shift = self.moments[name].shift[layer]
        if consume and X.dtype == np.float32 and X.flags.c_contiguous and X.flags.writeable:
            return torch.from_numpy(X).sub_(torch.from_numpy(shift)).numpy()
        scratch = self._scratch.get(name)
        if scratch is None or scratch.shape[0] < len(X) or scratch.shape[1] != X.shape[1]:
            scratch = self._scratch[name] = np.empty(X.shape, dtype=np.float32)
        out = scratch[:len(X)]
        if X.dtype == np.float32 and X.flags.c_contiguous:
            torch.sub(_tensor(X), torch.from_numpy(shift), out=torch.from_numpy(out))
            return out
        return np.subtract(X, shift, out=out, dtype=np.float32)

    def _add_rows(self, layer: int, rows: Mapping[str, np.ndarray], consume: bool = False,
                  exact: bool = False) -> None:
        """Add rows [c, d] of every name at a centred layer.

        Rows near the centre go through float32 products. A row far from it in any
        representation (|x - centre|^2 above _FAR spreads) goes through float64 products of its
        float32 shift; with `exact` (here or on the accumulator) every row goes through float64
        products of its exact shift (float32 rows and centre differ exactly in float64)."""
        if not (exact or self.exact):
            Z = {name: self._shifted(name, layer, X, consume) for name, X in rows.items()}
            norms = {name: torch.linalg.vector_norm(torch.from_numpy(z), dim=1).square_().numpy()
                     for name, z in Z.items()}  # float32
            far = np.zeros(len(next(iter(Z.values()))), dtype=bool)
            for name, a in norms.items():
                far |= a > _FAR * self.moments[name].spread[layer]
            if not far.any():
                self._add_products(layer, Z, norms)
                return
            if not far.all():
                self._add_products(layer, {name: z[~far] for name, z in Z.items()},
                                   {name: a[~far] for name, a in norms.items()})
            Z64 = {name: z[far].astype(np.float64) for name, z in Z.items()}
        else:
            Z64 = {name: np.asarray(X, dtype=np.float32).astype(np.float64) - self.moments[name].shift[layer]
                   for name, X in rows.items()}
        self._add_products(layer, Z64, {name: np.einsum("ij,ij->i", z, z) for name, z in Z64.items()})

    def _add_products(self, layer: int, Z: Mapping[str, np.ndarray], norms: Mapping[str, np.ndarray]) -> None:
        """Add shifted rows Z [c, d] of every name, with their squared norms: products in Z's
        dtype (float32, or float64 for exact rows), every sum across rows and chunks in float64."""
        # Per name, one pass over its rows gives the column sums, sum |x_i|^2 x_i and, for each
        # partner p, sum |p_i|^2 x_i: the product of [1, |x_i|^2, |p_i|^2, ...] with X.
        partners = {name: [y if x == name else x for x, y in self.pairs if name in (x, y)] for name in Z}
        weighted, a64 = {}, {name: a.astype(np.float64) for name, a in norms.items()}
        for name, z in Z.items():
            w = np.stack([np.ones_like(norms[name]), norms[name]] + [norms[p] for p in partners[name]])
            weighted[name] = dict(zip([None, name] + partners[name], _matmul(w, z).astype(np.float64)))
            self._add_moments(name, layer, z, a64[name], weighted[name])
        for x, y in self.pairs:
            self._add_cross((x, y), layer, Z[x], Z[y], a64[x], a64[y], weighted[x][y], weighted[y][x])

    def _add_moments(self, name: str, layer: int, X: np.ndarray, a: np.ndarray, weighted: dict) -> None:
        m = self.moments[name]
        c, d = X.shape
        m.gram.add(layer, _gram(X), self._pool)  # this chunk's products, summed in float64
        m.s[layer] += weighted[None]
        m.u[layer] += weighted[name]
        m.a1[layer] += a.sum()
        m.a2[layer] += float(a @ a)
        m.n[layer] += c
        m.flops += _gram_flops(c, d)

    def _add_cross(self, pair, layer: int, X: np.ndarray, Y: np.ndarray, a: np.ndarray, b: np.ndarray,
                   v_xy: np.ndarray, v_yx: np.ndarray) -> None:
        (c, d1), d2 = X.shape, Y.shape[1]
        acc = self.cross.get(pair)
        if acc is None:
            L = self.n_layers
            acc = self.cross[pair] = _Cross(c=_Products.zeros(L), ab=np.zeros(L),
                                            v_xy=np.zeros((L, d1)), v_yx=np.zeros((L, d2)))
        acc.c.add(layer, _matmul(X.T, Y), self._pool)
        acc.ab[layer] += float(a @ b)
        acc.v_xy[layer] += v_xy
        acc.v_yx[layer] += v_yx
        self.moments[pair[0]].flops += 2.0 * c * d1 * d2


@dataclass
class StreamingLinearCKA(_Accumulator):
    """Accumulate chunks, then read per-layer linear CKA (biased and debiased) of each pair.

    Parameters
    ----------
    pairs : list of (str, str)
        The compared pairs, by representation name; every name in a pair must appear in
        each chunk passed to :meth:`update`.
    n_layers : int, optional
        Layers per representation; needed only when chunks hold some of the layers.
    exact : bool, default True
        Every row through float64 products, not only the held and far ones (see the module
        docstring): CKA within about 1e-10 of a float64 reference; False: float32 products for
        the rows near the centre, about 1e-8 (up to 1e-7), at about half the product time.

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

    def seal(self, layers: Iterable[int] | None = None) -> None:
        """Mark layers (default: all) complete: their d x d product sums are reduced to the
        numbers CKA needs and their memory reused. Results seal every layer they read; a
        layer-by-layer pass seals each layer when its rows are done, so it holds one d x d
        matrix per representation and pair. Sealed layers accept no more rows."""
        layers = range(self.n_layers or 0) if layers is None else layers
        for layer in layers:
            if layer in self._sealed:
                continue
            if layer in self._held:
                self._release(layer, self._held.pop(layer), None)
            for m in self.moments.values():
                if layer in m.gram.open:
                    m.gram.seal(layer, m.s[layer], m.s[layer], self._pool)
            for (x, y), acc in self.cross.items():
                if layer in acc.c.open:
                    acc.c.seal(layer, self.moments[x].s[layer], self.moments[y].s[layer], self._pool)
            self._sealed.add(layer)

    # ------------------------------------------------------------------------------------
    def _self_terms(self, name: str):
        """Per-layer (biased self-HSIC, unbiased self-HSIC, its term scale, constant flag)."""
        self.seal()
        if name not in self._self_cache:
            self._self_cache[name] = self._compute_self_terms(name)
        return self._self_cache[name]

    def _compute_self_terms(self, name: str):
        m = self.moments[name]
        n = self.n
        biased, unbiased, scale = _hsic_terms(m.gram.frob, m.gram.sps, m.a2, m.u, m.u, m.s, m.s, m.a1, m.a1, n)
        total = m.a1 - np.einsum("li,li->l", m.s, m.s) / n  # trace of the centred Gram
        shift = m.shift.astype(np.float64)
        raw = m.a1 + 2.0 * np.einsum("li,li->l", shift, m.s) + n * np.einsum("li,li->l", shift, shift)
        return biased, unbiased, scale, total <= (_CONSTANT_RTOL**2) * raw  # constant: no variation

    def results(self, x: str, y: str, *, debiased: bool, names: tuple[str, str] | None = None
                ) -> list[SimilarityResult]:
        """Per-layer linear CKA of pair (x, y), NaN with a reason where a layer is undefined."""
        self.seal()
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
        biased, unbiased, _ = _hsic_terms(acc.c.frob, acc.c.sps, acc.ab, acc.v_xy, acc.v_yx, mx.s, my.s, mx.a1,
                                          my.a1, n)
        if debiased:
            return _results(unbiased, ux, uy, cx, cy, ux <= _DEBIASED_RTOL * sx, uy <= _DEBIASED_RTOL * sy, n=n,
                            debiased=True, names=names)
        return _results(biased, bx, by, cx, cy, bx <= 0.0, by <= 0.0, n=n, debiased=False, names=names)


def _hsic_terms(frob, s_c_s, ab, v_xy, v_yx, s_x, s_y, a1_x, a1_y, n):
    """Per layer, from moments ([L, ...] arrays) and C's terms `frob` = |C|_F^2 and `s_c_s` =
    s_x'C s_y (C = X'Y): the biased HSIC of the centred features |C - s_x s_y'/n|^2, Song et
    al.'s unbiased HSIC times n(n-3), and the magnitude of its terms.

    With K~, L~ the Grams with zeroed diagonals: tr(K~L~) = |X'Y|^2 - sum_i a_i b_i,
    1'K~1 = |s_x|^2 - sum_i a_i, and 1'K~L~1 = s_x' X'Y s_y - s_x' v_xy - s_y' v_yx + sum_i a_i b_i.
    """
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

    `acc` must already hold both representations' moments (its pass fixed their centres);
    `chunks` is a callable returning a fresh iterator over the same rows as that pass. The
    cross-products of all layer pairs accumulate in float64 blocks of at most `budget_bytes`,
    so a block of x's layers is finished per pass over the rows (one pass when it fits).
    NaN where a layer does not vary across examples. Products are float32, or float64 for an
    `exact` accumulator.
    """
    mx, my = acc.moments[x], acc.moments[y]
    dtype = np.float64 if acc.exact else np.float32
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
            X = np.ascontiguousarray(chunk[x][layers], dtype=np.float32).astype(dtype, copy=False)
            Y = np.ascontiguousarray(chunk[y], dtype=np.float32).astype(dtype, copy=False)
            X, Y = X - mx.shift[layers, None, :].astype(dtype), Y - my.shift[:, None, :].astype(dtype)
            c = X.shape[1]
            total += _matmul(X.transpose(1, 0, 2).reshape(c, -1).T, Y.transpose(1, 0, 2).reshape(c, -1))
        for k, i in enumerate(layers):
            for j in range(ly):
                if cx[i] or cy[j]:
                    continue
                cij = total[k * d1:(k + 1) * d1, j * d2:(j + 1) * d2] - np.outer(mx.s[i], my.s[j]) / n
                out[i, j] = np.einsum("ij,ij->", cij, cij) / np.sqrt(bx[i] * by[j])
    return out
