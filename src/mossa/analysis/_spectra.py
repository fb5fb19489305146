"""Fig 5: per layer, the number of principal directions explaining a share of the variance
(and the effective rank) of each model's representation of each task, on a common number of
examples.

Stage: analysis (reads activation files; writes nothing itself).

Rows are matched by example id across B, E and C_t, and an example whose state is non-finite
in any of them at any layer is dropped from all three (as in the similarity analysis), so the
three spectra of a task describe the same examples. ``n`` examples span at most
``min(n - 1, d)`` directions, so counts on different ``n`` are not comparable: every task is
computed on a seeded subsample of the same size, the smallest task's kept count.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd

from mossa.analysis._similarity import aligned_rows, joint_finite
from mossa.errors import MossaError
from mossa.spectral import DegenerateSpectrumWarning, layer_spectrum
from mossa.store import StudyDir

MODELS = ("base", "experimental", "control")


def spectral_table(study: StudyDir, tasks: dict[str, str], *, threshold: float = 0.99,
                   seed: int = 0) -> pd.DataFrame:
    """Rows (model, task, cluster, layer, dims_for_variance, effective_rank, ...) for B, E and C_t.

    Every task is summarised on ``n_examples`` = the smallest number of examples any task keeps
    (finite in B, E and C_t), a subsample drawn per task with ``numpy.random.default_rng([seed,
    crc32(task)])`` and shared by its three models, so that the cap ``max_dims = min(n - 1, d)``
    is the same for every task. ``at_cap`` marks a count at that cap (a lower bound, not a
    measurement). ``n_available`` is the task's kept count before subsampling and ``n_dropped``
    the shared examples dropped for non-finite states. A constant layer (layer 0 at the shared
    cue) has 0 directions and an undefined effective rank (NaN); the warning that says so is
    folded into the `note` column.

    Raises
    ------
    MossaError
        When some task keeps fewer than 2 examples (no variance to summarise).
    """
    kept = {}
    for task in tasks:
        runs = {m: study.activation_file(m, task) for m in MODELS}
        _, rows = aligned_rows(runs)
        finite = joint_finite(runs, rows)
        kept[task] = runs, {m: r[finite] for m, r in rows.items()}, int((~finite).sum())
    available = {task: len(rows["control"]) for task, (_, rows, _) in kept.items()}
    n = min(available.values())
    if n < 2:
        task = min(available, key=available.get)
        raise MossaError(f"spectral analysis: task {task!r} has {n} examples finite in B, E and C_t "
                         f"({kept[task][2]} dropped for NaN or Inf); a spectrum needs at least 2")
    frames = []
    for task, cluster in tasks.items():
        runs, rows, n_dropped = kept[task]
        pick = np.sort(np.random.default_rng([seed, zlib.crc32(task.encode())]).choice(
            available[task], size=n, replace=False))
        for model in MODELS:
            file = runs[model]
            for layer in range(file.shape[0]):  # one layer in memory at a time
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", DegenerateSpectrumWarning)
                    table = layer_spectrum(file.read(rows[model][pick], layers=[layer]), threshold=threshold,
                                           layers=[layer])
                table.insert(0, "model", model)
                table.insert(1, "task", task)
                table.insert(2, "cluster", cluster)
                table["threshold"] = threshold
                table["n_examples"] = n
                table["n_available"] = available[task]
                table["n_dropped"] = n_dropped
                table["note"] = ("does not vary across examples"
                                 if any(issubclass(w.category, DegenerateSpectrumWarning) for w in caught) else "")
                frames.append(table)
    return pd.concat(frames, ignore_index=True)
