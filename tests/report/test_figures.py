import numpy as np
import pandas as pd
from PIL import Image

from mossa.report import plot_cka_by_layer


def test_cka_by_layer_draws_and_skips_undefined(tmp_path):
    rows = []
    for task in ("a", "b", "c"):
        for model in ("base", "experimental"):
            for layer in range(4):
                value = np.nan if layer == 0 else 1 - 0.1 * layer - (0.05 if model == "base" else 0)
                rows.append({"task": task, "cluster": "X", "model": model, "layer": layer, "measure": "linear_cka",
                             "value": value, "n_examples": 10,
                             "undefined_reason": "does not vary" if layer == 0 else ""})
    path = tmp_path / "fig.png"
    plot_cka_by_layer(pd.DataFrame(rows), path, title="tiny")
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert img.std() > 10  # not blank
