"""Fig 5: per layer, the number of principal directions explaining a share of the variance
(and the effective rank) of each model's representation of each task.

Stage: analysis (reads activation files; writes nothing itself).
"""

from __future__ import annotations

import warnings

import pandas as pd

from mossa.spectral import DegenerateSpectrumWarning, layer_spectrum
from mossa.store import StudyDir


def spectral_table(study: StudyDir, tasks: dict[str, str], *, threshold: float = 0.99) -> pd.DataFrame:
    """Rows (model, task, cluster, layer, dims_for_variance, effective_rank, ...) for B, E and C_t.

    A constant layer (layer 0 at the shared cue) has 0 directions and an undefined effective
    rank (NaN); the warning that says so is folded into the `note` column.
    """
    frames = []
    for task, cluster in tasks.items():
        for model in ("base", "experimental", "control"):
            file = study.activation_file(model, task)
            for layer in range(file.shape[0]):  # one layer in memory at a time
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", DegenerateSpectrumWarning)
                    table = layer_spectrum(file.read(layers=[layer]), threshold=threshold)
                table["layer"] = layer
                table.insert(0, "model", model)
                table.insert(1, "task", task)
                table.insert(2, "cluster", cluster)
                table["threshold"] = threshold
                table["n_examples"] = file.n
                table["note"] = "does not vary across examples" if caught else ""
                frames.append(table)
    return pd.concat(frames, ignore_index=True)
