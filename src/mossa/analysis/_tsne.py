"""t-SNE embeddings of last-token representations, all tasks pooled (the paper's Fig 4).

Stage: analysis. Reads activation arrays that the caller has loaded from the store (no store
access here, no model); returns a long table that the report stage draws with
:func:`mossa.report.plot_tsne`.

Method
------
For each model (``"base"`` = B, ``"experimental"`` = E) and each requested layer:

1. pool the rows of every task (tasks in sorted order), optionally a seeded subsample of
   ``per_task`` rows per task (the same examples for both models and every layer);
2. centre the pooled rows (nothing is standardised: t-SNE works on Euclidean distances, and
   scaling each dimension to unit variance would blow up the many near-dead dimensions of a
   transformer's residual stream);
3. reduce to ``pca_dims`` dimensions with PCA (``svd_solver="full"``, exact and deterministic),
   the usual denoising and speed-up step before t-SNE;
4. embed in 2-D with :class:`sklearn.manifold.TSNE` (Barnes-Hut, ``init="pca"``,
   ``random_state=seed``, perplexity ``min(perplexity, (n - 1) / 3)``).

A layer whose pooled rows are all identical (up to float noise; layer 0 when every prompt ends
with the same token) has no structure to show: t-SNE of identical points is pure optimiser
noise. Such a (model, layer) is left out of the table and listed in
``df.attrs["skipped"]`` with its reason, instead of being drawn.

Speed
-----
Cost is dominated by the t-SNE optimisation, linear in ``max_iter`` and roughly
``n log n`` in the number of pooled rows. The default ``max_iter=500`` (sklearn's default is
1000; the first 250 iterations are early exaggeration) gives settled embeddings at the demo's
size: 12 tasks x 96 examples (1152 rows), d=640, 5 layers x 2 models took 23-29 s on a shared
2-core CPU with one thread (``n_threads=1``, the default), but 86 s with the libraries' default
two OpenMP threads while another process held a core. Each (model, layer) panel is one job, so a
``pool`` of worker processes embeds panels side by side, one thread each (the embedding does
not depend on the thread count or the pool). For larger studies pass ``per_task`` (e.g. 100) to
bound the rows per task: the time then grows with the number of tasks, not with their size.

References
----------
Zhao, Ziser and Cohen, "Layer by Layer: Uncovering Where Multi-Task Learning Happens in
Instruction-Tuned Large Language Models", EMNLP 2024 (Fig 4).
van der Maaten and Hinton, "Visualizing Data using t-SNE", JMLR 9, 2008.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd

from mossa.workers import JobPool
from mossa.errors import MossaError

MODELS = ("base", "experimental")
TSNE_COLUMNS = ["model", "layer", "task", "cluster", "example", "x", "y"]
_CONSTANT_RTOL = 1e-5  # rows count as identical when they differ by less than this, relative to scale
_MIN_ROWS = 5  # fewer pooled rows than this cannot be embedded by t-SNE (perplexity must stay < n)


def default_tsne_layers(n_layers: int, k: int = 5) -> list[int]:
    """Layers at which to draw t-SNE panels: ``k`` layers spread evenly, first and last included.

    Layer 0 (the embedding output) is left out when ``k >= 2``: the representation compared is
    the last prompt token's, and when every prompt ends with the same token (a template's
    trailing text) layer 0 is the same vector for every example, so it cannot be embedded.
    The layers are therefore spread over ``1..n_layers`` (the paper's Fig 4 uses 1, 10, 15, 20,
    32 for a 32-layer model; this gives 1, 9, 17, 24, 32). With ``k == 1`` the last layer is
    returned. With ``k >= n_layers`` every layer 1..n_layers is returned.

    Parameters
    ----------
    n_layers : int
        Number of transformer layers (activations have ``n_layers + 1`` entries, 0 = embeddings).
    k : int, default=5
        How many layers to pick.

    Returns
    -------
    list of int
        Sorted, unique layer numbers in ``1..n_layers``.

    Raises
    ------
    MossaError
        If ``n_layers`` or ``k`` is not an integer >= 1.

    Examples
    --------
    >>> default_tsne_layers(32)
    [1, 9, 17, 24, 32]
    >>> default_tsne_layers(3, k=5)
    [1, 2, 3]
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, Integral) or n_layers < 1:
        raise MossaError(f"default_tsne_layers: expected n_layers to be an integer >= 1, got {n_layers!r}; "
                         "fix: pass the model's number of transformer layers (acts.shape[0] - 1)")
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise MossaError(f"default_tsne_layers: expected k to be an integer >= 1, got {k!r}; "
                         "fix: use k=5 (the paper's number of panels)")
    if k == 1:
        return [int(n_layers)]
    spread = np.floor(np.linspace(1, n_layers, int(k)) + 0.5).astype(int)  # round half up
    return sorted({int(v) for v in spread})


def check_tsne_layers(layers, n_layers: int, where: str = "field 'tsne_layers'") -> list[int]:
    """The t-SNE layers as ints, checked against a model of ``n_layers`` transformer layers
    (states 0..n_layers, 0 = embeddings) before any work is done.

    Raises
    ------
    MossaError
        For an empty list, a non-integer, a repeated layer, or a layer outside 0..n_layers.
    """
    if (not isinstance(layers, (list, tuple, np.ndarray)) or len(layers) == 0
            or any(isinstance(v, bool) or not isinstance(v, Integral) for v in layers)):
        raise MossaError(f"{where}: expected a non-empty list of layer numbers, got {layers!r}")
    bad = [int(v) for v in layers if not 0 <= v <= n_layers]
    if bad:
        raise MossaError(f"{where}: layer(s) {', '.join(map(str, bad))} out of range; the model has layers "
                         f"0..{n_layers} (0 = embeddings)")
    if len({int(v) for v in layers}) != len(layers):
        raise MossaError(f"{where}: names a layer twice: {list(layers)}")
    return [int(v) for v in layers]


def _check_inputs(reps, clusters, layers, seed, per_task, pca_dims, perplexity, max_iter):
    """Validate at the door; return {model: {task: float32 array}} in canonical order, and n_layers+1."""
    where = "tsne_embeddings"
    if not isinstance(reps, dict) or not reps:
        raise MossaError(f"{where}: expected reps as a non-empty dict {{model: {{task: acts}}}}, got "
                         f"{type(reps).__name__} {reps!r:.80}; fix: pass e.g. {{'base': {{task: acts}}, "
                         "'experimental': {task: acts}}")
    unknown = [m for m in reps if m not in MODELS]
    if unknown:
        raise MossaError(f"{where}: expected model keys among {list(MODELS)}, got {unknown}; fix: key B's "
                         "activations by 'base' and E's by 'experimental'")
    if not isinstance(clusters, dict):
        raise MossaError(f"{where}: expected clusters as a dict {{task: cluster name}}, got "
                         f"{type(clusters).__name__}; fix: build it from study.json's tasks entries")
    checked: dict[str, dict[str, np.ndarray]] = {}
    n_entries = None
    for model in (m for m in MODELS if m in reps):
        tasks = reps[model]
        if not isinstance(tasks, dict) or not tasks:
            raise MossaError(f"{where}: expected reps[{model!r}] as a non-empty dict {{task: acts}}, got "
                             f"{tasks!r:.80}; fix: load at least one task's activations for {model!r}")
        missing = sorted(t for t in tasks if t not in clusters)
        if missing:
            raise MossaError(f"{where}: expected a cluster for every task, got none for {missing} "
                             f"(reps[{model!r}]); fix: add them to clusters (study.json lists each task's cluster)")
        checked[model] = {}
        d = None
        for task in sorted(tasks):
            arr = np.asarray(tasks[task])
            at = f"reps[{model!r}][{task!r}]"
            if arr.ndim != 3 or 0 in arr.shape:
                raise MossaError(f"{where}: expected {at} as a 3-D array [n_layers+1, n_examples, d] with no "
                                 f"empty axis, got shape {arr.shape}; fix: pass Activations.acts as read from the "
                                 "store (one row per example at every layer)")
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise MossaError(f"{where}: expected {at} to hold real numbers, got dtype {arr.dtype}; "
                                 "fix: pass float activations")
            if n_entries is None:
                n_entries = arr.shape[0]
            if arr.shape[0] != n_entries:
                raise MossaError(f"{where}: expected every task and model to have the same number of layers, "
                                 f"got {arr.shape[0]} entries for {at} and {n_entries} before it; fix: pass "
                                 "activations extracted from models of the same architecture")
            if d is None:
                d = arr.shape[2]
            if arr.shape[2] != d:
                raise MossaError(f"{where}: expected every task of {model!r} to have the same width d to be "
                                 f"pooled, got d={arr.shape[2]} for {at} and d={d} before it; fix: pass one "
                                 "model's activations per key")
            if not np.all(np.isfinite(arr)):
                bad = sorted({int(i) for i in np.nonzero(~np.isfinite(arr))[0]})
                raise MossaError(f"{where}: expected finite activations, got NaN or inf in {at} at layers "
                                 f"{bad[:10]}; fix: re-extract that task (a diverged adapter or a dtype overflow)")
            checked[model][task] = arr
    if (not isinstance(layers, (list, tuple, np.ndarray)) or len(layers) == 0
            or any(isinstance(v, bool) or not isinstance(v, Integral) for v in layers)):
        raise MossaError(f"{where}: expected layers as a non-empty list of integers, got {layers!r}; fix: use "
                         "default_tsne_layers(n_layers)")
    bad_layers = [int(v) for v in layers if not 0 <= v < n_entries]
    if bad_layers:
        raise MossaError(f"{where}: expected layers in 0..{n_entries - 1} (the activations have {n_entries} "
                         f"entries, 0 = embeddings), got {bad_layers}; fix: use "
                         f"default_tsne_layers({n_entries - 1})")
    if len(set(int(v) for v in layers)) != len(layers):
        raise MossaError(f"{where}: expected unique layers, got {list(layers)}; fix: drop the repeats")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise MossaError(f"{where}: expected seed to be an integer >= 0, got {seed!r}; fix: use seed=0")
    if per_task is not None and (isinstance(per_task, bool) or not isinstance(per_task, Integral) or per_task < 1):
        raise MossaError(f"{where}: expected per_task to be None (all rows) or an integer >= 1, got {per_task!r}; "
                         "fix: use e.g. per_task=100, or None")
    if isinstance(pca_dims, bool) or not isinstance(pca_dims, Integral) or pca_dims < 2:
        raise MossaError(f"{where}: expected pca_dims to be an integer >= 2, got {pca_dims!r}; fix: use pca_dims=50")
    if isinstance(perplexity, bool) or not isinstance(perplexity, Real) or not (np.isfinite(perplexity)
                                                                               and perplexity > 0):
        raise MossaError(f"{where}: expected perplexity to be a finite number > 0, got {perplexity!r}; fix: use "
                         "perplexity=30 (5-50 is the usual range)")
    if isinstance(max_iter, bool) or not isinstance(max_iter, Integral) or max_iter < 250:
        raise MossaError(f"{where}: expected max_iter to be an integer >= 250 (sklearn's minimum: the first 250 "
                         f"iterations are early exaggeration), got {max_iter!r}; fix: use max_iter=500")
    for model, tasks in checked.items():
        n = sum(min(a.shape[1], per_task or a.shape[1]) for a in tasks.values())
        if n < _MIN_ROWS:
            raise MossaError(f"{where}: expected at least {_MIN_ROWS} pooled rows for {model!r} to embed, got {n}; "
                             "fix: pass more tasks or examples (or a larger per_task)")
    return checked


def _subsample(n: int, per_task: int | None, seed: int, task_index: int) -> np.ndarray:
    """Row indices kept for one task: all, or a seeded sorted subsample (same for every model and layer)."""
    if per_task is None or per_task >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, task_index])
    return np.sort(rng.choice(n, size=per_task, replace=False))


def _constant_reason(raw: np.ndarray, centred: np.ndarray) -> str | None:
    """Why pooled rows [n, d] cannot be embedded (all identical up to float noise), or None if they can."""
    dev = float(np.abs(centred).max())
    scale = float(np.abs(raw).max())
    if dev == 0.0:
        return "constant representation: all pooled rows are identical"
    if dev <= _CONSTANT_RTOL * scale:
        return (f"constant representation: pooled rows differ by at most {dev:.2g}, below "
                f"{_CONSTANT_RTOL:g} of their scale {scale:.3g} (float noise only)")
    return None


def _embed(raw: np.ndarray, seed: int, pca_dims: int, perplexity: float, max_iter: int,
           n_threads: int | None) -> np.ndarray | str:
    """The 2-D t-SNE [n, 2] of one panel's pooled rows [n, d], or why it has no structure to show (a job)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = raw - raw.mean(axis=0)
    reason = _constant_reason(raw, x)
    if reason is not None:
        return reason
    n = x.shape[0]
    with threadpool_limits(limits=n_threads):
        z = PCA(n_components=int(min(pca_dims, n, x.shape[1])), svd_solver="full").fit_transform(x)  # [n, k]
        return TSNE(n_components=2, perplexity=float(min(perplexity, (n - 1) / 3)), init="pca", random_state=seed,
                    max_iter=max_iter, learning_rate="auto").fit_transform(z)  # [n, 2]


def tsne_embeddings(reps: dict[str, dict[str, np.ndarray]], clusters: dict[str, str], layers: list[int], *,
                    seed: int = 0, per_task: int | None = None, pca_dims: int = 50, perplexity: float = 30.0,
                    max_iter: int = 500, n_threads: int | None = 1, pool: JobPool | None = None) -> pd.DataFrame:
    """2-D t-SNE of each model's last-token representations at given layers, all tasks pooled.

    Parameters
    ----------
    reps : dict of str to dict of str to ndarray
        ``reps[model][task]`` is ``acts`` of shape ``(n_layers + 1, n_examples, d)`` (layer 0 =
        embedding output), for ``model`` in ``{"base", "experimental"}`` (either or both). All
        tasks of a model must share ``d``; all arrays must share ``n_layers + 1``.
    clusters : dict of str to str
        Task cluster of every task in ``reps`` (the colour in the figure).
    layers : list of int
        Layers to embed, in ``0..n_layers``; see :func:`default_tsne_layers`.
    seed : int, default=0
        Seeds the subsample, the t-SNE initialisation and its optimiser: equal seeds give equal
        tables.
    per_task : int or None, default=None
        Keep at most this many examples per task (a seeded subsample, the same examples for
        both models and every layer). None keeps all.
    pca_dims : int, default=50
        PCA dimensions before t-SNE (capped at the number of rows and at ``d``).
    perplexity : float, default=30.0
        t-SNE perplexity, capped at ``(n - 1) / 3`` for ``n`` pooled rows.
    max_iter : int, default=500
        t-SNE iterations (>= 250). 500 keeps the demo's 10 embeddings well under 40 s on 2 cores.
    n_threads : int or None, default=1
        BLAS/OpenMP threads for PCA and t-SNE (via threadpoolctl). One thread is the default
        because at this size threads gain little, while OpenMP threads that share busy cores
        with another process spin-wait and ran t-SNE ~10x slower in our measurements. None
        leaves the libraries' defaults.
    pool : JobPool, optional
        Where the panels (one job per model and layer) run; default: one after another in this
        process. The table does not depend on it.

    Returns
    -------
    pandas.DataFrame
        Long table with columns ``model, layer, task, cluster, example, x, y``: one row per
        (model, layer, kept example); ``example`` is the row index within its task's
        activations. ``df.attrs["skipped"]`` lists ``(model, layer, reason)`` for every
        requested (model, layer) that was not embedded (constant representation), and
        ``df.attrs["params"]`` records the settings used.

    Raises
    ------
    MossaError
        If ``reps`` is not ``{model: {task: 3-D array}}`` with known models, consistent layer
        counts and widths and finite values; if a task has no cluster; if a layer is out of
        range or repeated; if a parameter is out of range; or if fewer than 5 rows are pooled.

    See Also
    --------
    default_tsne_layers : which layers to embed.
    mossa.report.plot_tsne : draws the table as a models x layers grid.

    References
    ----------
    Zhao, Ziser and Cohen, "Layer by Layer", EMNLP 2024, Fig 4.
    van der Maaten and Hinton, "Visualizing Data using t-SNE", JMLR 9, 2008.
    """
    checked = _check_inputs(reps, clusters, layers, seed, per_task, pca_dims, perplexity, max_iter)
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, Integral)
                                  or n_threads < 1):
        raise MossaError(f"tsne_embeddings: expected n_threads to be None or an integer >= 1, got {n_threads!r}; "
                         "fix: use n_threads=1 (the default) on a shared machine")
    jobs = pool or JobPool()
    panels = []  # (model, layer, columns, future of the 2-D embedding or the reason it is skipped)
    for model, tasks in checked.items():
        names = list(tasks)  # sorted by _check_inputs
        keep = {t: _subsample(tasks[t].shape[1], per_task, seed, i) for i, t in enumerate(names)}
        task_col = np.concatenate([np.full(len(keep[t]), t, dtype=object) for t in names])
        columns = {"task": task_col, "cluster": np.array([clusters[t] for t in task_col], dtype=object),
                   "example": np.concatenate([keep[t] for t in names])}
        for layer in (int(v) for v in layers):
            raw = np.concatenate([tasks[t][layer, keep[t]] for t in names]).astype(np.float64)  # [n, d]
            panels.append((model, layer, columns,
                           jobs.submit(_embed, raw, seed, pca_dims, perplexity, max_iter, n_threads)))
    frames: list[pd.DataFrame] = []
    skipped: list[tuple[str, int, str]] = []
    for model, layer, columns, future in panels:
        xy = future.result()
        if isinstance(xy, str):
            skipped.append((model, layer, xy))
            continue
        frames.append(pd.DataFrame({"model": model, "layer": layer, **columns, "x": xy[:, 0], "y": xy[:, 1]}))
    if frames:
        df = pd.concat(frames, ignore_index=True)
    else:
        df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            TSNE_COLUMNS, [object, int, object, object, int, float, float])})
    df.attrs["skipped"] = skipped
    df.attrs["params"] = {"seed": int(seed), "per_task": per_task, "pca_dims": int(pca_dims),
                          "perplexity": float(perplexity), "max_iter": int(max_iter)}
    return df


TSNE_PER_TASK = 1000  # rows per task embedded from a store; more add time and no legibility


def tsne_of_runs(runs: dict, clusters: dict[str, str], layers: list[int], *, seed: int = 0,
                 per_task: int | None = TSNE_PER_TASK, n_threads: int | None = 1,
                 pool: JobPool | None = None) -> pd.DataFrame:
    """:func:`tsne_embeddings` over stored runs ``{model: {task: ActivationFile}}``, reading only
    the embedded layers of the seeded per-task subsample (memory independent of n). ``n_threads``
    as in :func:`tsne_embeddings` (a study passes its unit's thread count).

    ``example`` in the result is the row index within the task's stored activations, as in
    :func:`tsne_embeddings` with the same ``per_task``; ``pool`` as there.
    """
    first = next(iter(next(iter(runs.values())).values()))
    layers = check_tsne_layers(list(layers), first.shape[0] - 1, where="t-SNE layers")
    names = sorted(next(iter(runs.values())))
    keep = {t: _subsample(next(iter(runs.values()))[t].n, per_task, seed, i) for i, t in enumerate(names)}
    reps = {m: {t: tasks[t].read(rows=keep[t], layers=layers) for t in names} for m, tasks in runs.items()}
    df = tsne_embeddings(reps, clusters, list(range(len(layers))), seed=seed, n_threads=n_threads, pool=pool)
    skipped = [(m, layers[k], reason) for m, k, reason in df.attrs["skipped"]]
    params = {**df.attrs["params"], "per_task": per_task}
    df["layer"] = [layers[k] for k in df["layer"]]
    df["example"] = [int(keep[t][e]) for t, e in zip(df["task"], df["example"])]
    df.attrs.update(skipped=skipped, params=params)
    return df


__all__ = ["TSNE_COLUMNS", "TSNE_PER_TASK", "check_tsne_layers", "default_tsne_layers", "tsne_embeddings",
           "tsne_of_runs"]
