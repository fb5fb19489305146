"""Fig 4 drawing: a models x layers grid of t-SNE panels, written atomically."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mossa.errors import MossaError
from mossa.report._tsne_figure import cluster_colours, plot_tsne


def _emb(n_clusters: int = 12, per: int = 15) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for model in ("base", "experimental"):
        for layer in (1, 4, 8):
            for c in range(n_clusters):
                centre = rng.normal(scale=20, size=2)
                for i in range(per):
                    x, y = centre + rng.normal(size=2)
                    rows.append({"model": model, "layer": layer, "task": f"task{c}", "cluster": f"cluster {c}",
                                 "example": i, "x": x, "y": y})
    emb = pd.DataFrame(rows)
    emb.attrs["skipped"] = [("base", 0, "constant representation: all pooled rows are identical"),
                            ("experimental", 0, "constant representation: all pooled rows are identical")]
    return emb


def test_figure_written_and_not_blank(tmp_path):
    path = tmp_path / "figs" / "tsne.png"
    plot_tsne(_emb(), path, title="tiny")
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape[1] > img.shape[0] > 300  # 4 layer columns (0 skipped) x 2 model rows
    assert img.std() > 10
    assert sorted(p.name for p in path.parent.iterdir()) == ["tsne.png", "tsne.svg"]  # no temp file left


def test_other_formats_and_empty_table_with_skips(tmp_path):
    emb = _emb().iloc[0:0]
    emb.attrs["skipped"] = [("base", 0, "constant representation")]
    plot_tsne(emb, tmp_path / "only_skipped.svg", title="tiny")
    assert "not embedded" in (tmp_path / "only_skipped.svg").read_text()


def test_colours_distinct_for_twelve_clusters():
    colours = cluster_colours([f"c{i}" for i in range(12)])
    assert len(set(colours.values())) == 12


@pytest.mark.parametrize(("emb", "name", "match"), [
    (pd.DataFrame({"model": ["base"], "x": [0.0]}), "f.png", r"columns.*missing \['layer', 'cluster', 'y'\].*fix"),
    (pd.DataFrame(columns=["model", "layer", "cluster", "x", "y"]), "f.png", r"at least one embedded.*fix"),
    (None, "f.txt", r"image suffix.*got '\.txt'.*fix"),
])
def test_rejects(tmp_path, emb, name, match):
    with pytest.raises(MossaError, match=match):
        plot_tsne(_emb() if emb is None else emb, tmp_path / name, title="x")
    assert not (tmp_path / name).exists()
