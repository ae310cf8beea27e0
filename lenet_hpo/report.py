"""The best-vs-baseline report: one self-contained HTML page and a Markdown summary.

The HTML embeds plotly.js and every image, so it opens with no network.  It
states the settings that make the comparison fair next to the verdict.
"""

from __future__ import annotations

import base64
import html
import io
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch
from optuna.trial import TrialState
from PIL import Image
from plotly.subplots import make_subplots

from lenet_hpo import confidence
from lenet_hpo.checkpoint import load_checkpoint
from lenet_hpo.confidence import Confidence, assess
from lenet_hpo.data import Dataset, scale_input
from lenet_hpo.files import REPORTS_DIR, atomic_write_text
from lenet_hpo.retrain import RetrainResult, load_result
from lenet_hpo.search.space import check_name
from lenet_hpo.search.studies import open_study
from lenet_hpo.train import EpochStats, predict_logits

COLORS = {"best": "#1f77b4", "baseline": "#d62728", "classic": "#2ca02c"}
GALLERY = 32


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    gallery_png: Path
    verdict: str
    confidence: Confidence

    def to_dict(self) -> dict[str, Any]:
        files = {k: str(getattr(self, k)) for k in ("html", "markdown", "gallery_png", "verdict")}
        return {**files, **self.confidence.to_dict()}


def latency_ms(model: torch.nn.Module, channels: int, repeats: int = 200) -> float:
    """Median wall time of one single-image forward pass on the CPU, one thread."""
    model = model.cpu().eval()
    x = torch.zeros(1, channels, 32, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(20):
                model(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return 1000 * statistics.median(times)


def _png_b64(img: np.ndarray, scale: int = 3) -> str:
    im = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _as_image(x: torch.Tensor) -> np.ndarray:
    """uint8 (C, 32, 32) -> HxW or HxWx3 array."""
    a = x.numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _mistakes(
    model: torch.nn.Module, data: Dataset, input_norm: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = scale_input(data.test.x, input_norm, data.mean, data.std)
    probs = torch.softmax(predict_logits(model.cpu(), x).float(), dim=1)
    return probs.argmax(1), probs.max(1).values, data.test.y


def _confusion(pred: torch.Tensor, true: torch.Tensor, k: int) -> np.ndarray:
    return torch.bincount(true * k + pred, minlength=k * k).reshape(k, k).numpy()


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def comparison_table(result: RetrainResult, latency: dict[str, float]) -> pd.DataFrame:
    rows = []
    for role, m in result.models.items():
        rows.append(
            {
                "model": role,
                "test accuracy (mean ± 95% CI)": f"{_pct(m.mean)} [{_pct(m.ci95[0])}, {_pct(m.ci95[1])}]",
                "std": f"{100 * m.std:.2f} pts",
                "per seed": ", ".join(f"{100 * a:.2f}" for a in m.test_accuracy),
                "parameters": f"{m.params:,}",
                "MACs": f"{m.macs:,}",
                "train s/epoch": f"{m.seconds_per_epoch:.1f}",
                "precision": m.precision,
                "latency ms/image": f"{latency[role]:.3f}",
            }
        )
    return pd.DataFrame(rows)


Figure = confidence.Figure


def accuracy_figure(result: RetrainResult) -> Figure:
    fig = go.Figure()
    for role, m in result.models.items():
        color = COLORS.get(role)
        fig.add_trace(
            go.Scatter(
                x=[role] * len(m.test_accuracy),
                y=[100 * a for a in m.test_accuracy],
                mode="markers",
                name=f"{role} (seeds)",
                marker={"color": color, "size": 9, "opacity": 0.6},
            )
        )
        error = {
            "type": "data",
            "symmetric": False,
            "array": [100 * (m.ci95[1] - m.mean)],
            "arrayminus": [100 * (m.mean - m.ci95[0])],
        }
        fig.add_trace(
            go.Scatter(
                x=[role],
                y=[100 * m.mean],
                mode="markers",
                name=f"{role} mean ± 95% CI",
                marker={"color": color, "size": 16, "symbol": "diamond"},
                error_y=error,
            )
        )
    fig.update_layout(title="Test accuracy per seed, mean and 95% CI", yaxis_title="test accuracy (%)", height=420)
    return "Test accuracy", fig, "Each dot is one seed; diamonds are means with 95% t-intervals."


def _eval_acc(epoch: dict[str, Any]) -> float:
    """An epoch's test accuracy, from a checkpoint's history."""
    return EpochStats.from_dict(epoch).eval_acc


def learning_curves_figure(histories: dict[str, list[list[dict[str, float]]]]) -> Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("test accuracy per epoch", "training loss per epoch"))
    for role, runs in histories.items():
        epochs = list(range(1, min(len(h) for h in runs) + 1))
        color = COLORS.get(role, "#555")
        for col, value in ((1, lambda e: 100 * _eval_acc(e)), (2, lambda e: e["train_loss"])):
            vals = np.array([[value(h[e - 1]) for e in epochs] for h in runs])
            mean, lo, hi = vals.mean(0), vals.min(0), vals.max(0)
            fig.add_trace(
                go.Scatter(
                    x=epochs + epochs[::-1],
                    y=list(hi) + list(lo[::-1]),
                    fill="toself",
                    line={"width": 0},
                    fillcolor=color,
                    opacity=0.15,
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(x=epochs, y=mean, name=role, line={"color": color}, showlegend=col == 1), row=1, col=col
            )
    fig.update_yaxes(title_text="%", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=420, title="Learning curves (mean over seeds, band = min to max)")
    note = "Measured on the test split after each epoch, for the plot only: nothing was selected on it."
    return "Learning curves", fig, note


def confusion_figure(confusions: dict[str, np.ndarray], classes: list[str]) -> Figure:
    roles = list(confusions)
    fig = make_subplots(rows=1, cols=len(roles), subplot_titles=[f"{r} (seed 0)" for r in roles])
    for i, role in enumerate(roles, start=1):
        cm = confusions[role]
        z = np.where(np.eye(len(classes), dtype=bool), np.nan, cm)  # errors only: the diagonal would drown them
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=classes,
                y=classes,
                coloraxis="coloraxis",
                text=cm,
                texttemplate="%{text}",
                hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="predicted", row=1, col=i)
        fig.update_yaxes(title_text="true", autorange="reversed", row=1, col=i)
    title = "Confusion matrices (counts; off-diagonal coloured)"
    fig.update_layout(height=480, coloraxis={"colorscale": "Reds"}, title=title)
    return "Confusion matrices", fig, "Test split, the seed-0 model of each; the diagonal holds the correct counts."


def search_figures(study: optuna.Study) -> list[Figure]:
    target = {"target": (lambda t: t.values[0]), "target_name": "validation accuracy"}
    history = optuna.visualization.plot_optimization_history(study, **target)
    figs: list[Figure] = [
        ("Optimization history", history, "Validation accuracy of each completed trial and the best so far.")
    ]
    try:
        # Optuna's default evaluator (PED-ANOVA) explains *low* targets: negate accuracy (and
        # silence its warning that says just that).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes", UserWarning)
            imp = optuna.visualization.plot_param_importances(
                study, target=lambda t: -t.values[0], target_name="validation accuracy"
            )
        note = (
            "PED-ANOVA importances: how much each parameter decides whether a trial reaches the top"
            " validation accuracies."
        )
    except (ValueError, RuntimeError) as exc:
        imp, note = None, f"Parameter importances need more completed trials ({exc})."
    figs.append(("Parameter importances", imp, note))
    parallel = optuna.visualization.plot_parallel_coordinate(study, **target)
    figs.append(("Parallel coordinates", parallel, "Each line is a completed trial; colour is validation accuracy."))
    counts = pd.Series([t.state.name for t in study.get_trials(deepcopy=False)]).value_counts()
    fig = go.Figure(
        go.Bar(x=counts.index.tolist(), y=counts.values.tolist(), text=counts.values.tolist(), textposition="auto")
    )
    fig.update_layout(title="Trial states", height=320)
    note = "COMPLETE and PRUNED trials count toward the study's budget; FAIL trials were retried or reported."
    figs.append(("Trial states", fig, note))
    return figs


def pareto_figure(study: optuna.Study) -> Figure:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    pts = sorted(
        ((t.user_attrs.get("params", 0), t.values[0], t.number) for t in complete), key=lambda p: (p[0], -p[1])
    )
    front, best_acc = [], -1.0
    for p in pts:
        if p[1] > best_acc:
            front.append(p)
            best_acc = p[1]
    fig = go.Figure()
    for points, style in ((pts, {"mode": "markers", "name": "trials", "marker": {"color": "#999"}}),
                          (front, {"mode": "lines+markers", "name": "Pareto front",
                                   "line": {"shape": "hv", "color": COLORS["best"]}})):
        x, y, text = [p[0] for p in points], [100 * p[1] for p in points], [f"trial {p[2]}" for p in points]
        fig.add_trace(go.Scatter(x=x, y=y, text=text, **style))
    fig.update_layout(
        title="Validation accuracy against parameter count",
        xaxis_title="parameters",
        xaxis_type="log",
        yaxis_title="validation accuracy (%)",
        height=420,
    )
    return (
        "Accuracy vs parameters (Pareto front)",
        fig,
        "No trial to the upper left of the front is both smaller and more accurate.",
    )


# Settings that only mean something for some configs: (field, the field and values it needs).
APPLIES_WHEN = {
    "momentum": ("optimizer", ("sgd",)),
    "nesterov": ("optimizer", ("sgd",)),
    "sdlm_mu": ("optimizer", ("sdlm",)),
    "sdlm_samples": ("optimizer", ("sdlm",)),
    "sdlm_curvature": ("optimizer", ("sdlm",)),
    "map_j": ("loss", ("map",)),
}


def config_table(configs: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(rows where the configs differ, {setting: value} shared by all).  A setting that
    does not apply to a config (momentum without SGD, ...) reads "n/a" there, and is
    left out when it applies to none."""

    def applies(field: str, cfg: dict[str, Any]) -> bool:
        return field not in APPLIES_WHEN or cfg[APPLIES_WHEN[field][0]] in APPLIES_WHEN[field][1]

    frame = pd.DataFrame(
        {role: {k: v if applies(k, cfg) else "n/a" for k, v in cfg.items()} for role, cfg in configs.items()}
    )
    frame = frame[~(frame == "n/a").all(axis=1)]
    same = frame.apply(lambda row: row.map(repr).nunique() == 1, axis=1)
    return frame[~same], {field: frame.loc[field].iloc[0] for field in frame.index[same]}


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


@dataclass(frozen=True)
class _Evidence:
    """What the report reads from the retrained runs' checkpoints."""

    histories: dict[str, list[list[dict[str, float]]]]
    confusions: dict[str, np.ndarray]
    latency: dict[str, float]
    gallery: list[tuple[np.ndarray, str]]  # misclassified test images of the tuned model, captioned


def _evidence(result: RetrainResult, data: Dataset) -> _Evidence:
    histories, confusions, latency = {}, {}, {}
    gallery: list[tuple[np.ndarray, str]] = []
    for role, m in result.models.items():
        checkpoints = [load_checkpoint(p) for p in m.checkpoints]
        histories[role] = [ck.extra["history"] for ck in checkpoints]
        first = checkpoints[0]
        pred, conf, true = _mistakes(first.model, data, first.config.input_norm)
        confusions[role] = _confusion(pred, true, data.num_classes)
        latency[role] = latency_ms(first.model, data.channels)
        if role == "best":
            wrong = torch.nonzero(pred != true).flatten()[:GALLERY]
            gallery = [
                (
                    _as_image(data.test.x[i]),
                    f"true {data.classes[true[i]]} → {data.classes[pred[i]]} ({100 * conf[i]:.0f}%)",
                )
                for i in wrong.tolist()
            ]
    return _Evidence(histories, confusions, latency, gallery)


def build_report(
    study_name: str,
    url: str,
    *,
    out_dir: Path | None = None,
    data_dir: Path | None = None,
    studies_dir: Path | None = None,
) -> ReportFiles:
    check_name(study_name, "report")
    stored = open_study(study_name, url)
    study = stored.study
    result = load_result(study_name, studies_dir)
    data = stored.spec().load_data(data_dir)
    ev = _evidence(result, data)
    conf = assess(result, stored)
    table = comparison_table(result, ev.latency)
    figs = [
        accuracy_figure(result), learning_curves_figure(ev.histories),
        confusion_figure(ev.confusions, list(data.classes)), *search_figures(study), pareto_figure(study),
    ]
    out = (out_dir or REPORTS_DIR) / study_name
    out.mkdir(parents=True, exist_ok=True)
    verdict = conf.comparison.verdict
    differ, shared = config_table({role: m.config for role, m in result.models.items()})
    configs = (differ, "The same for all: " + ", ".join(f"{k} {v}" for k, v in shared.items()) + ".")
    html_path, md_path, gallery_png = out / "report.html", out / "report.md", out / "misclassified.png"
    atomic_write_text(html_path, _html(study_name, result, table, configs, figs, ev.gallery, conf))
    _gallery_png(ev.gallery, gallery_png)
    atomic_write_text(md_path, _markdown(study_name, result, table, configs, conf, study))
    return ReportFiles(html=html_path, markdown=md_path, gallery_png=gallery_png, verdict=verdict, confidence=conf)


def _gallery_png(gallery: list[tuple[np.ndarray, str]], path: Path) -> None:
    cols = 8
    rows = max(1, -(-len(gallery) // cols))
    sheet = Image.new("L", (cols * 36, rows * 36), 255)
    for i, (img, _) in enumerate(gallery):
        tile = Image.fromarray(img).convert("L")
        sheet.paste(tile, ((i % cols) * 36 + 2, (i // cols) * 36 + 2))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(path)


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


def _html(
    name: str, result: RetrainResult, table: pd.DataFrame, configs: tuple[pd.DataFrame, str], figs: list[Figure],
    gallery: list[tuple[np.ndarray, str]], conf: Confidence,
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
        f"<div class='sub'>best trial {result.trial} (validation accuracy {_pct(result.search_value)} in the search)"
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


def _markdown(
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
        f"Best trial {result.trial} (validation accuracy {_pct(result.search_value)} in the search),"
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
