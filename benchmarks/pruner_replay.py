"""Replay a finished search under other pruner settings: which trials each would have stopped, where.

    python benchmarks/pruner_replay.py STUDY_DB [--study NAME] [--setting PERCENTILE:Z ...]

Takes the trials of a finished study (an SQLite file kept by `time_to_verdict.py --keep` or
`search_wall_time.py --keep`) in the order they started and asks a `NoisePruner` with each
setting (default: 25:1, the default study's before a2323a9; 10:1, 0:1, 0:1.5, today's; 0:2 and
the plain percentile pruner 25:0), warm-up and start-up as in the default study, about every
report they made, against the trials that had completed, in that replay,
before the trial started.  A trial the real search pruned stays pruned where it was (what it
would have done after that is unknown); a trial the replay stops is counted up to that report.
Prints per setting the epochs trained, the trials that complete and the best of them, and
where each trial that completed in the real search (or went further in it) would have stopped.

A replay keeps the sampler's draws as they were: a stricter pruner would also have changed
what TPE drew next, which no replay can show; measure a setting chosen here end to end with
`time_to_verdict.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from lenet_hpo.search.pruning import NoisePruner

DEFAULT_SETTINGS = ["25:1", "10:1", "0:1", "0:1.5", "0:2", "25:0"]


def replay(trials: list[FrozenTrial], pruner: NoisePruner, epoch: int) -> dict[str, object]:
    """Epochs trained, the completed trials (number, value) and the stops under `pruner`."""
    done: list[FrozenTrial] = []
    epochs, stops = 0.0, []
    for t in sorted(trials, key=lambda t: t.datetime_start):
        study = optuna.create_study(direction="maximize", pruner=pruner)
        for d in done:
            if d.datetime_complete <= t.datetime_start:
                study.add_trial(d)
        probe = study.ask()
        steps = sorted(t.intermediate_values)
        stop = None
        for step in steps[:-1] if t.state == TrialState.COMPLETE else steps:  # the last report of a
            probe.report(t.intermediate_values[step], step)                   # complete trial is its value
            if probe.should_prune():
                stop = step
                break
        if stop is None and t.state == TrialState.PRUNED:
            stop = steps[-1] if steps else 0
        if stop is None:
            epochs += max(steps) / epoch if steps else 0
            done.append(t)
        else:
            epochs += stop / epoch
            if t.state == TrialState.COMPLETE or stop < steps[-1]:
                ended = t.value if t.value is not None else t.intermediate_values[steps[-1]]
                stops.append(f"trial {t.number} at {stop / epoch:.3g} epochs: {t.intermediate_values[stop]:.4f}"
                             f" (it ended at {ended:.4f})")
    kept = [(d.number, d.value) for d in done]
    return {"epochs": epochs, "kept": kept, "best": max(kept, key=lambda x: x[1]), "stops": stops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db", type=Path, help="the study's SQLite file")
    ap.add_argument("--study", default=None, help="study name (default: the file's only study)")
    ap.add_argument("--setting", action="append", default=None, help="PERCENTILE:Z, e.g. 0:1.5 (repeatable)")
    ap.add_argument("--check-images", type=int, default=5000, help="images of the checks before the last (5000)")
    ap.add_argument("--epoch", type=int, default=50_000, help="training images an epoch (50000)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{args.db.resolve()}"
    name = args.study or optuna.get_all_study_names(url)[0]
    trials = [t for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    print(f"{name}: {len(trials)} finished trials in {args.db}")
    for setting in args.setting or DEFAULT_SETTINGS:
        pct, z = (float(x) for x in setting.split(":"))
        pruner = NoisePruner(pct, images=args.check_images, z=z, n_startup_trials=1, n_warmup_steps=args.epoch // 8)
        r = replay(trials, pruner, args.epoch)
        best_number, best_value = r["best"]
        print(f"percentile {pct:g}, z {z:g}: {r['epochs']:.1f} epochs, {len(r['kept'])} complete, best"
              f" {best_value:.4f} (trial {best_number})")
        for line in r["stops"]:
            print(f"    stops {line}")


if __name__ == "__main__":
    main()
