"""Accuracy of `predict` on digits rendered from the machine's fonts.

Renders N digits (balanced over 0-9) from the TrueType/OpenType fonts under
/usr/share/fonts (Pillow's built-in font where there are none) at several sizes,
positions, stroke widths and rotations, dark ink on light paper and the reverse,
in a few ink and paper colours; saves them as PNG files in a temporary directory
(or --out), classifies them with `lenet_hpo.predict.predict_images` and prints
the accuracy overall and per font and variation.

    python benchmarks/rendered_digits.py --checkpoint runs/x.pt [-n 300] [--seed 0] [--out DIR]

Debian packages with fonts: fonts-dejavu-core fonts-dejavu-extra fonts-liberation
fonts-freefont-ttf (50 fonts).  Measured with them:
- the default study's best retrained model (studies/mnist/retrain/best-seed0.pt,
  99.58% test accuracy): 97.0% with -n 300, 95.6% with -n 1000 --seed 1;
- an earlier model of 99.1% test accuracy (relu, max pooling, batch norm, Adam lr
  0.002, c1 16, c3 32, 8 epochs): 97.0% with -n 300, 96.5% with -n 1000 --seed 1,
  and 89.3% on -n 300 without the stroke-width step of the preprocessing.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lenet_hpo.predict import open_checkpoint, predict_images

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")
CANVAS = 128  # side of the rendered picture, pixels
SIZES = (24, 40, 64, 96)  # font size (em) in pixels
STROKES = (0.0, 0.03, 0.06)  # extra outline width as a fraction of the font size
ANGLES = (-20, -10, 0, 10, 20)  # rotation, degrees counter-clockwise
DARK_INKS = ((0, 0, 0), (20, 30, 110), (120, 20, 20), (70, 70, 70))  # black, blue, red, pencil
LIGHT_PAPERS = ((255, 255, 255), (245, 238, 215), (205, 205, 205))  # white, cream, grey
LIGHT_INKS = ((255, 255, 255), (230, 230, 200))  # white, chalk
DARK_PAPERS = ((0, 0, 0), (30, 55, 45))  # black, blackboard
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Variation:
    size: int  # font size in pixels
    stroke: int  # outline width in pixels (thickens the strokes)
    angle: float  # degrees, counter-clockwise
    dx: float  # offset of the glyph's centre from the canvas centre, pixels
    dy: float
    ink: RGB
    paper: RGB

    @property
    def dark_on_light(self) -> bool:
        return sum(self.ink) < sum(self.paper)


@dataclass(frozen=True)
class Sample:
    digit: int
    font: Path | None  # None: Pillow's built-in font
    variation: Variation

    @property
    def font_name(self) -> str:
        return self.font.stem if self.font is not None else "pillow-default"


def load_font(font: Path | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.truetype(str(font), size) if font is not None else ImageFont.load_default(size)


def render_digit(digit: int, font: Path | None, v: Variation, canvas: int = CANVAS) -> Image.Image:
    """An RGB picture of `digit` drawn in `font` as `v` describes."""
    face = load_font(font, v.size)
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=face, stroke_width=v.stroke)
    cx, cy = canvas / 2 + v.dx, canvas / 2 + v.dy
    draw.text(
        (cx - (left + right) / 2, cy - (top + bottom) / 2),
        str(digit),
        fill=255,
        font=face,
        stroke_width=v.stroke,
        stroke_fill=255,
    )
    mask = mask.rotate(v.angle, resample=Image.Resampling.BICUBIC, center=(cx, cy))
    return Image.composite(Image.new("RGB", mask.size, v.ink), Image.new("RGB", mask.size, v.paper), mask)


def renders_digits(font: Path) -> bool:
    """True if the font draws ten different, non-empty digit glyphs (not a symbol font)."""
    try:
        face = ImageFont.truetype(str(font), 32)
    except OSError:
        return False
    masks = {bytes(face.getmask(str(d))) for d in range(10)}
    return len(masks) == 10 and all(any(m) for m in masks)


def find_fonts(dirs: Sequence[Path] = FONT_DIRS) -> list[Path | None]:
    """Digit-capable TrueType/OpenType fonts under `dirs`, sorted; [None] (Pillow's font) if there are none."""
    files = sorted({p for d in dirs if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf")})
    fonts: list[Path | None] = [p for p in files if renders_digits(p)]
    return fonts or [None]


def sample_digits(n: int, fonts: Sequence[Path | None], seed: int = 0, canvas: int = CANVAS) -> list[Sample]:
    """`n` digits (0-9 in turn), each with a random font and variation drawn from `seed`."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        size = rng.choice(SIZES)
        stroke = round(size * rng.choice(STROKES))
        margin = max(0.0, canvas / 2 - 0.5 * size - stroke - 4)  # keeps the glyph on the canvas
        if rng.random() < 0.5:
            ink, paper = rng.choice(DARK_INKS), rng.choice(LIGHT_PAPERS)
        else:
            ink, paper = rng.choice(LIGHT_INKS), rng.choice(DARK_PAPERS)
        v = Variation(
            size=size,
            stroke=stroke,
            angle=rng.choice(ANGLES),
            dx=rng.uniform(-margin, margin),
            dy=rng.uniform(-margin, margin),
            ink=ink,
            paper=paper,
        )
        samples.append(Sample(digit=i % 10, font=rng.choice(fonts), variation=v))
    return samples


def write_samples(samples: Sequence[Sample], folder: Path) -> list[Path]:
    """Render each sample to `folder/<index>-<digit>.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(samples):
        path = folder / f"{i:05d}-{s.digit}.png"
        render_digit(s.digit, s.font, s.variation).save(path)
        paths.append(path)
    return paths


GROUPS: dict[str, Callable[[Sample], str]] = {
    "digit": lambda s: str(s.digit),
    "polarity": lambda s: "dark on light" if s.variation.dark_on_light else "light on dark",
    "size": lambda s: f"{s.variation.size:3d} px",
    "stroke": lambda s: f"+{min(STROKES, key=lambda r: abs(r * s.variation.size - s.variation.stroke)):.0%} of size",
    "rotation": lambda s: f"{s.variation.angle:+.0f} deg",
    "font": lambda s: s.font_name,
}


def report(samples: Sequence[Sample], correct: Sequence[bool]) -> str:
    lines = [f"overall: {sum(correct) / len(correct):.1%} ({sum(correct)}/{len(correct)})"]
    for name, key in GROUPS.items():
        tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for s, ok in zip(samples, correct, strict=True):
            tally[key(s)][0] += ok
            tally[key(s)][1] += 1
        lines.append(f"by {name}:")
        for k in sorted(tally):
            hits, total = tally[k]
            lines.append(f"  {k:<36} {hits / total:6.1%}  ({hits}/{total})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint of an MNIST model")
    parser.add_argument("-n", type=int, default=300, help="how many digits to render (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of fonts and variations (default: 0)")
    parser.add_argument(
        "--out", type=Path, default=None, help="keep the PNG files here (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    fonts = find_fonts()
    samples = sample_digits(args.n, fonts, args.seed)
    _, ckpt = open_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="rendered-digits-") as tmp:
        paths = write_samples(samples, args.out or Path(tmp))
        predictions = predict_images(ckpt, paths, top=1)
    correct = [p.label == str(s.digit) for p, s in zip(predictions, samples, strict=True)]
    print(f"{len(samples)} digits from {len(fonts)} fonts (seed {args.seed}), checkpoint {args.checkpoint}")
    print(report(samples, correct))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
