"""The outlier-dimension figure: drawn from the outlier and similarity tables, with a note where empty."""

import numpy as np
import pandas as pd
from PIL import Image

from mossa.report import _robustness_figures, plot_outliers


def _tables(defined: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    outliers, sim = [], []
    for task in ("a", "b", "c"):
        for layer in range(6):
            for model in ("base", "experimental", "control"):
                outliers.append({"task": task, "model": model, "layer": layer, "n_outliers": int(rng.integers(0, 4)),
                                 "outlier_dims": "", "top_direction_share": rng.uniform() if defined else np.nan,
                                 "outlier_variance_share": 0.2})
            for measure in ("debiased_cka", "debiased_cka_no_outliers", "linear_cka_standardized"):
                for model in ("base", "experimental"):
                    value = 0.5 + 0.05 * layer * (model == "experimental") if defined else np.nan
                    sim.append({"task": task, "model": model, "layer": layer, "measure": measure, "value": value})
    return pd.DataFrame(outliers), pd.DataFrame(sim)


def test_outliers_figure_draws_both_panels(tmp_path):
    path = tmp_path / "outliers.png"
    plot_outliers(*_tables(), path, title="tiny")
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape[1] > 1000 and img.std() > 10 and path.with_suffix(".svg").is_file()


def test_outliers_figure_notes_what_is_undefined(tmp_path, monkeypatch):
    notes = []
    monkeypatch.setattr(_robustness_figures, "_note_empty", lambda ax, text, layers=(): notes.append(text))
    plot_outliers(*_tables(defined=False), tmp_path / "outliers.png", title="tiny")
    assert len(notes) == 2 and "varies across examples" in notes[0] and "no defined gain" in notes[1]
