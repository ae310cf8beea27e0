"""Your own images: a folder of class subfolders (torchvision's ImageFolder layout) as a dataset.

    my-symbols/alpha/001.png       my-symbols/train/alpha/...   (optional: train/ and test/
    my-symbols/alpha/002.jpg       my-symbols/test/alpha/...     give the two splits)
    my-symbols/beta/...

Class names are the subfolder names, sorted.  Every file Pillow can open by its extension
(PNG, JPEG, BMP, GIF, TIFF, WebP, ...) is an image; other files are ignored and counted.
Images are decoded once, with Pillow: grayscale when every image is grayscale (its red,
green and blue agree), RGB otherwise (or as `channels` says); transparency flattened onto
black; brought to 32x32 keeping the aspect ratio and padding with the image's own border
colour ("pad"), or by stretching ("stretch").  Without train/ and test/, a stratified,
seeded `test_size` part is held out as the test split, always the same for the same files.

The decoded uint8 tensors are cached (`<data dir>/folders/<path hash>/tensors.pt`, like the
built-in datasets) under a checksum of every image file's name, size and contents and of
the decoding options: changing, adding or removing a file decodes again.  Each checksum's
file list is kept beside the cache, so a study can say which files changed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from lenet_hpo.acquire import DATASETS, Tensors, read_cache, write_cache
from lenet_hpo.errors import ConfigError, DataError, printable
from lenet_hpo.files import atomic_write_text
from lenet_hpo.splits import stratified_split

IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
SIDE = 32
MIN_PER_CLASS = 10  # fewer leaves a class without images in one of the splits
MAX_PIXELS = 40_000_000  # per image: decoding more than this is refused (a photo is about 12 million)
MAX_BYTES = 4 * 2**30  # decoded tensors of one dataset (uint8, 32x32 per channel)
GRAY_TOLERANCE = 2  # grey levels by which R, G and B of a grey image may differ (JPEG's colour noise)
FOLDER_RESIZE = ("pad", "stretch")


@dataclass(frozen=True)
class FolderOptions:
    channels: int | None = None  # 1 or 3; None: 1 when every image is grayscale
    resize: str = "pad"  # pad: keep the aspect ratio; stretch
    test_size: float = 0.2  # fraction held out as the test split (without train/ and test/ subfolders)
    skip_bad: bool = False  # leave out unreadable images instead of stopping

    def __post_init__(self) -> None:
        if self.resize == "resize":  # the built-in datasets' name for the same bilinear stretch
            object.__setattr__(self, "resize", "stretch")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels: {self.channels!r} must be 1 or 3")
        if self.resize not in FOLDER_RESIZE:
            raise ConfigError(f"resize: {self.resize!r} is not one of {', '.join(FOLDER_RESIZE)} for a folder")
        if not 0 < self.test_size < 1:
            raise ConfigError(f"test_size: {self.test_size!r} must be a fraction between 0 and 1")


@dataclass(frozen=True)
class FolderScan:
    """What a folder holds, before decoding."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, list[tuple[Path, int]]]  # "all", or "train" and "test": (file, class index)
    not_images: int  # files ignored because Pillow does not read their kind
    checksum: str = ""  # of names, sizes and contents
    manifest: dict[str, str] = field(default_factory=dict)  # relative file name -> "size:sha256"


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _files(folder: Path, classes: list[str]) -> tuple[list[tuple[Path, int]], int]:
    items, ignored = [], 0
    for k, name in enumerate(classes):
        for p in sorted((folder / name).rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((p, k))
            else:
                ignored += 1
    return items, ignored


def scan(root: str | Path) -> FolderScan:
    """List a folder's classes and image files, checking the layout; nothing is decoded."""
    given, root = str(root), Path(root).expanduser().resolve()
    if not root.exists():
        raise DataError(
            f"unknown dataset {given!r}: not one of {', '.join(DATASETS)}, and there is no folder {root};"
            " give a folder with one subfolder of images per class"
        )
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give a folder with one subfolder of images per class")
    top = [p.name for p in _class_dirs(root)]
    layouts = {"train": root / "train", "test": root / "test"} if {"train", "test"} <= set(top) else {"all": root}
    classes = [p.name for p in _class_dirs(next(iter(layouts.values())))]
    if len(classes) < 2:
        found = f"one class ({classes[0]!r})" if classes else "no class subfolders"
        raise DataError(f"{root}: {found}; a dataset needs a subfolder of images for each of at least two classes")
    splits, ignored = {}, 0
    for split, folder in layouts.items():
        other = [p.name for p in _class_dirs(folder)]
        if other != classes:
            raise DataError(f"{folder}: its class subfolders {other} differ from {layouts['train']}'s {classes}")
        splits[split], n = _files(folder, classes)
        ignored += n
    counts = np.bincount([k for items in splits.values() for _, k in items], minlength=len(classes))
    few = [(classes[k], int(n)) for k, n in enumerate(counts) if n < MIN_PER_CLASS]
    if few:
        listed = ", ".join(f"{name!r} has {n}" for name, n in few[:10])
        raise DataError(f"{root}: every class needs at least {MIN_PER_CLASS} images; {listed}")
    return FolderScan(root, tuple(classes), splits, ignored)


def with_checksum(s: FolderScan) -> FolderScan:
    """The scan with its checksum: SHA-256 over every image file's relative name, size and contents."""
    total, manifest = hashlib.sha256(), {}
    for items in s.splits.values():
        for path, _ in items:
            data = path.read_bytes()
            entry = f"{len(data)}:{hashlib.sha256(data).hexdigest()}"
            name = path.relative_to(s.root).as_posix()
            manifest[name] = entry
            total.update(f"{name}\0{entry}\n".encode())
    return FolderScan(s.root, s.classes, s.splits, s.not_images, total.hexdigest(), manifest)


# --- decoding ------------------------------------------------------------------------------------


def flatten(img: Image.Image) -> Image.Image:
    """L or RGB: transparency composited onto black, other modes converted."""
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return img.convert("RGB") if img.mode not in ("L", "RGB") else img


class TooLargeError(ValueError):
    """An image with more pixels than MAX_PIXELS: refused before it is decoded."""


def _open(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        # The size is checked below, with a message of ours; PIL's own warning would only repeat it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    with img:
        if img.width * img.height > MAX_PIXELS:
            raise TooLargeError(f"{img.width}x{img.height} pixels, more than {MAX_PIXELS:,}: shrink it first")
        img.load()  # a truncated file fails here
        return flatten(ImageOps.exif_transpose(img))


def is_gray(img: Image.Image) -> bool:
    if img.mode == "L":
        return True
    a = np.asarray(img, dtype=np.int16)
    return int(np.abs(a - a[..., :1]).max()) <= GRAY_TOLERANCE


def to_side(img: Image.Image, channels: int, resize: str) -> np.ndarray:
    """(C, 32, 32) uint8: the image in `channels`, padded (its border's median colour) or stretched."""
    img = img.convert("L" if channels == 1 else "RGB")
    if resize == "stretch":
        out = img.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    else:
        fitted = ImageOps.contain(img, (SIDE, SIDE), Image.Resampling.LANCZOS)
        a = np.asarray(fitted).reshape(fitted.height, fitted.width, -1)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        fill = tuple(int(v) for v in np.median(border, axis=0))
        out = Image.new(img.mode, (SIDE, SIDE), fill[0] if channels == 1 else fill)
        out.paste(fitted, ((SIDE - fitted.width) // 2, (SIDE - fitted.height) // 2))
    return np.asarray(out, dtype=np.uint8).reshape(SIDE, SIDE, channels).transpose(2, 0, 1)


Decoded = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images, labels)


def _decode_all(s: FolderScan, options: FolderOptions, max_bytes: int) -> tuple[Decoded, int, list[str]]:
    """Decode every image: ({split: (images, labels)}, channels, skipped files).  Each image is
    brought to 32x32 as soon as it is read, in both kinds when the channels are still open.
    Bad files stop it unless options.skip_bad."""
    items = [(split, path, k) for split, rows in s.splits.items() for path, k in rows]
    if len(items) * (options.channels or 3) * SIDE * SIDE > max_bytes:
        raise DataError(
            f"{s.root}: {len(items):,} images would take more than {max_bytes / 2**20:,.0f} MiB decoded"
            " (32x32 each); use a subset of them"
        )
    kinds = [options.channels] if options.channels else [1, 3]
    small: dict[int, list[np.ndarray]] = {c: [] for c in kinds}
    kept, bad, gray = [], [], True
    for split, path, k in items:
        try:
            img = _open(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            why = str(exc) if isinstance(exc, TooLargeError) else type(exc).__name__
            bad.append(f"{printable(path.relative_to(s.root))} ({why})")
            continue
        gray = gray and (options.channels is not None or is_gray(img))
        for c in kinds:
            small[c].append(to_side(img, c, options.resize))
        kept.append((split, k))
    if bad and not options.skip_bad:
        listed = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(
            f"{s.root}: {len(bad)} image file(s) cannot be read: {listed}. Fix or remove them, or pass --skip-bad"
            " (in a study file: skip_bad = true) to leave them out"
        )
    channels = options.channels or (1 if gray else 3)
    images, labels = np.stack(small[channels]), np.array([k for _, k in kept])
    which = np.array([split for split, _ in kept])
    return {split: (images[which == split], labels[which == split]) for split in s.splits}, channels, bad


# --- the dataset ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderData:
    tensors: Tensors  # train_x, train_y and (with test/) test_x, test_y, as the built-in datasets give them
    classes: tuple[str, ...]
    checksum: str  # of the files and the decoding options
    info: dict[str, Any]  # path, channels, skipped, not_images, test_size, layout
    resize: str = "pad"  # how its images were brought to 32x32


def hold_out_test(tensors: Tensors, test_size: float) -> Tensors:
    """A folder without train/ and test/ subfolders: the same stratified test part for the same
    files, whatever the study (seed 0)."""
    if "test_y" in tensors:
        return tensors
    rest, test = stratified_split(tensors["train_y"], max(1, round(test_size * len(tensors["train_y"]))), 0)
    x, y = tensors["train_x"], tensors["train_y"]
    return {"train_x": x[rest], "train_y": y[rest], "test_x": x[test], "test_y": y[test]}


def cache_folder(data_dir: Path, root: Path) -> Path:
    return data_dir / "folders" / hashlib.sha256(str(root).encode()).hexdigest()[:16]


def load_folder(root: str | Path, options: FolderOptions, data_dir: Path, *, max_bytes: int = MAX_BYTES) -> FolderData:
    """A folder's images as tensors: from the cache when its files and options are unchanged,
    else decoded (and cached).  Without train/ and test/ subfolders the test split is held
    out here (`hold_out_test`).  Errors leave nothing written."""
    s = with_checksum(scan(root))
    checksum = hashlib.sha256(f"{s.checksum}|{options}".encode()).hexdigest()
    folder = cache_folder(data_dir, s.root)
    info_path = folder / "info.json"
    cached = read_cache(folder / "tensors.pt", checksum)
    if cached is not None and info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("checksum") == checksum:
            return FolderData(hold_out_test(cached, options.test_size), s.classes, checksum, info, options.resize)
    parts, channels, bad = _decode_all(s, options, max_bytes)
    tensors = {}
    for split, (x, y) in parts.items():  # "all" becomes train, its test part held out on the way out
        tensors[f"{'train' if split == 'all' else split}_x"] = torch.from_numpy(x)
        tensors[f"{'train' if split == 'all' else split}_y"] = torch.from_numpy(y).long()
    layout = "train/ and test/ subfolders" if "all" not in parts else f"test split held out: {options.test_size:g}"
    info = {"checksum": checksum, "path": str(s.root), "channels": channels, "skipped": bad,
            "not_images": s.not_images, "layout": layout, "files_checksum": s.checksum}
    write_cache(folder / "tensors.pt", checksum, tensors)
    atomic_write_text(folder / f"manifest-{s.checksum[:16]}.json", json.dumps(s.manifest))
    atomic_write_text(info_path, json.dumps(info, indent=1))
    return FolderData(hold_out_test(tensors, options.test_size), s.classes, checksum, info, options.resize)


def what_changed(data_dir: Path, root: str | Path, old_files_checksum: str) -> str:
    """Which files differ from a folder's earlier state (by its files' checksum), in words."""
    s = with_checksum(scan(root))
    old_path = cache_folder(data_dir, s.root) / f"manifest-{old_files_checksum[:16]}.json"
    if not old_path.exists():
        return "its files differ from when the study began (the earlier file list is not kept here)"
    old = json.loads(old_path.read_text())
    added = sorted(set(s.manifest) - set(old))
    removed = sorted(set(old) - set(s.manifest))
    changed = sorted(n for n in set(old) & set(s.manifest) if old[n] != s.manifest[n])
    named = (("changed", changed), ("added", added), ("removed", removed))
    parts = [f"{len(v)} {what} ({', '.join(v[:5])}{', ...' if len(v) > 5 else ''})" for what, v in named if v]
    return "files " + "; ".join(parts) if parts else "the decoding options differ"




def export(images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], folder: Path, per_class: int) -> int:
    """Write up to `per_class` images of each class as PNG files in `folder`/<class>/, a dataset
    in this module's layout (to try it, or to start one's own); returns how many were written.
    Class names are made safe as folder names."""
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{folder}: exists and is not empty; give a new folder to export to")
    written = 0
    for k, name in enumerate(classes):
        sub = folder / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        sub.mkdir(parents=True, exist_ok=True)
        for i, x in enumerate(images[labels == k][:per_class]):
            a = x.numpy()
            Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(sub / f"{i:05d}.png")
            written += 1
    return written
