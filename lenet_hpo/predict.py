"""Classify real-world images with a trained checkpoint.

MNIST digits are light ink on black, scaled to fit a 20x20 box (aspect ratio
kept, anti-aliased) and placed in a 28x28 field with their centre of mass at
the centre.  `mnist_style` makes any picture of a digit look like that:

1. Read: any format Pillow reads (`load_image`), turned upright by its EXIF tag.
2. Grayscale: colour becomes luma (ITU-R 601-2); 16-bit and float images are
   scaled to 0-255; transparent pixels are flattened onto a background that
   contrasts with the opaque pixels (black ink on a transparent sheet stays ink).
3. Polarity: the background is the median of the image's border.  If it is
   light (dark ink on paper), the image is inverted so the ink is light.
4. Contrast: background -> 0, brightest ink -> 1; the lowest 20% of that range
   (paper texture, shadows, JPEG noise) is cut to 0.  An image whose ink stands
   out by less than `MIN_CONTRAST` grey levels is blank and refused.
5. Crop to the bounding box of the ink.
6. Stroke width: scaled to fit 80x80 (4x the final size), strokes are measured
   (2 * area / boundary) and, where they are thinner or bolder than MNIST's
   usual range, thickened or thinned (grey dilation/erosion) towards MNIST's
   median width, 8 px there, 2 px in the final 20x20 box.  Then cropped again.
7. Scale to fit 20x20, keeping the aspect ratio (anti-aliased), then stretch
   so the brightest pixel is full ink again (thin strokes stay visible).
8. Place in 28x28 with the centre of mass on pixel (14, 14), MNIST's mean,
   moved back inside the field where the digit would stick out.
9. The model's own input step, from its checkpoint: 28x28 -> 32x32 by padding
   or resizing (`to_32`) and standardisation with its training mean and std
   (`scale_input`).

A Fashion-MNIST model gets the same steps with its dataset's geometry (no
stroke step, fit the whole 28x28 field, centred by bounding box).  A 3-channel
(CIFAR-10) model gets the picture as it is: converted to RGB, resized to 32x32
and standardised.  A model of a folder of images gets each picture as that
folder's images were decoded (`folders.to_side`: its channels, padded or
stretched to 32x32), and prints the folder's class names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from lenet_hpo.checkpoint import Checkpoint, load_checkpoint
from lenet_hpo.data import scale_input, to_32
from lenet_hpo.errors import CheckpointError, ConfigError, ImageError
from lenet_hpo.folders import flatten, to_side
from lenet_hpo.search.storage import resolve_url
from lenet_hpo.search.studies import open_study, retrain_dir
from lenet_hpo.search.studyfile import load_spec, study_path
from lenet_hpo.training import predict_logits

# Extensions of the formats Pillow can open here (".png", ".jpg", ".webp", ...).
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
FIELD = 28  # MNIST's image side
DIGIT_BOX = 20  # MNIST digits fit a 20x20 box inside the field
WORK_BOX = 80  # strokes are measured and normalised at 4x the final scale
STROKE = 8.0  # median stroke width of MNIST digits at WORK_BOX scale (2 px in the 20x20 box)
STROKE_RANGE = (5.5, 11.0)  # widths of most MNIST digits at that scale: left as they are
CENTRE = 14.0  # mean centre of mass of MNIST digits (row and column, pixel indices)
MIN_CONTRAST = 32.0  # grey levels (of 255) between background and ink, below which there is no ink
NOISE_FLOOR = 0.2  # fraction of the ink contrast cut to 0
META_KEYS = ("dataset", "classes", "channels", "resize", "mean", "std")


# --- reading -------------------------------------------------------------------------------


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a directory becomes the image files inside it, sorted by name."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImageError(f"{p}: no image files in this directory (PNG, JPEG, BMP, GIF, TIFF, WebP, ...)")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise ImageError(f"{p}: no such file or directory")
    if not files:
        raise ConfigError("no images given; name image files or directories of images")
    return files


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file (any format Pillow reads), upright by its EXIF orientation."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such image file")
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: the file is empty; give a PNG, JPEG or other image file")
    try:
        with Image.open(p) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        raise ImageError(
            f"{p}: not an image Pillow can read ({type(exc).__name__}: {exc}); convert it to PNG or JPEG"
        ) from None


# --- MNIST-style preprocessing, one function per step -------------------------------------------


def to_gray(image: Image.Image) -> torch.Tensor:
    """Luma as float32 (H, W) on the 0-255 scale; transparency flattened onto a contrasting background."""
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        a = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        return a / a.max() * 255.0 if a.max() > 0 else a
    if "A" not in image.getbands() and "transparency" not in image.info:
        return torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32).copy())
    rgba = image.convert("RGBA")
    gray = torch.from_numpy(np.asarray(rgba.convert("L"), dtype=np.float32).copy())
    alpha = torch.from_numpy(np.asarray(rgba.getchannel("A"), dtype=np.float32).copy()) / 255.0
    opaque_level = (gray * alpha).sum() / alpha.sum().clamp_min(1e-6)
    background = 255.0 if opaque_level < 128 else 0.0
    return gray * alpha + background * (1.0 - alpha)


def background_level(gray: torch.Tensor) -> float:
    """Median grey level of the image's border (a frame 1/20 of the shorter side wide)."""
    k = max(1, min(gray.shape) // 20)
    border = torch.cat([gray[:k].flatten(), gray[-k:].flatten(), gray[:, :k].flatten(), gray[:, -k:].flatten()])
    return float(border.median())


def is_dark_on_light(gray: torch.Tensor) -> bool:
    """True for dark ink on a light background (the opposite of MNIST)."""
    return background_level(gray) > 127.5


def ink_levels(gray: torch.Tensor) -> torch.Tensor:
    """Light-on-dark ink intensity in [0, 1]: inverted if needed, background 0, noise floor cut."""
    if is_dark_on_light(gray):
        gray = 255.0 - gray
    background = background_level(gray)
    peak = float(gray.max())
    if peak - background < MIN_CONTRAST:
        raise ImageError(
            "no ink found: the image is blank or its ink is too faint; give a picture of a digit"
            " (dark on light or light on dark) with clear contrast"
        )
    level = (gray - background) / (peak - background)
    return ((level - NOISE_FLOOR) / (1.0 - NOISE_FLOOR)).clamp(0.0, 1.0)


def crop_to_ink(x: torch.Tensor) -> torch.Tensor:
    """The smallest rectangle holding every non-zero pixel."""
    rows = torch.nonzero(x.amax(1) > 0).flatten()
    cols = torch.nonzero(x.amax(0) > 0).flatten()
    if len(rows) == 0:
        raise ImageError("no ink found: the image is blank")
    return x[int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]


def fit_box(x: torch.Tensor, box: int = DIGIT_BOX) -> torch.Tensor:
    """Scale so the longer side is `box` pixels, keeping the aspect ratio; peak back to 1."""
    h, w = x.shape
    scale = box / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    y = F.interpolate(x[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return (y / y.max().clamp_min(1e-6)).clamp(0.0, 1.0)


def _max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation with a (2r+1)-square; the border counts as background."""
    return F.max_pool2d(F.pad(x, (radius,) * 4)[None, None], 2 * radius + 1, stride=1)[0, 0]


def stroke_width(x: torch.Tensor) -> float:
    """Mean stroke width in pixels: 2 * ink area / ink boundary (ink: level > 0.5)."""
    ink = (x > 0.5).float()
    inner = -_max_filter(-ink, 1)  # erosion by a 3x3 square
    boundary = float(ink.sum() - inner.sum())
    return 2.0 * float(ink.sum()) / max(boundary, 1.0)


def normalize_stroke(x: torch.Tensor) -> torch.Tensor:
    """Thicken or thin strokes outside MNIST's usual width towards its median (at `WORK_BOX` scale)."""
    width = stroke_width(x)
    radius = round(abs(width - STROKE) / 2)
    if STROKE_RANGE[0] <= width <= STROKE_RANGE[1] or radius == 0:
        return x
    if width < STROKE:
        return _max_filter(F.pad(x, (radius,) * 4), radius)  # room to grow outwards
    thinned = -_max_filter(-x, radius)
    return thinned if thinned.max() > 0.5 else x


def centre_of_mass(x: torch.Tensor) -> tuple[float, float]:
    """(row, column) of the intensity-weighted mean position, in pixel indices."""
    total = x.sum()
    rows = (x.sum(1) * torch.arange(x.shape[0], dtype=x.dtype)).sum() / total
    cols = (x.sum(0) * torch.arange(x.shape[1], dtype=x.dtype)).sum() / total
    return float(rows), float(cols)


def place(x: torch.Tensor, field: int = FIELD, *, by_mass: bool = True) -> torch.Tensor:
    """Put `x` into a `field`-square so its centre of mass (or its box's centre) is at the middle."""
    h, w = x.shape
    if by_mass:
        r, c = centre_of_mass(x)
        top, left = math.floor(CENTRE - r + 0.5), math.floor(CENTRE - c + 0.5)
    else:
        top, left = (field - h) // 2, (field - w) // 2
    top, left = min(max(top, 0), field - h), min(max(left, 0), field - w)
    out = torch.zeros(field, field, dtype=x.dtype)
    out[top : top + h, left : left + w] = x
    return out


def mnist_style(
    image: Image.Image, *, box: int = DIGIT_BOX, by_mass: bool = True, strokes: bool = True
) -> torch.Tensor:
    """Steps 2-8 of the module docstring: a uint8 (28, 28) tensor, light ink on black."""
    x = crop_to_ink(ink_levels(to_gray(image)))
    if strokes:
        x = crop_to_ink(normalize_stroke(fit_box(x, WORK_BOX)))
    x = place(fit_box(x, box), by_mass=by_mass)
    return (x * 255.0).round().to(torch.uint8)


def model_input(image: Image.Image, meta: dict[str, Any], input_norm: str = "standard") -> torch.Tensor:
    """The (C, 32, 32) float32 input a checkpoint's model expects (scaled by its config's `input_norm`)."""
    channels = int(meta["channels"])
    if meta.get("source"):  # a folder of images: decoded as the folder's images were
        resize = "stretch" if meta["resize"] in ("resize", "stretch") else "pad"
        x = torch.from_numpy(to_side(flatten(image), channels, resize).copy())[None]
    elif channels == 3:
        rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1)
        y = F.interpolate(rgb[None], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        x = y.round().clamp(0, 255).to(torch.uint8)
    elif channels == 1:
        fashion = meta["dataset"] == "fashion-mnist"
        digit = mnist_style(image, box=FIELD, by_mass=False, strokes=False) if fashion else mnist_style(image)
        x = to_32(digit[None, None], str(meta["resize"]))
    else:
        raise CheckpointError(f"a model of {channels}-channel images cannot classify pictures (1 or 3 expected)")
    return scale_input(x, input_norm, tuple(meta["mean"]), tuple(meta["std"]))[0]


# --- checkpoints ------------------------------------------------------------------------------


def best_retrained(study: str, url: str | None = None, studies_dir: Path | None = None) -> Path:
    """The study's retrained best config with the lowest seed (`studies/<study>/<key>/retrain/best-seed<k>.pt`),
    of the study in `url` (default: the study's SQLite file or $LENET_HPO_STORAGE)."""
    folder = retrain_dir(open_study(study, resolve_url(url, study)), studies_dir)
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = re.fullmatch(r"best-seed(\d+)\.pt", p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
    if not found:
        raise CheckpointError(
            f"study {study!r} has no retrained model ({folder}/best-seed<k>.pt);"
            f" run `python -m lenet_hpo retrain-best --study {study}` first (same --storage), or give --checkpoint FILE"
        )
    return min(found)[1]


def study_dataset(study: str, studies_dir: Path | None = None) -> str | None:
    """The dataset of the study's definition, `studies/<study>.toml`; None where that file is absent."""
    return load_spec(study, studies_dir).dataset_name if study_path(study, studies_dir).is_file() else None


def open_checkpoint(
    checkpoint: str | Path | None = None,
    *,
    study: str = "mnist",
    url: str | None = None,
    dataset: str | None = None,
    studies_dir: Path | None = None,
) -> tuple[Path, Checkpoint]:
    """Load `checkpoint`, or the best retrained model of `study`, and check it fits.

    The model must have been trained on `dataset` when one is given, and on the
    study's dataset when the model comes from the study.
    """
    path = Path(checkpoint) if checkpoint is not None else best_retrained(study, url, studies_dir)
    ckpt = load_checkpoint(path)  # weights_only=True
    if not all(bool(torch.isfinite(w).all()) for w in ckpt.model.state_dict().values() if w.is_floating_point()):
        raise CheckpointError(f"{path}: the model's weights are not finite (NaN or inf: its training diverged);"
                              " retrain it with a lower learning rate, or give another checkpoint")
    missing = [k for k in META_KEYS if k not in ckpt.data]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks data.{missing[0]}; retrain it with this version")
    trained_on = str(ckpt.data["dataset"])
    wanted = [(dataset, "--dataset asks for")] if dataset is not None else []
    if checkpoint is None:
        wanted.append((study_dataset(study, studies_dir), f"study {study!r} used"))
    for name, why in wanted:
        if name is not None and name != trained_on:
            raise CheckpointError(
                f"{path}: the model was trained on {trained_on}, but {why} {name};"
                f" give a checkpoint trained on {name} (--checkpoint FILE)"
            )
    return path, ckpt


# --- prediction -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One image's prediction (`predict_images`): the most probable class and the top k."""

    path: Path
    label: str  # class name of the most probable class
    probability: float  # its softmax probability
    top: tuple[tuple[str, float], ...]  # the `top` most probable (class, probability), best first

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": str(self.path),
            "label": self.label,
            "probability": self.probability,
            "top": [{"label": label, "probability": p} for label, p in self.top],
        }


def predict_images(checkpoint: Checkpoint, paths: Iterable[str | Path], top: int = 3) -> list[Prediction]:
    """Classify image files and directories of images (expanded, sorted) with a checkpoint's model."""
    if top < 1:
        raise ConfigError(f"top: {top} must be at least 1")
    classes = [str(c) for c in checkpoint.data["classes"]]
    files = expand_paths(paths)
    inputs = []
    for f in files:
        image = load_image(f)
        try:
            inputs.append(model_input(image, checkpoint.data, checkpoint.config.input_norm))
        except ImageError as exc:
            raise ImageError(f"{f}: {exc}") from None
    device = next(checkpoint.model.parameters()).device
    probs = predict_logits(checkpoint.model, torch.stack(inputs).to(device)).float().softmax(1).cpu()
    best_p, best_i = probs.topk(min(top, len(classes)), dim=1)
    out = []
    for f, ps, idx in zip(files, best_p.tolist(), best_i.tolist(), strict=True):
        ranked = tuple((classes[i], p) for i, p in zip(idx, ps, strict=True))
        out.append(Prediction(path=f, label=ranked[0][0], probability=ranked[0][1], top=ranked))
    return out
