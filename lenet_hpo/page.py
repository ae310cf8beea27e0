"""The report's page: HTML (self-contained, opens offline) and Markdown, from the parts
`report.py` computed (tables, figures, the gallery, the confidence account)."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image

from lenet_hpo import confidence
from lenet_hpo.confidence import Confidence
from lenet_hpo.retrain import RetrainResult

FAIRNESS = [
    "Same data: both models are fitted on the full official training set (train + validation) and evaluated on"
    " the official test split.",
    "Same budget: the same number of epochs for both; each keeps its own batch size, learning rate and schedule"
    " as configured.",
    "Same seeds: run k of each model uses seed k (weight init, batch order, dropout), so results pair up by"
    " seed; the test is a paired t-test over seeds.",
    "No selection on test: trials were chosen on the validation split only; the test split is first touched by"
    " retrain-best.",
    "Same code: search, retrain and baseline all go through one training function, in the same precision (the"
    " precision column; only the paper's SDLM recipe is always fp32).",
]


def _png_b64(img: np.ndarray, scale: int = 3) -> str:
    im = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px} .sub{color:#5b6475;margin-bottom:18px}
.verdict{font-size:1.35em;padding:16px 20px;border-radius:10px;background:#fff;border-left:6px solid #1f77b4;
  margin:12px 0 20px}
.verdict.neutral{border-left-color:#999} .verdict.worse{border-left-color:#d62728}
section{background:#fff;border-radius:10px;padding:16px 20px;margin:16px 0;box-shadow:0 1px 2px rgba(0,0,0,.06)}
table{border-collapse:collapse;width:100%;font-size:.95em}
th,td{padding:6px 8px;border-bottom:1px solid #e5e7eb;text-align:left}
th{background:#f0f2f5} .note{color:#5b6475;font-size:.9em}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(110px,1fr));gap:10px}
.gallery figure{margin:0;text-align:center;font-size:.8em} .gallery img{image-rendering:pixelated;border:1px solid #ddd}
code{background:#f0f2f5;padding:1px 4px;border-radius:4px}
"""

# Any script error marks the page, so a headless browser (and the tests) can see it.
_ERROR_HOOK = """<script>
window.addEventListener('error', function (e) {
  var n = document.documentElement;
  n.setAttribute('data-js-errors', (n.getAttribute('data-js-errors') || '') + e.message + ';');
});
</script>"""


def _figure_html(fig: go.Figure, first: bool) -> str:
    """A figure's HTML; the first one carries plotly.js, inline, so the page opens offline."""
    plotly_js = "inline" if first else False
    return pio.to_html(fig, full_html=False, include_plotlyjs=plotly_js, config={"displaylogo": False})


def _confidence_html(conf: Confidence, first: bool) -> tuple[list[str], bool]:
    """The "How sure are we?" section: sentences, then numbers, then its two figures."""
    parts = ["<section id='how-sure'><h2>How sure are we?</h2>"]
    parts += [f"<p>{html.escape(text)}</p>" for text in confidence.sentences(conf)]
    parts.append(confidence.numbers_table(conf).to_html(index=False, border=0, classes="numbers"))
    mcnemar = confidence.mcnemar_table(conf)
    if mcnemar is not None:
        parts.append(mcnemar.to_html(index=False, border=0, classes="mcnemar"))
    for i, (title, fig, note) in enumerate((confidence.bootstrap_figure(conf), confidence.budget_figure(conf))):
        parts.append(f"<h3>{html.escape(title)}</h3>")
        if i == 1:
            parts += [f"<p>{html.escape(text)}</p>" for text in confidence.budget_sentences(conf)]
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
        if fig is not None:
            parts.append(_figure_html(fig, first))
            first = False
    return [*parts, "</section>"], first


def html_page(
    name: str, result: RetrainResult, table: pd.DataFrame, configs: tuple[pd.DataFrame, str],
    figs: list[confidence.Figure], gallery: list[tuple[np.ndarray, str]], conf: Confidence,
) -> str:
    diff, verdict = conf.comparison, conf.comparison.verdict
    holds = diff.test_set_ci95 is None or diff.test_set_ci95[0] > 0
    worse = diff.significant and diff.difference < 0
    tone = "" if diff.significant and diff.difference > 0 and holds else ("worse" if worse else "neutral")
    against = ", ".join(html.escape(r) for r in result.baselines)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>lenet-hpo report: {html.escape(name)}</title><style>{_STYLE}</style>{_ERROR_HOOK}</head><body><main>",
        f"<h1>Is the tuned LeNet-5 better? Study <code>{html.escape(name)}</code></h1>",
        f"<div class='sub'>best trial {result.trial} (validation accuracy {pct(result.search_value)} in the search)"
        f" against {against}; {result.n_seeds} seeds × {result.epochs} epochs each;"
        f" dataset {html.escape(result.dataset['dataset'])}</div>",
        f"<div class='verdict {tone}' id='verdict'>{html.escape(verdict[0].upper() + verdict[1:])}.<div class='note'>"
        f"{html.escape(diff.test)}, n = {diff.n} seeds, effect size ({html.escape(diff.effect_size_name)})"
        f" {diff.effect_size:.2f}</div></div>",
        "<section><h2>Comparison</h2>",
        table.to_html(index=False, classes="comparison", border=0, escape=True),
        "</section>",
    ]
    sure, first = _confidence_html(conf, first=True)
    fair = [f"<li>{html.escape(f)}</li>" for f in FAIRNESS]
    parts += [*sure, "<section><h2>What makes this comparison fair</h2><ul>", *fair, "</ul>"]
    if result.rescored:
        parts.append("<p>The best trial was chosen by re-scoring the top trials on fresh seeds (validation split):</p>")
        parts.append(pd.DataFrame(result.rescored).to_html(index=False, border=0))
    parts += ["<h3>Configurations: where they differ</h3>", configs[0].to_html(border=0),
              f"<p class='note'>{html.escape(configs[1])}</p>", "</section>"]
    for title, fig, note in figs:
        parts.append(f"<section><h2>{html.escape(title)}</h2><p class='note'>{html.escape(note)}</p>")
        if fig is not None:
            parts.append(_figure_html(fig, first))
            first = False
        parts.append("</section>")
        if title == "Confusion matrices":
            parts.append(_gallery_html(gallery))
    parts.append(f"<p class='note'>Made by lenet-hpo from {html.escape(result.results_csv)}.</p></main></body></html>")
    return "\n".join(parts)


def _gallery_html(gallery: list[tuple[np.ndarray, str]]) -> str:
    figures = [
        f"<figure><img alt='{html.escape(c)}' src='data:image/png;base64,{_png_b64(img)}'>"
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for img, c in gallery
    ]
    title = "<section><h2>Misclassified test images (tuned model, seed 0)</h2><div class='gallery'>"
    return title + "".join(figures) + "</div></section>"


def markdown_page(
    name: str, result: RetrainResult, table: pd.DataFrame, configs: tuple[pd.DataFrame, str], conf: Confidence,
    study: optuna.Study,
) -> str:
    diff, verdict = conf.comparison, conf.comparison.verdict
    states = pd.Series([t.state.name for t in study.get_trials(deepcopy=False)]).value_counts().to_dict()
    mcnemar = confidence.mcnemar_table(conf)
    lines = [
        f"# lenet-hpo report: study `{name}`",
        "",
        f"**Verdict:** {verdict[0].upper() + verdict[1:]}.",
        "",
        f"{diff.test}, n = {diff.n} seeds, effect size ({diff.effect_size_name}) {diff.effect_size:.2f}.",
        f"Best trial {result.trial} (validation accuracy {pct(result.search_value)} in the search),"
        f" {result.n_seeds} seeds × {result.epochs} epochs each.",
        "",
        _md_table(table),
        "",
        "## How sure are we?",
        "",
        *[f"{text}\n" for text in confidence.sentences(conf)],
        _md_table(confidence.numbers_table(conf)),
        "",
        *([_md_table(mcnemar), ""] if mcnemar is not None else []),
        *[f"{text}\n" for text in confidence.budget_sentences(conf)],
        "Figures (the bootstrap distribution with both intervals; the expected best against the number of trials):"
        " `report.html`.",
        "",
        "## Fairness",
        "",
        *[f"- {f}" for f in FAIRNESS],
        "",
        "## Configurations: where they differ",
        "",
        _md_table(configs[0].reset_index(names="setting")),
        "",
        configs[1],
        "",
        "## Search",
        "",
        "Trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items(), key=lambda kv: -kv[1])) + ".",
        "",
        "Plots (learning curves, confusion matrices, optimization history, parameter importances, parallel"
        " coordinates, Pareto front): `report.html`. Misclassified test images: `misclassified.png`.",
        "",
    ]
    return "\n".join(lines)
