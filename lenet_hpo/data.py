"""`Dataset`: images brought to 32x32, split, and scaled as a model reads them.

The images come from `acquire.fetch` (the built-in datasets) or `folders.load_folder`
(a folder of class subfolders; its test split is its test/ subfolder or a held-out
part).  The official
training set is split once into a fit part (`train`) and a stratified, seeded
validation part (`val`, where selection happens); the official test set (`test`) is
used only by evaluation commands.  All parts stay uint8; a trainer scales each batch
as it is used (`input_affine`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lenet_hpo.acquire import DATASETS, dataset_checksum, dataset_info, default_data_dir, fetch
from lenet_hpo.classic import paper_affine
from lenet_hpo.errors import ConfigError
from lenet_hpo.folders import FolderOptions, load_folder
from lenet_hpo.splits import stratified_split

RESIZE_MODES = ("pad", "resize", "stretch")  # resize and stretch: the same, bilinear, for 28x28 images


def to_32(x: torch.Tensor, mode: str = "pad") -> torch.Tensor:
    """Bring uint8 images to 32x32 on the whole tensor: zero padding or bilinear resize."""
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize: {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    h, w = x.shape[-2:]
    if (h, w) == (32, 32):
        return x
    if mode == "pad":
        if h > 32 or w > 32:
            raise ConfigError(f"resize: cannot pad {h}x{w} images to 32x32; use resize")
        top, left = (32 - h) // 2, (32 - w) // 2
        return F.pad(x, (left, 32 - w - left, top, 32 - h - top))
    y = F.interpolate(x.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)  # resize, stretch
    return y.round().clamp(0, 255).to(torch.uint8)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (ddof=1) of uint8 images, on the [0, 1] scale.

    Computed from each channel's 256-bin histogram: exact, and no float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / (n - 1)
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


def input_affine(
    input_norm: str, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale), shaped (1, C, 1, 1), with model input = (pixel - shift) * scale:
    "standard" standardises with `mean`/`std` (of the fit split); "paper" is the paper's
    fixed scaling (`classic.paper_affine`)."""
    match input_norm:
        case "standard":
            shift = torch.tensor(mean, dtype=torch.float32, device=device) * 255.0
            scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device) * 255.0)
        case "paper":
            shift, scale = paper_affine(len(mean), device)
        case _:
            raise ConfigError(f"input_norm: unknown {input_norm!r}")
    return shift.view(1, -1, 1, 1), scale.view(1, -1, 1, 1)


def scale_input(x: torch.Tensor, input_norm: str, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 model input, by the config's `input_norm`."""
    shift, scale = input_affine(input_norm, mean, std, x.device)
    return (x.to(torch.float32) - shift) * scale


@dataclass(frozen=True, eq=False)
class Split:
    x: torch.Tensor  # uint8 (N, C, 32, 32)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset, preprocessed to 32x32 and split; all parts uint8 tensors.

    `train` and `val` partition the official training set (selection happens on
    `val`); `test` is the official test set, used only by evaluation commands.
    """

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]  # of `train`, [0, 1] scale, per channel
    std: tuple[float, ...]
    resize: str
    val_size: int
    split_seed: int
    checksum: str
    source: dict[str, Any] = dataclasses.field(default_factory=dict)  # a folder's: path, channels, skipped, ...

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with every split on `device` (a search worker moves it to
        its GPU once, not once per trial)."""
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )

    def val_subset(self, size: int, seed: int) -> Split:
        """A fixed, stratified, seeded part of the validation split (`size` images; all of it
        when `size` is 0 or at least its length): the same for every trial of a study."""
        if size <= 0 or size >= len(self.val):
            return self.val
        _, idx = stratified_split(self.val.y.cpu(), size, seed)
        return Split(self.val.x[idx.to(self.val.x.device)], self.val.y[idx.to(self.val.y.device)])

    def full_train(self) -> Split:
        """train + val: what a final model is fitted on."""
        return Split(torch.cat([self.train.x, self.val.x]), torch.cat([self.train.y, self.val.y]))

    def meta(self) -> dict[str, object]:
        """Plain description (JSON-safe) recorded in studies and checkpoints."""
        return {
            "dataset": self.name,
            "classes": list(self.classes),
            "channels": self.channels,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
            "val_size": self.val_size,
            "split_seed": self.split_seed,
            "checksum": self.checksum,
            **({"source": self.source} if self.source else {}),
        }

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split (class imbalance shows here)."""
        splits = (("train", self.train), ("val", self.val), ("test", self.test))
        per_class = {name: torch.bincount(s.y.cpu(), minlength=self.num_classes).tolist() for name, s in splits}
        return {name: dict(zip(self.classes, n, strict=True)) for name, n in per_class.items()}


def split_digest(split: Split) -> str:
    """SHA-256 of a split's labels and images: what a study records of its validation subset."""
    h = hashlib.sha256()
    h.update(split.y.cpu().numpy().tobytes())
    h.update(split.x.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_data(
    name: str = "mnist",
    *,
    data_dir: Path | None = None,
    val_size: float | None = None,
    split_seed: int = 0,
    resize: str = "pad",
    train_limit: int | None = None,
    folder: FolderOptions | None = None,
) -> Dataset:
    """Load, preprocess and split a dataset: a built-in one by name, or a folder of images.

    `val_size` is a number of images or, below 1, a fraction of the training part (default:
    10,000 for a built-in dataset, 0.2 for a folder).  `train_limit` keeps a stratified subset
    of the training part (for smoke runs); the validation and test parts are not reduced.
    `folder`: how a folder is decoded and its test split held out (its own `resize`; this
    call's `resize` is for a built-in dataset).
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    source: dict[str, Any] = {}
    max_val_fraction = dataset_info(name).max_val_fraction if name in DATASETS else 1.0
    if name in DATASETS:
        info = dataset_info(name)
        raw, classes, checksum = fetch(info, data_dir), info.classes, dataset_checksum(info)
        val_size = 10_000 if val_size is None else val_size
    else:  # a folder: its options (resize included) and its test split are the folder's own
        loaded = load_folder(name, folder or FolderOptions(), data_dir)
        raw, classes, checksum, source = dict(loaded.tensors), loaded.classes, loaded.checksum, loaded.info
        name, val_size, resize = Path(loaded.info["path"]).name, 0.2 if val_size is None else val_size, loaded.resize
    n = len(raw["train_y"])
    count = round(val_size * n) if val_size < 1 else int(val_size)
    count = min(count, int(max_val_fraction * n))
    train_idx, val_idx = stratified_split(raw["train_y"], count, split_seed)
    if train_limit is not None and train_limit < len(train_idx):
        if train_limit < len(classes):
            raise ConfigError(f"train_limit: {train_limit} is smaller than the number of classes")
        keep, _ = stratified_split(raw["train_y"][train_idx], len(train_idx) - train_limit, split_seed + 1)
        train_idx = train_idx[keep]
    x_train = to_32(raw["train_x"], resize)
    x_test = to_32(raw["test_x"], resize)
    train = Split(x_train[train_idx], raw["train_y"][train_idx])
    mean, std = channel_stats(train.x)
    return Dataset(
        name=name,
        classes=classes,
        train=train,
        val=Split(x_train[val_idx], raw["train_y"][val_idx]),
        test=Split(x_test, raw["test_y"]),
        mean=mean,
        std=std,
        resize=resize,
        val_size=len(val_idx),
        split_seed=split_seed,
        checksum=checksum,
        source=source,
    )
