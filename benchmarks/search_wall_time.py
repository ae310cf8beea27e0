"""Wall time and result of whole searches from an empty study, several study files side by side.

    python benchmarks/search_wall_time.py [STUDY ...] [--trials 50] [--repeats 2] [--precision fp32]
                                          [--workers W] [--threads T] [--sampler-seed S[,S...]] [--keep DIR]

Runs each study file (default: the default study `studies/mnist.toml` and the epoch-rung
study it replaced, `benchmarks/studies/mnist-epoch-rungs.toml`) --repeats times, in turns
(A B A B ...) so drifts in machine speed hit all alike, each time on a fresh SQLite file
in a temp dir (or in --keep DIR; the real studies/ is not touched).  Prints per run and
as medians: wall time, epochs trained (a sum of fractions: a trial stopped after 6,250
of 50,000 images counts 0.125), complete / pruned / failed trials and the best
validation accuracy; then each study's median wall time and epochs against the first's.
--precision runs the studies in another precision than their files' (auto, fp32, bf16).
--sampler-seed draws other trials from the same study files (the files' seed otherwise);
with several (0,1), repeat k takes the k-th in turn, so each seed runs every study.
The worker layout `search` measures on a machine's first search is measured before the
first run, so that no run's wall time includes it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

import optuna
import torch

from lenet_hpo.config import PRECISIONS
from lenet_hpo.search import run_search
from lenet_hpo.search.layout import cpu_model, default_layout
from lenet_hpo.search.space import StudySpec
from lenet_hpo.search.studyfile import load_spec
from lenet_hpo.training import native_bf16, resolve_device

DEFAULT_STUDIES = ["studies/mnist.toml", "benchmarks/studies/mnist-epoch-rungs.toml"]


def with_precision(spec: StudySpec, precision: str, folder: Path) -> StudySpec:
    """A copy of the study file with [study] precision set (workers read the file)."""
    if "[study]\n" not in spec.text:
        raise SystemExit(f"--precision: {spec.path} has no [study] table to set precision in")
    text = re.sub(r"^precision\s*=.*\n", "", spec.text, flags=re.MULTILINE)
    copy = folder / f"{spec.name}.toml"
    copy.write_text(text.replace("[study]\n", f'[study]\nprecision = "{precision}"\n', 1))
    return load_spec(str(copy))


def one_run(spec: StudySpec, folder: Path, args: argparse.Namespace, k: int) -> dict[str, float]:
    url = f"sqlite:///{folder / f'{spec.name}-{k}.db'}"
    seed = args.sampler_seed[k % len(args.sampler_seed)] if args.sampler_seed else None
    s = run_search(spec, url, args.trials, workers=args.workers, threads=args.threads, device=args.device,
                   sampler_seed=seed)
    trials = optuna.load_study(study_name=spec.name, storage=url).get_trials(deepcopy=False)
    epochs = sum(float(t.user_attrs.get("epochs_trained", len(t.user_attrs.get("history", [])))) for t in trials)
    row = {"wall_s": s.seconds, "epochs": epochs, "complete": s.n_complete, "pruned": s.n_pruned,
           "failed": s.n_failed, "best": s.best_value or float("nan"), "best_trial": s.best_number}
    said = "as in the file" if seed is None else seed
    print(f"{spec.name} run {k + 1} (sampler seed {said}): {s.seconds:.0f} s, {epochs:.2f} epochs,"
          f" {s.n_complete}/{s.n_pruned}/{s.n_failed}"
          f" complete/pruned/failed, best {row['best']:.4f} (trial {s.best_number}),"
          f" {s.workers} worker(s) x {s.threads_per_worker} thread(s)", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("studies", nargs="*", default=DEFAULT_STUDIES, help="study files or names (first: the reference)")
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=PRECISIONS, default=None, help="override the studies' precision")
    ap.add_argument("--sampler-seed", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="seed the studies' samplers with this instead of their files' seed (the search's luck);"
                         " several, e.g. 0,1: repeat k takes the k-th")
    ap.add_argument("--keep", type=Path, default=None, help="write the studies' databases to this folder and keep them")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        specs = [load_spec(s) for s in args.studies]
        if args.precision is not None:
            specs = [with_precision(spec, args.precision, Path(tmp)) for spec in specs]
        # On a machine that has not searched before, `search` first measures its worker layout
        # (about 12 s on 2 cores, then cached): do it here, so no run pays for it.
        workers, threads = default_layout(resolve_device(args.device), args.workers, args.threads)
        print(f"layout: {workers} worker(s) x {threads} thread(s), settled before the timed runs", flush=True)
        rows: dict[str, list[dict[str, float]]] = {spec.name: [] for spec in specs}
        for k in range(args.repeats):
            for spec in specs:
                rows[spec.name].append(one_run(spec, folder, args, k))
    native = "native bfloat16" if native_bf16(torch.device("cpu")) else "no native bfloat16"
    print(f"\n{cpu_model()} ({native}); precision {args.precision or 'as the files say'};"
          f" {args.trials} trials; medians of {args.repeats} runs")
    print("| study | wall time | epochs trained | complete / pruned / failed | best val acc |")
    print("|---|---|---|---|---|")
    med = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "best_trial"}
           for name, runs in rows.items()}
    for name, m in med.items():
        print(f"| {name} | {m['wall_s']:.0f} s | {m['epochs']:.1f} | {m['complete']:.0f} / {m['pruned']:.0f} /"
              f" {m['failed']:.0f} | {m['best']:.4f} |")
    first = specs[0].name
    for name in list(med)[1:]:
        print(f"{first} / {name}: wall time {med[first]['wall_s'] / med[name]['wall_s']:.2f}x,"
              f" epochs {med[first]['epochs'] / med[name]['epochs']:.2f}x")


if __name__ == "__main__":
    main()
