"""`mossa compare`: two studies side by side (two models, or two presets), on relative depth.

Stage: report (reads both studies' study.json and results/; writes into --out).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment  # noqa: E402
from markupsafe import Markup  # noqa: E402

from mossa.report._summary import MEASURE_WORDS, summarize, summary_sentences  # noqa: E402
from mossa.report.html import load_results  # noqa: E402
from mossa.store import atomic_path  # noqa: E402

_PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:Helvetica,Arial,sans-serif;max-width:1150px;margin:0 auto;padding:1.5em 2em;color:#222}
.cols{display:flex;gap:2em}.cols>div{flex:1}img{max-width:100%;border:1px solid #eee}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}</style></head><body>
<h1>{{ title }}</h1>
<p>Layer axes are relative depth (layer / number of layers), so models of different depth line up: 0 is the
embedding output, 1 the last layer.</p>
<figure><img src="data:image/png;base64,{{ figure }}" alt="comparison"><figcaption>Median over tasks of each study's summary
measure (debiased CKA when it was measured) with the per-task controls, B (dashed) and E (solid), for each study.</figcaption></figure>
<div class="cols">{% for s in studies %}<div><h2>{{ s.name }}</h2><p><code>{{ s.root }}</code></p><ul>
{% for line in s.sentences %}<li>{{ line }}</li>{% endfor %}</ul></div>{% endfor %}</div>
<h2>Numbers</h2>{{ table }}</body></html>"""


def _curves(sim: pd.DataFrame, n_layers: int, measure: str) -> pd.DataFrame:
    lin = sim[(sim["measure"] == measure) & sim["model"].isin(["base", "experimental"])]
    med = lin.groupby(["model", "layer"])["value"].median().reset_index()
    med["depth"] = med["layer"] / n_layers
    return med


def write_compare(root_a: Path, root_b: Path, out: Path) -> Path:
    """Write `<out>/compare.html` (and `compare.png`/`.svg`) for two finished studies."""
    out = Path(out)
    studies, rows, measures = [], [], set()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for (root, colour) in ((Path(root_a), "#4c72b0"), (Path(root_b), "#c44e52")):
        study, sim, controls, sections, references = load_results(root)
        summary = summarize(study, sim, controls, sections, references)
        name = f"{summary.model} ({study['config']['preset']}, {summary.n_tasks} tasks)"
        curves = _curves(sim, summary.n_layers, summary.measure)
        measures.add(MEASURE_WORDS[summary.measure])
        for model, style in (("base", "--"), ("experimental", "-")):
            c = curves[curves["model"] == model]
            ax.plot(c["depth"], c["value"], style, marker="o", markersize=3, color=colour,
                    label=f"{name}: {'B' if model == 'base' else 'E'} vs C_t")
        studies.append({"name": name, "root": str(root), "sentences": summary_sentences(summary)})
        sec = summary.sections
        rows.append({"study": name, "layers": summary.n_layers, "tasks": summary.n_tasks,
                     "median CKA B, last third": summary.median_base_upper,
                     "median CKA E, last third": summary.median_experimental_upper,
                     "transition found": bool(sec.get("transition_found")),
                     "transition (relative depth)": (f"{sec['transition'][0] / summary.n_layers:.2f}-"
                                                     f"{sec['transition'][1] / summary.n_layers:.2f}")
                     if sec.get("transition_found") else "none",
                     "controls beating B": f"{summary.controls_better[0]}/{summary.controls_better[1]}"})
    ax.set_xlabel("relative depth (layer / number of layers)")
    ax.set_ylabel(f"median {' / '.join(sorted(measures))} with C_t")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("two studies on relative depth")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    with atomic_path(out / "compare.png") as tmp:
        tmp.write_bytes(buf.getvalue())
    with atomic_path(out / "compare.svg") as tmp:
        fig.savefig(tmp, format="svg")
    plt.close(fig)
    table = Markup(pd.DataFrame(rows).to_html(index=False, border=0, float_format=lambda x: f"{x:.3f}"))
    html = Environment(autoescape=True).from_string(_PAGE).render(
        title="mossa: two studies compared", figure=base64.b64encode(buf.getvalue()).decode("ascii"),
        studies=studies, table=table)
    with atomic_path(out / "compare.html") as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out / "compare.html"


__all__ = ["write_compare"]
