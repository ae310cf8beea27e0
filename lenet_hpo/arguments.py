"""The command line's argument types and shared options: each type rejects bad input with a
message argparse prints (exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lenet_hpo.data import Dataset


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
    """A built-in dataset's name, or an existing folder of images."""
    from lenet_hpo.acquire import DATASETS

    if text not in DATASETS and not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(
            f"unknown dataset {text!r}; choose one of: {', '.join(DATASETS)}, or give a folder of images"
            " (one subfolder per class)"
        )
    return text


def fraction(text: str) -> float:
    v = float_range(0.0, 1.0)(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{v} is out of range: must be between 0 and 1, exclusive")
    return v


# --- arguments several commands share ---------------------------------------------------------


def add_data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset directory (default: $LENET_HPO_DATA_DIR or ./data)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=dataset_name, default="mnist",
                   help="mnist, fashion-mnist, cifar10, synthetic, or a folder with one subfolder of images per class"
                   " (default: mnist)")
    add_data_dir_arg(p)
    p.add_argument("--resize", choices=("pad", "resize", "stretch"), default="pad",
                   help="to 32x32: pad (28x28 images with zeros; a folder's images keeping their aspect ratio) or"
                   " resize/stretch (bilinear) (default: pad)")
    folder = p.add_argument_group("a folder of images")
    folder.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="1 (grayscale) or 3 (RGB) (default: 1 when every image is grayscale)")
    folder.add_argument("--test-size", type=fraction, default=0.2,
                        help="fraction held out as the test split, without train/ and test/ subfolders (default: 0.2)")
    folder.add_argument("--skip-bad", action="store_true", help="leave out unreadable images instead of stopping")


def load_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset the data arguments name."""
    from lenet_hpo.data import load_data
    from lenet_hpo.folders import FolderOptions

    folder = FolderOptions(args.channels, args.resize, args.test_size, args.skip_bad)
    return load_data(args.dataset, data_dir=args.data_dir, resize=args.resize, folder=folder)


def add_device_arg(p: argparse.ArgumentParser, *, threads: bool = True) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (cuda, mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")
    if threads:
        p.add_argument("--threads", type=int_range(1, 1024), default=None,
                       help="torch CPU threads (default: all cores)")


def add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", default="mnist",
                   help="study name (studies/NAME.toml) or a path to a .toml file (default: mnist)")
    p.add_argument("--storage", default=None,
                   help="storage URL (default: $LENET_HPO_STORAGE, else sqlite:///studies/NAME.db)")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")




def output_dir(text: str) -> Path:
    """A folder outputs go to (made when missing), refused now if it cannot be."""
    from lenet_hpo.errors import ConfigError
    from lenet_hpo.files import check_output_dir

    try:
        return check_output_dir(Path(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
