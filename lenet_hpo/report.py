"""The best-vs-baseline report: one self-contained HTML page and a Markdown summary.

The HTML embeds plotly.js and every image, so it opens with no network.  It
states the settings that make the comparison fair next to the verdict.
"""

from __future__ import annotations

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
import torch
from optuna.trial import TrialState
from PIL import Image
from plotly.subplots import make_subplots

from lenet_hpo import confidence
from lenet_hpo.checkpoint import load_checkpoint
from lenet_hpo.confidence import Confidence, how_sure
from lenet_hpo.data import Dataset, scale_input
from lenet_hpo.files import atomic_write_text, check_output_dir, reports_dir
from lenet_hpo.page import html_page, markdown_page, pct
from lenet_hpo.retrain import RetrainResult, load_result
from lenet_hpo.search.space import check_name
from lenet_hpo.search.studies import open_study
from lenet_hpo.training import EpochStats, predict_logits

COLORS = {"best": "#1f77b4", "baseline": "#d62728", "classic": "#2ca02c"}
GALLERY = 32


@dataclass(frozen=True)
class ReportFiles:
    """What `build_report` wrote, with the verdict and its statistics."""

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


def comparison_table(result: RetrainResult, latency: dict[str, float]) -> pd.DataFrame:
    rows = []
    for role, m in result.models.items():
        rows.append(
            {
                "model": role,
                "test accuracy (mean ± 95% CI)": f"{pct(m.mean)} [{pct(m.ci95[0])}, {pct(m.ci95[1])}]",
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


def _figures(study: optuna.Study, result: RetrainResult, data: Dataset, ev: _Evidence) -> list[Figure]:
    """The report's figures after its verdict, in its order: (title, figure or None, note)."""
    return [
        accuracy_figure(result), learning_curves_figure(ev.histories),
        confusion_figure(ev.confusions, list(data.classes)), *search_figures(study), pareto_figure(study),
    ]


def figures(
    study_name: str, url: str, *, data_dir: Path | None = None, studies_dir: Path | None = None
) -> dict[str, go.Figure]:
    """The report's figures as plotly figures, by title (`fig.show()` draws one inline in a
    notebook): the verdict's, the accuracies, learning curves, confusion matrices, the search's
    (history, importances, parallel coordinates, the budget curve; the Pareto front of a
    two-objective study).  The same functions draw `report.html`."""
    stored = open_study(study_name, url)
    result = load_result(stored, studies_dir)
    data = stored.spec().load_data(data_dir)
    conf = how_sure(result, stored)
    made = [confidence.bootstrap_figure(conf), confidence.budget_figure(conf),
            *_figures(stored.study, result, data, _evidence(result, data))]
    return {title: fig for title, fig, _ in made if fig is not None}


def build_report(
    study_name: str,
    url: str,
    *,
    out_dir: Path | None = None,
    data_dir: Path | None = None,
    studies_dir: Path | None = None,
) -> ReportFiles:
    """Write the best-vs-baseline report of a retrained study: reports/<name>/<key>/report.html
    (self-contained, opens offline), report.md and misclassified.png; returns their paths,
    the verdict and "How sure are we?" (`Confidence`)."""
    check_name(study_name, "report")
    stored = open_study(study_name, url)
    study = stored.study
    result = load_result(stored, studies_dir)
    out = check_output_dir((out_dir or reports_dir()) / study_name / stored.key)  # never another study's report
    data = stored.spec().load_data(data_dir)
    ev = _evidence(result, data)
    conf = how_sure(result, stored)
    table = comparison_table(result, ev.latency)
    figs = _figures(study, result, data, ev)
    out.mkdir(parents=True, exist_ok=True)
    verdict = conf.comparison.verdict
    differ, shared = config_table({role: m.config for role, m in result.models.items()})
    configs = (differ, "The same for all: " + ", ".join(f"{k} {v}" for k, v in shared.items()) + ".")
    html_path, md_path, gallery_png = out / "report.html", out / "report.md", out / "misclassified.png"
    atomic_write_text(html_path, html_page(study_name, result, table, configs, figs, ev.gallery, conf))
    _gallery_png(ev.gallery, gallery_png)
    atomic_write_text(md_path, markdown_page(study_name, result, table, configs, conf, study))
    return ReportFiles(html=html_path, markdown=md_path, gallery_png=gallery_png, verdict=verdict, confidence=conf)


def _gallery_png(gallery: list[tuple[np.ndarray, str]], path: Path) -> None:
    cols = 8
    rows = max(1, -(-len(gallery) // cols))
    sheet = Image.new("L", (cols * 36, rows * 36), 255)
    for i, (img, _) in enumerate(gallery):
        tile = Image.fromarray(img).convert("L")
        sheet.paste(tile, ((i % cols) * 36 + 2, (i // cols) * 36 + 2))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(path)
