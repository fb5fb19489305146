"""A study in which every similarity value is undefined (all test prompts of a task are one prompt)
finishes: the tables hold NaN with the reason, the report says every value is undefined and why,
and each figure built on the values is drawn empty with a note instead of failing."""

import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mossa.cli import main
from mossa.report import figures, plot_layer_by_layer
from mossa.report import summarize, summary_sentences

NOTES = {"cka_by_layer": "no defined value: ", "heldout_cka_by_layer": "no defined value: ",
         "cka_by_cluster": "no task has a defined value", "layer_by_layer_cka": "no defined value at any layer pair",
         "correlations": "no defined r", "variance_dims": "no spectrum to show"}


def _identical_task(path: Path, text: str) -> Path:
    rows = [{"id": f"r{i}", "input": {"sentence": text}, "target": "good" if i % 2 else "bad",
             "split": "train" if i < 24 else "test"} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _visible(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _recording(monkeypatch) -> dict:
    """Patch the figures' saver to keep each figure's texts and images (by file stem) as it saves."""
    drawn, save = {}, figures.save_figure

    def record(fig, path):
        drawn[Path(path).stem] = {"text": " ".join(t.get_text() for ax in fig.axes for t in ax.texts),
                                  "images": [im.get_array().shape for ax in fig.axes for im in ax.images]}
        save(fig, path)

    monkeypatch.setattr(figures, "save_figure", record)
    return drawn


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("undefined")
    files = [_identical_task(root / "same_a.jsonl", "the movie was good"),
             _identical_task(root / "same_b.jsonl", "a red house near the river")]
    out = root / "study"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOSSA_CACHE", str(root / "cache"))
        drawn = _recording(mp)
        assert main(["run", "--model", str(tiny_model), "--preset", "quick", "--out", str(out), "--n-boot", "20",
                     "--holdout", "same_b", "--task-file", str(files[0]), "--task-file", str(files[1])]) == 0
    return out, drawn


def test_every_value_is_undefined_with_its_reason(study):
    out, _ = study
    assert json.loads((out / "study.json").read_text())["status"] == "complete"
    assert (out / "report.html").is_file()
    sim = pd.read_parquet(out / "results/similarity.parquet")
    assert set(sim["measure"]) >= {"linear_cka"} and set(sim["model"]) == {"base", "experimental", "heldout"}
    assert sim["value"].isna().all()
    assert (sim["undefined_reason"].fillna("").str.len() > 0).all()
    linear = sim[sim["measure"] == "linear_cka"]
    assert linear["undefined_reason"].str.contains("do not vary across examples").all()
    sections = json.loads((out / "results/sections.json").read_text())
    assert not sections["transition_found"] and "undefined (NaN) at every layer" in sections["reason"]


def test_report_says_every_value_is_undefined_and_why(study):
    out, _ = study
    html = (out / "report.html").read_text()
    text = _visible(html)
    assert not re.search(r"\bnan\b", text, flags=re.I), re.findall(r".{60}\bnan\b.{20}", text, flags=re.I)
    summary = _visible(re.search(r'<ul class="summary">(.*?)</ul>', html, flags=re.S).group(1))
    assert "Every debiased CKA value of this study is undefined (15 of 15)" in summary  # the summary's measure
    assert "base and control do not vary across examples (0/0)" in summary
    assert "same for every test example" in summary and "figures built on them are empty" in summary
    for computed in ("for E and", "are shared", "matches its controls", "largest gains", "E' reaches"):
        assert computed not in summary
    assert "at layer -1" not in text


def test_figures_are_drawn_empty_with_a_note(study):
    out, drawn = study
    pngs = {p.stem for p in (out / "figures").glob("*.png")}
    assert set(NOTES) | {"tsne_layers"} <= pngs
    assert (out / "report.html").read_text().count("data:image/png;base64,") == len(pngs)
    for name, note in NOTES.items():
        assert note in drawn[name]["text"], (name, drawn[name]["text"])
    assert "do not vary across examples" in drawn["cka_by_layer"]["text"]


def _sim(values: dict) -> pd.DataFrame:
    """A linear-CKA table from {(cluster, task): {model: [value per layer]}}; NaN carries a reason."""
    rows = [{"task": task, "cluster": cluster, "model": model, "layer": layer, "measure": "linear_cka",
             "value": v, "n_examples": 8, "undefined_reason": "" if np.isfinite(v) else "does not vary (0/0)"}
            for (cluster, task), by_model in values.items() for model, curve in by_model.items()
            for layer, v in enumerate(curve)]
    return pd.DataFrame(rows)


def test_a_cluster_without_any_defined_value_is_named_not_computed():
    nan = np.nan
    sim = _sim({("A", "a1"): {"base": [nan, 0.4, 0.5, 0.6], "experimental": [nan, 0.5, 0.7, 0.9]},
                ("A", "a2"): {"base": [nan, 0.3, 0.5, 0.5], "experimental": [nan, 0.4, 0.6, 0.8]},
                ("B", "b1"): {"base": [nan] * 4, "experimental": [nan] * 4}})
    study = {"model": {"name": "m", "n_layers": 3}}
    controls = pd.DataFrame({"task": ["a1", "a2", "b1"], "control_better": [True, True, False]})
    summary = summarize(study, sim, controls, {"transition_found": False, "reason": "too few layers"})
    assert not summary.all_undefined and summary.gain_by_cluster["B"][1] is None
    text = " ".join(summary_sentences(summary))
    assert "B (undefined at every layer)" in text and "A (+0.30 at layer 3)" in text
    assert not re.search(r"\bnan\b|layer -1", text, flags=re.I)


def test_layer_by_layer_keeps_an_undefined_layer_as_a_blank_row(tmp_path, monkeypatch):
    drawn = _recording(monkeypatch)
    rows = [{"task": "t", "model": model, "layer": i, "control_layer": j,
             "value": np.nan if 0 in (i, j) else 0.5} for model in ("base", "experimental")
            for i in range(3) for j in range(3)]
    plot_layer_by_layer(pd.DataFrame(rows), tmp_path / "cross.png", title="tiny")
    assert drawn["cross"]["images"][:2] == [(3, 3), (3, 3)]
    assert "no defined value" not in drawn["cross"]["text"]
