"""Fig 5 marks counts at the cap min(n-1, d) on its common n; Fig 6 circles BH-adjusted p values
and says why it is empty when no correlation was computed."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from mossa.report import figures, plot_correlations, plot_variance_dims

LABELS = {"flesch_kincaid_grade": "FK grade", "train_size": "training examples"}


@pytest.fixture
def drawn(monkeypatch):
    """Each figure's axes, texts and title, by file stem, as it is saved."""
    out, save = {}, figures.save_figure

    def record(fig, path):
        out[Path(path).stem] = {"axes": fig.axes, "title": fig._suptitle.get_text() if fig._suptitle else "",
                                "text": " ".join(t.get_text() for ax in fig.axes for t in ax.texts)}
        save(fig, path)

    monkeypatch.setattr(figures, "save_figure", record)
    return out


def _points(ax) -> np.ndarray:
    """(x, y) of every scatter marker on the axes."""
    pts = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    return np.concatenate(pts) if pts else np.empty((0, 2))


def _spectral(cap=9):
    rows = []
    for task, dims in (("a", [0, 4, 9]), ("b", [0, 3, 6])):  # task a needs every direction at layer 2
        for model in ("base", "experimental", "control"):
            for layer, k in enumerate(dims):
                rows.append({"model": model, "task": task, "cluster": "X", "layer": layer, "dims_for_variance": k,
                             "effective_rank": np.nan if layer == 0 else k / 2, "total_variance": float(layer),
                             "top1_variance_fraction": np.nan if layer == 0 else 0.3, "max_dims": cap,
                             "at_cap": k == cap, "threshold": 0.99, "n_examples": cap + 1, "n_available": 40,
                             "n_dropped": 0, "note": "does not vary across examples" if layer == 0 else ""})
    return pd.DataFrame(rows)


def test_fig5_marks_a_count_at_the_cap_and_states_the_common_n(tmp_path, drawn):
    plot_variance_dims(_spectral(), tmp_path / "variance_dims.png", title="tiny")
    fig = drawn["variance_dims"]
    points = _points(fig["axes"][0])
    assert len(points) == 3 and (points == [2, 9]).all()  # one triangle per model at layer 2, on the cap
    assert "cap min(n-1, d) = 9, n = 10 examples per task" in fig["text"]
    labels = fig["axes"][0].get_legend_handles_labels()[1]
    assert "a task at the cap (a lower bound)" in labels
    assert "each on n = 10 examples" in fig["title"]
    assert (tmp_path / "variance_dims.svg").is_file()


def test_fig5_without_a_count_at_the_cap_has_no_mark(tmp_path, drawn):
    plot_variance_dims(_spectral(cap=12), tmp_path / "variance_dims.png", title="tiny")
    fig = drawn["variance_dims"]
    assert not len(_points(fig["axes"][0]))
    assert "a task at the cap (a lower bound)" not in fig["axes"][0].get_legend_handles_labels()[1]


def _corr(**over):
    rows = []
    for prop in LABELS:
        for model in ("base", "experimental"):
            for layer in range(3):
                rows.append({"model": model, "layer": layer, "property": prop, "r": 0.8, "p_value": 0.01,
                             "p_adjusted": 0.2, "n_tasks": 8, "reason": ""})
    corr = pd.DataFrame(rows)
    for column, value in over.items():
        corr[column] = value
    return corr


def test_fig6_circles_adjusted_not_raw_p_values(tmp_path, drawn):
    corr = _corr()  # raw p 0.01 everywhere, adjusted 0.2: nothing survives
    corr.loc[(corr["model"] == "base") & (corr["layer"] == 1) & (corr["property"] == "train_size"),
             "p_adjusted"] = 0.03
    plot_correlations(corr, tmp_path / "correlations.png", title="tiny", labels=LABELS)
    fig = drawn["correlations"]
    fk, size = fig["axes"]
    assert not len(_points(fk))
    assert _points(size).tolist() == [[1.0, 0.8]]
    assert "Benjamini-Hochberg adjusted p < 0.05 over 12 tests" in fig["title"]


def test_fig6_too_few_tasks_is_an_empty_figure_that_says_why(tmp_path, drawn):
    reason = "only 3 tasks with a defined value, fewer than the 5 a correlation across tasks needs"
    corr = _corr(r=np.nan, p_value=np.nan, p_adjusted=np.nan, n_tasks=3, reason=reason)
    plot_correlations(corr, tmp_path / "correlations.png", title="tiny", labels=LABELS)
    fig = drawn["correlations"]
    assert fig["text"].count("no defined r") == 2
    assert "fewer than the 5 a correlation" in fig["text"].replace("\n", " ")
    assert "over 0 tests" in fig["title"]
