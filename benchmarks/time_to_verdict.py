"""What a user waits for: search, retrain-best and report, end to end, from an empty run cache.

    python benchmarks/time_to_verdict.py [--a ROOT] [--a-study mnist] [--a-retrain "FLAGS"]
                                         [--b ROOT --b-study ... --b-retrain ...] [--order a,b,a]
                                         [--trials 50] [--precision fp32] [--seeds 0,1] [--keep DIR]

A configuration is a checkout of lenet-hpo (ROOT, default: this one; e.g. a `git worktree`
of an older commit), a study of its `studies/` and extra retrain-best flags.  Each run gets
a fresh working folder (the study files copied from ROOT, with `precision` set in the
[study] table when --precision is given), a fresh run cache (`LENET_HPO_CACHE_DIR`: no
baseline runs, no measured worker layout) and the shared data folder, and runs the
README's commands as a user would:

    python -m lenet_hpo search --study S --trials N --json
    python -m lenet_hpo retrain-best --study S --json [FLAGS]
    python -m lenet_hpo report --study S --json

Runs go in the order --order gives (default: a, or a,b,a,b with --b), so drifts in machine
speed hit both configurations alike.  Per run it prints each phase's wall time, epochs
trained, the best trial and its validation accuracy (and the best of the sampler's random
start-up trials against the best of those it chose), the tuned and baseline test means, the
verdict (p, test-set interval, probability of improvement) and how many seed pairs it
needed; then medians per configuration and b / a ratios.  On an AVX-512 machine, set
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 to time the AVX2 code paths (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch

HERE = Path(__file__).resolve().parents[1]


def study_copy(root: Path, study: str, work: Path, precision: str | None) -> None:
    """ROOT's study files in `work/studies`, the study's precision set where asked."""
    (work / "studies").mkdir(parents=True)
    for path in (root / "studies").glob("*.toml"):  # the files only: no databases, no earlier runs
        shutil.copy(path, work / "studies")
    if precision is None:
        return
    path = work / "studies" / f"{study}.toml"
    text = re.sub(r"^precision\s*=.*\n", "", path.read_text(), flags=re.MULTILINE)
    path.write_text(text.replace("[study]\n", f'[study]\nprecision = "{precision}"\n', 1))


def phase(cmd: list[str], root: Path, work: Path, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Run one CLI command; (wall seconds, its --json output)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lenet_hpo", *cmd], cwd=work, env={**env, "PYTHONPATH": str(root)},
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}) in {work}:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout)


def search_figures(work: Path, study: str) -> dict[str, float]:
    """Epochs trained, and whether the sampler beat its start-up trials: the best completed value
    among the first n_startup_trials (the baseline and [[start]] trials aside: random draws)
    against the best of the trials the model chose."""
    stored = optuna.load_study(study_name=study, storage=f"sqlite:///{work / 'studies' / f'{study}.db'}")
    trials = stored.trials
    startup = int(tomllib.loads((work / "studies" / f"{study}.toml").read_text()).get("sampler", {})
                  .get("n_startup_trials", 10))
    drawn = [t for t in trials if t.user_attrs.get("role") is None and "start" not in t.user_attrs]

    def best(ts: list[optuna.trial.FrozenTrial]) -> float:
        return max((t.value for t in ts if t.state.name == "COMPLETE"), default=float("nan"))

    return {
        "search_epochs": sum(float(t.user_attrs.get("epochs_trained", len(t.user_attrs.get("history", []))))
                             for t in trials),
        "best_random_startup": best([t for t in drawn if t.number < startup]),
        "best_model_based": best([t for t in drawn if t.number >= startup]),
        "start_trial": best([t for t in trials if "start" in t.user_attrs]),
    }


def one_run(label: str, cfg: dict[str, Any], args: argparse.Namespace, k: int) -> dict[str, Any]:
    root, study = Path(cfg["root"]).resolve(), cfg["study"]
    work = Path(tempfile.mkdtemp(prefix=f"verdict-{label}{k}-", dir=args.keep))
    study_copy(root, study, work, args.precision)
    env = {**os.environ, "LENET_HPO_CACHE_DIR": str(work / "cache"), "LENET_HPO_DATA_DIR": str(args.data_dir)}
    sampler_seed = args.seeds[k % len(args.seeds)] if args.seeds else None
    seed = ["--seed", str(sampler_seed)] if sampler_seed is not None else []
    precision = ["--precision", args.precision] if args.precision else []
    s_time, s = phase(["search", "--study", study, "--trials", str(args.trials), *seed, "--json"], root, work, env)
    r_time, r = phase(["retrain-best", "--study", study, *precision, *shlex.split(cfg["retrain"]), "--json"],
                      root, work, env)
    p_time, _ = phase(["report", "--study", study, "--json"], root, work, env)
    runs = pd.read_csv(work / r["results_csv"])  # relative to the working folder
    trained = runs[runs.source == "trained"] if "source" in runs else runs
    d = r["difference"]
    stopping = r.get("stopping") or {"pairs": r["n_seeds"], "max_pairs": r["n_seeds"], "reason": "fixed design"}
    row = {
        "config": label, "run": k + 1, "sampler_seed": sampler_seed, "search_s": s_time, "retrain_s": r_time,
        "report_s": p_time,
        "total_s": s_time + r_time + p_time, **search_figures(work, study),
        "retrain_epochs": int(trained.epochs.sum()), "best_trial": s.get("best_number", s.get("best_trial")),
        "best_val": s.get("best_value"), "retrained_trial": r["trial"], "tuned_test": r["best"]["mean"],
        "baseline_test": r[next(iter(r["comparisons"]))]["mean"], "p": d["p_value"],
        "test_set_lo": (d.get("test_set_ci95") or [float("nan")] * 2)[0],
        "test_set_hi": (d.get("test_set_ci95") or [float("nan")] * 2)[1],
        "prob_improvement": d.get("prob_improvement"), "pairs": stopping["pairs"], "max_pairs": stopping["max_pairs"],
        "why": stopping["reason"], "work": str(work),
    }
    seed_said = sampler_seed if seed else "as in the file"
    print(f"{label} run {k + 1} (sampler seed {seed_said}): search {s_time:.0f} s ({row['search_epochs']:.1f} epochs,"
          f" best {row['best_val']:.4f}"
          f" trial {row['best_trial']}; best random start-up {row['best_random_startup']:.4f}, best model-based"
          f" {row['best_model_based']:.4f}), retrain-best {r_time:.0f} s ({row['retrain_epochs']} epochs, trial"
          f" {r['trial']}: {row['tuned_test']:.4f} vs {row['baseline_test']:.4f}, p = {d['p_value']:.2g}, test-set"
          f" [{100 * row['test_set_lo']:+.2f}, {100 * row['test_set_hi']:+.2f}] points, P(better)"
          f" {row['prob_improvement']}, {row['why']}), report {p_time:.0f} s; total {row['total_s']:.0f} s",
          flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for c in ("a", "b"):
        ap.add_argument(f"--{c}", default="." if c == "a" else None, help=f"configuration {c}: a lenet-hpo checkout")
        ap.add_argument(f"--{c}-study", default="mnist", help="its study (default: mnist)")
        ap.add_argument(f"--{c}-retrain", default="", help="extra retrain-best flags, e.g. '--seeds 5 --no-early-stop'")
    ap.add_argument("--order", default=None, help="runs in turns, e.g. a,b,a (default: a, or a,b,a,b with --b)")
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="sampler seeds, e.g. 0,1: a configuration's runs take them in turn (default: the files')")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                    help="precision of every phase (default: the study files')")
    ap.add_argument("--data-dir", type=Path, default=HERE / "data", help="the data folder every run shares")
    ap.add_argument("--keep", type=Path, default=None, help="keep each run's working folder under this folder")
    args = ap.parse_args()
    args.data_dir = args.data_dir.resolve()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    configs = {c: {"root": getattr(args, c), "study": getattr(args, f"{c}_study"),
                   "retrain": getattr(args, f"{c}_retrain")} for c in ("a", "b") if getattr(args, c)}
    order = (args.order or ("a,b,a,b" if "b" in configs else "a")).split(",")
    if set(order) - set(configs):
        sys.exit(f"--order names a configuration not given: {args.order}")
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, ONEDNN_MAX_CPU_ISA"
          f" {os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}, precision {args.precision or 'as the files say'},"
          f" {os.cpu_count()} cores; order {','.join(order)}", flush=True)
    for c, cfg in configs.items():
        git = ["git", "-C", cfg["root"], "rev-parse", "--short", "HEAD"]
        head = subprocess.run(git, capture_output=True, text=True)
        print(f"  {c}: {cfg['root']} ({head.stdout.strip()}), study {cfg['study']},"
              f" retrain flags '{cfg['retrain']}'", flush=True)
    rows, seen = [], dict.fromkeys(configs, 0)
    for c in order:
        rows.append(one_run(c, configs[c], args, seen[c]))
        seen[c] += 1
    table = pd.DataFrame(rows)
    keys = ["search_s", "retrain_s", "report_s", "total_s", "search_epochs", "retrain_epochs", "best_val",
            "best_random_startup", "best_model_based", "tuned_test", "baseline_test", "p", "pairs"]
    med = table.groupby("config")[keys].median()
    print("\nmedians per configuration")
    print(med.round(4).to_string())
    if "b" in med.index:
        print("\nratios a / b (medians)")
        for key in ("search_s", "retrain_s", "total_s", "search_epochs", "retrain_epochs"):
            print(f"  {key}: {med.loc['a', key] / med.loc['b', key]:.2f}x")
    print(f"\nall runs\n{table.drop(columns=['work']).round(4).to_string(index=False)}")
    print(f"\n{statistics.median(table.total_s):.0f} s median total over all {len(table)} runs")


if __name__ == "__main__":
    main()
