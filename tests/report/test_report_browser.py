"""The report opens in real headless Chromium: no console errors, no network request, every
image decodes, the page is not blank; and its summary numbers match results/."""

import re
import shutil
from html import unescape

import numpy as np
import pandas as pd
import pytest

from mossa.cli import main
from mossa.report._summary import upper_third

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model):
    from tests.conftest import write_tiny_tasks

    root = tmp_path_factory.mktemp("report")
    tasks = write_tiny_tasks(root / "tasks", n_train=24, n_test=16)
    out = root / "study"
    assert main(["run", "--model", str(tiny_model), "--tasks-dir", str(tasks), "--preset", "quick",
                 "--tasks", "tiny_sentiment,tiny_struct", "--holdout", "tiny_struct", "--out", str(out)]) == 0
    return out


def test_report_is_self_contained(study):
    html = (study / "report.html").read_text()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)
    assert "<link" not in html and "@import" not in html
    assert html.count("data:image/png;base64,") == len(list((study / "figures").glob("*.png")))
    for name in ("cka_by_layer", "cka_by_cluster", "heldout_cka_by_layer", "tsne_layers", "variance_dims"):
        assert (study / "figures" / f"{name}.svg").is_file()


def test_summary_numbers_match_the_tables(study):
    html = unescape(re.sub(r"<[^>]+>", "", (study / "report.html").read_text()))
    sim = pd.read_csv(study / "results/similarity.csv")
    measure = "debiased_cka" if (sim["measure"] == "debiased_cka").any() else "linear_cka"  # the summary's
    sim = sim[(sim["measure"] == measure) & (sim["reference"] == "control")]  # the rows against C_t
    upper = upper_third(2)
    per_task = sim[sim["layer"].isin(upper)].groupby(["model", "task"])["value"].mean()
    e, b = per_task["experimental"].median(), per_task["base"].median()
    assert f"is {e:.2f} for E and {b:.2f} for B" in html
    controls = pd.read_csv(study / "results/controls.csv")
    assert f"{int(controls['control_better'].sum())} of {len(controls)} control models" in html
    held = per_task["heldout"]["tiny_struct"]
    assert f"E' reaches {held:.2f}" in html
    diff = (sim[sim["model"] == "experimental"].set_index(["task", "layer"])["value"]
            - sim[sim["model"] == "base"].set_index(["task", "layer"])["value"]).groupby("layer").median()
    assert np.isfinite(diff.max())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it)")
def test_report_in_headless_chromium(study, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    errors, requests = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # a fresh temporary profile
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((study / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        decoded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        page.click("table.sortable th:nth-child(2)")  # the sorting script runs without error
        shot = tmp_path / "shot.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert decoded and all(decoded)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape[0] > 2000 and img.std() > 20


def test_compare_two_studies_of_different_depth(study, tmp_path, tiny_model):
    from tests.conftest import build_tiny_model, write_tiny_tasks

    deeper = build_tiny_model(tmp_path / "deep", n_layers=4)
    tasks = write_tiny_tasks(tmp_path / "tasks", n_train=24, n_test=16)
    other = tmp_path / "other"
    assert main(["run", "--model", str(deeper), "--tasks-dir", str(tasks), "--preset", "quick",
                 "--tasks", "tiny_sentiment,tiny_struct", "--out", str(other)]) == 0
    assert main(["compare", str(study), str(other), "--out", str(tmp_path / "cmp")]) == 0
    html = (tmp_path / "cmp/compare.html").read_text()
    assert "relative depth" in html and html.count("<h2>") >= 3
    assert (tmp_path / "cmp/compare.svg").is_file()
