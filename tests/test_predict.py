import json

import numpy as np
import pytest
import torch
from PIL import Image
from studyfiles import stored_study

from benchmarks.rendered_digits import Variation, find_fonts, render_digit, sample_digits, write_samples
from lenet_hpo import predict as P
from lenet_hpo.acquire import DIGITS
from lenet_hpo.checkpoint import load_checkpoint, save_checkpoint
from lenet_hpo.cli import main
from lenet_hpo.config import BASELINE
from lenet_hpo.data import load_data, scale_input, to_32
from lenet_hpo.errors import CheckpointError, ImageError, StorageError
from lenet_hpo.model import build_model
from lenet_hpo.search.studies import retrain_dir
from lenet_hpo.training import train

FAST = BASELINE.replace(activation="relu", pooling="max", optimizer="adam", lr=3e-3, batch_size=64, epochs=3)
BLACK, WHITE = (0, 0, 0), (255, 255, 255)
FONTS = find_fonts()
FONT = next((f for f in FONTS if f is not None and f.stem == "DejaVuSans"), FONTS[0])


def digit(d=7, *, size=64, dx=0.0, dy=0.0, ink=BLACK, paper=WHITE, angle=0.0, stroke=0):
    return render_digit(d, FONT, Variation(size=size, stroke=stroke, angle=angle, dx=dx, dy=dy, ink=ink, paper=paper))


def meta(dataset="mnist", channels=1, resize="pad"):
    classes = list(DIGITS) if channels == 1 else [f"class{i}" for i in range(10)]
    return {
        "dataset": dataset,
        "classes": classes,
        "channels": channels,
        "resize": resize,
        "mean": [0.1] * channels,
        "std": [0.3] * channels,
    }


def write_checkpoint(path, **kw):
    m = meta(**kw)
    return save_checkpoint(path, build_model(FAST, in_channels=m["channels"]), FAST, m)


@pytest.fixture
def ckpt_file(tmp_path):
    return write_checkpoint(tmp_path / "model.pt")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- preprocessing, step by step -----------------------------------------------------------


def test_to_gray_handles_colour_transparency_and_16_bit():
    rgb = Image.new("RGB", (4, 4), (200, 180, 40))
    assert P.to_gray(rgb)[0, 0] == pytest.approx(0.299 * 200 + 0.587 * 180 + 0.114 * 40, abs=1)
    sheet = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # black ink on a transparent sheet
    sheet.putpixel((3, 3), (0, 0, 0, 255))
    gray = P.to_gray(sheet)
    assert gray[3, 3] == 0 and gray[0, 0] == 255  # the sheet becomes paper, not more black
    deep = Image.fromarray(np.full((4, 4), 4000, dtype=np.uint16))
    deep.putpixel((0, 0), 0)
    assert P.to_gray(deep).max() == 255 and P.to_gray(deep)[0, 0] == 0


def test_invert_detection_makes_ink_light_on_black():
    dark_on_light, light_on_dark = P.to_gray(digit(ink=BLACK, paper=WHITE)), P.to_gray(digit(ink=WHITE, paper=BLACK))
    assert P.is_dark_on_light(dark_on_light) and not P.is_dark_on_light(light_on_dark)
    a, b = P.mnist_style(digit(ink=BLACK, paper=WHITE)), P.mnist_style(digit(ink=WHITE, paper=BLACK))
    assert a[0, 0] == 0 and a.max() == 255
    assert (a.int() - b.int()).abs().max() <= 2
    coloured = P.mnist_style(digit(ink=(20, 30, 110), paper=(245, 238, 215)))
    assert (a.int() - coloured.int()).abs().float().mean() < 2


def test_contrast_stretch_removes_paper_texture():
    g = torch.Generator().manual_seed(0)
    paper = 200 + 5 * torch.randn(60, 60, generator=g)  # textured grey paper, grey pencil
    paper[20:40, 28:32] = 90
    level = P.ink_levels(paper.clamp(0, 255))
    assert level[20:40, 28:32].min() > 0.9
    assert level[:15].max() == 0 and level[45:].max() == 0


def test_crop_to_ink_bounding_box():
    x = torch.zeros(30, 40)
    x[5:9, 10:20] = 1.0
    x[7, 25] = 0.5
    assert P.crop_to_ink(x).shape == (4, 16)


@pytest.mark.parametrize(
    ("shape", "fitted"), [((40, 10), (20, 5)), ((30, 120), (5, 20)), ((6, 6), (20, 20)), ((300, 200), (20, 13))]
)
def test_fit_box_keeps_aspect_ratio(shape, fitted):
    y = P.fit_box(torch.full(shape, 0.6))
    assert tuple(y.shape) == fitted
    assert y.max() == pytest.approx(1.0)  # thin or faint ink is full ink again


def ring(width, side=80):
    r = torch.hypot(
        *torch.meshgrid(torch.arange(side) - side / 2 + 0.5, torch.arange(side) - side / 2 + 0.5, indexing="ij")
    )
    return ((r < 35) & (r >= 35 - width)).float()


@pytest.mark.parametrize("width", [2, 8, 24])
def test_stroke_width_is_measured_and_normalised_to_mnist(width):
    x = ring(width)
    assert P.stroke_width(x) == pytest.approx(width, rel=0.25)
    y = P.normalize_stroke(x)
    assert P.STROKE_RANGE[0] <= P.stroke_width(y) <= P.STROKE_RANGE[1]
    if P.STROKE_RANGE[0] <= width <= P.STROKE_RANGE[1]:
        assert y.equal(x)  # usual widths are left alone
    if width < P.STROKE_RANGE[0]:
        assert y.shape[0] > x.shape[0]  # outer strokes thicken outwards too


def test_bold_and_light_fonts_get_similar_strokes():
    light, heavy = P.mnist_style(digit(5, stroke=0)), P.mnist_style(digit(5, size=96, stroke=6))
    assert 0.7 < heavy.float().sum() / light.float().sum() < 1.4


def test_place_centres_the_centre_of_mass():
    x = torch.zeros(20, 12)
    x[:, :3] = 1.0  # an "L": mass sits left and low
    x[-3:, :] = 1.0
    out = P.place(x)
    assert out.shape == (28, 28) and out.sum() == x.sum()
    r, c = P.centre_of_mass(out)
    assert abs(r - 14) <= 0.5 and abs(c - 14) <= 0.5
    boxed = P.place(torch.ones(20, 10), by_mass=False)
    assert torch.nonzero(boxed)[:, 1].min() == 9 and torch.nonzero(boxed)[:, 0].min() == 4
    lopsided = torch.zeros(20, 20)
    lopsided[0, 0] = 1.0  # centring would push it out: it stays inside, whole
    assert P.place(lopsided).sum() == 1.0


def test_mnist_style_does_not_depend_on_size_or_position():
    a = P.mnist_style(digit(4, size=96, dx=-10, dy=12))
    b = P.mnist_style(digit(4, size=40, dx=30, dy=-30))
    assert a.dtype == torch.uint8 and a.shape == (28, 28)
    rows, cols = torch.nonzero(a).T
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 == 20
    r, c = P.centre_of_mass(a.float())
    assert abs(r - 14) <= 0.5 and abs(c - 14) <= 0.5
    assert (a.float() - b.float()).abs().mean() < 20  # same digit, different rendering resolution


def test_model_input_one_channel_pads_or_resizes_the_mnist_style_digit():
    image = digit(3)
    styled = P.mnist_style(image)[None, None]
    x = P.model_input(image, meta())
    assert x.shape == (1, 32, 32)
    assert torch.allclose(x, scale_input(to_32(styled, "pad"), "standard", (0.1,), (0.3,))[0])
    assert torch.allclose(
        P.model_input(image, meta(resize="resize")), scale_input(to_32(styled, "resize"), "standard", (0.1,), (0.3,))[0]
    )
    assert P.model_input(image.convert("L"), meta()).equal(x)  # grayscale or RGB input, same result


def test_model_input_three_channels_is_rgb_resized_to_32():
    photo = Image.new("RGB", (64, 48), (255, 0, 0))
    photo.paste((0, 0, 255), (0, 0, 32, 48))  # left half blue
    x = P.model_input(photo, meta("cifar10", channels=3))
    assert x.shape == (3, 32, 32)
    assert x[2, 16, 0] > x[0, 16, 0] and x[0, 16, 31] > x[2, 16, 31]  # stretched, not cropped
    gray = P.model_input(
        Image.new("L", (10, 10), 128), meta("cifar10", channels=3)
    )  # 1-channel picture, 3-channel model
    assert gray.shape == (3, 32, 32) and torch.allclose(gray[0], gray[2])


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "gif", "tiff", "webp"])
def test_reads_any_format_pillow_reads(tmp_path, ext):
    path = tmp_path / f"seven.{ext}"
    digit(7, ink=(120, 20, 20)).save(path)
    styled = P.mnist_style(P.load_image(path))
    assert (styled.float() - P.mnist_style(digit(7, ink=(120, 20, 20))).float()).abs().mean() < 8


# --- errors ----------------------------------------------------------------------------------


def test_unreadable_empty_and_missing_images(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="empty"):
        P.load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        P.load_image(tmp_path / "junk.png")
    with pytest.raises(ImageError, match="no such file"):
        P.expand_paths([tmp_path / "missing.png"])
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("7")
    with pytest.raises(ImageError, match="no image files"):
        P.expand_paths([tmp_path / "texts"])


@pytest.mark.parametrize("colour", [255, 0, 128])
def test_blank_image_has_no_ink(tmp_path, ckpt_file, colour):
    noise = np.random.default_rng(0).normal(colour, 4, (64, 64)).clip(0, 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "blank.png")
    with pytest.raises(ImageError, match=r"blank\.png: no ink found"):
        P.predict_images(load_checkpoint(ckpt_file), [tmp_path / "blank.png"])


def test_checkpoint_errors(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        P.open_checkpoint(tmp_path / "nope.pt")
    url = f"sqlite:///{tmp_path / 'digits.db'}"
    with pytest.raises(StorageError, match=r"no study database at .*digits.db; run `python -m lenet_hpo search`"):
        P.open_checkpoint(study="digits", url=url, studies_dir=tmp_path)
    stored_study(url, "digits")
    with pytest.raises(CheckpointError, match=r"run `python -m lenet_hpo retrain-best --study digits` first"):
        P.open_checkpoint(study="digits", url=url, studies_dir=tmp_path)
    write_checkpoint(tmp_path / "fashion.pt", dataset="fashion-mnist")
    with pytest.raises(CheckpointError, match="trained on fashion-mnist, but --dataset asks for mnist"):
        P.open_checkpoint(tmp_path / "fashion.pt", dataset="mnist")
    blob = torch.load(tmp_path / "fashion.pt", weights_only=True)
    del blob["data"]["mean"]
    torch.save(blob, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="lacks data.mean"):
        P.open_checkpoint(tmp_path / "old.pt")


def test_study_model_must_match_the_study_dataset(tmp_path):
    url = f"sqlite:///{tmp_path / 'digits.db'}"
    retrain = retrain_dir(stored_study(url, "digits"), tmp_path)
    retrain.mkdir(parents=True)
    write_checkpoint(retrain / "best-seed0.pt", dataset="fashion-mnist")
    (tmp_path / "digits.toml").write_text('[study]\ndataset = "mnist"\n')
    with pytest.raises(CheckpointError, match="trained on fashion-mnist, but study 'digits' used mnist"):
        P.open_checkpoint(study="digits", url=url, studies_dir=tmp_path)
    (tmp_path / "digits.toml").write_text('[study]\ndataset = "fashion-mnist"\n')
    assert P.open_checkpoint(study="digits", url=url, studies_dir=tmp_path)[0] == retrain / "best-seed0.pt"


def test_best_retrained_is_the_lowest_seed_of_this_very_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'mnist.db'}"
    retrain = retrain_dir(stored_study(url, "mnist"), tmp_path)
    retrain.mkdir(parents=True)
    for name in ("best-seed10.pt", "best-seed2.pt", "best-seed3.pt.tmp", "other-seed0.pt"):
        (retrain / name).write_bytes(b"")
    assert P.best_retrained("mnist", url, tmp_path) == retrain / "best-seed2.pt"
    other = f"sqlite:///{tmp_path / 'other.db'}"  # a study of the same name elsewhere has none
    stored_study(other, "mnist")
    with pytest.raises(CheckpointError, match="has no retrained model"):
        P.best_retrained("mnist", other, tmp_path)


def test_three_channel_model_takes_grayscale_and_colour_pictures(tmp_path):
    ckpt = load_checkpoint(write_checkpoint(tmp_path / "cifar.pt", dataset="cifar10", channels=3))
    Image.new("L", (20, 30), 90).save(tmp_path / "gray.png")  # no ink needed: photos are not digits
    digit(2).save(tmp_path / "two.png")
    preds = P.predict_images(ckpt, [tmp_path], top=2)
    assert [p.path.name for p in preds] == ["gray.png", "two.png"]
    assert all(p.label.startswith("class") and len(p.top) == 2 for p in preds)


# --- command line ------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    digit(3).save(folder / "b.png")
    digit(8, ink=WHITE, paper=BLACK).convert("L").save(folder / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    digit(1).save(tmp_path / "one.bmp")
    return tmp_path


def test_directories_expand_to_their_images_sorted(images):
    files = P.expand_paths([images / "one.bmp", images / "digits"])
    assert [f.name for f in files] == ["one.bmp", "a.jpg", "b.png"]


def test_cli_table(capsys, ckpt_file, images):
    code, out, _ = run(capsys, "predict", images / "digits", images / "one.bmp", "--checkpoint", ckpt_file)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"checkpoint: {ckpt_file} (mnist)"
    assert lines[1].split() == ["image", "label", "probability", "top", "3"]
    assert [line.split()[0] for line in lines[2:]] == [str(images / "digits" / n) for n in ("a.jpg", "b.png")] + [
        str(images / "one.bmp")
    ]
    for line in lines[2:]:
        _, label, prob, *top = line.split()
        assert label in DIGITS and prob.endswith("%") and len(top) == 6 and top[0] == label and top[1] == prob


def test_cli_json(capsys, ckpt_file, images):
    code, out, _ = run(capsys, "predict", images / "one.bmp", "--checkpoint", ckpt_file, "--top", "4", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["checkpoint"] == str(ckpt_file) and result["dataset"] == "mnist"
    (pred,) = result["predictions"]
    probs = [t["probability"] for t in pred["top"]]
    assert pred["image"] == str(images / "one.bmp") and len(probs) == 4
    assert pred["label"] == pred["top"][0]["label"] and pred["probability"] == probs[0]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6


def test_cli_uses_the_best_retrained_model_of_the_study(capsys, tmp_path, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "predict", images / "one.bmp")
    assert code == 1 and "no study database at studies/mnist.db" in err
    (tmp_path / "studies").mkdir()
    stored = stored_study("sqlite:///studies/mnist.db", "mnist")
    code, _, err = run(capsys, "predict", images / "one.bmp")
    assert code == 1 and "run `python -m lenet_hpo retrain-best --study mnist` first" in err
    retrain = retrain_dir(stored)
    retrain.mkdir(parents=True)
    write_checkpoint(retrain / "best-seed0.pt")
    code, out, _ = run(capsys, "predict", images / "one.bmp", "--json")
    assert code == 0 and json.loads(out)["checkpoint"] == f"studies/mnist/{stored.key}/retrain/best-seed0.pt"


def test_cli_errors(capsys, tmp_path, ckpt_file, images):
    Image.new("L", (30, 30), 255).save(tmp_path / "white.png")
    for argv, message in [
        (["missing.png"], "missing.png: no such file"),
        ([tmp_path / "white.png"], "white.png: no ink found"),
        ([images / "one.bmp", "--dataset", "cifar10"], "trained on mnist, but --dataset asks for cifar10"),
    ]:
        code, _, err = run(capsys, "predict", *argv, "--checkpoint", ckpt_file)
        assert code == 1 and err.startswith("error: ") and message in err
    code, _, err = run(capsys, "predict", images / "one.bmp", "--checkpoint", tmp_path / "nope.pt")
    assert code == 1 and "checkpoint not found" in err
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(images / "one.bmp"), "--top", "0"])
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="top"):
        P.predict_images(load_checkpoint(ckpt_file), [images / "one.bmp"], top=0)


# --- a trained model reads rendered digits -------------------------------------------------------


@pytest.mark.realdata
def test_briefly_trained_model_reads_rendered_digits(mnist_dir, tmp_path):
    data = load_data("mnist", data_dir=mnist_dir, train_limit=5000, val_size=1000)
    result = train(FAST, data, device="cpu")
    path = save_checkpoint(tmp_path / "mnist.pt", result.model, FAST, data.meta())
    samples = sample_digits(100, FONTS, seed=1)
    preds = P.predict_images(load_checkpoint(path), write_samples(samples, tmp_path / "rendered"), top=1)
    accuracy = np.mean([p.label == str(s.digit) for p, s in zip(preds, samples, strict=True)])
    assert accuracy > 0.6  # chance is 0.1


def test_a_checkpoint_with_nan_weights_is_refused_not_shown_as_nan_percent(tmp_path, images, capsys):
    path = write_checkpoint(tmp_path / "nan.pt")
    blob = torch.load(path, weights_only=True)
    first = next(k for k, v in blob["state_dict"].items() if v.is_floating_point())
    blob["state_dict"][first] = torch.full_like(blob["state_dict"][first], float("nan"))
    torch.save(blob, path)
    code, out, err = run(capsys, "predict", images / "one.bmp", "--checkpoint", path)
    assert code == 1 and "weights are not finite" in err and "nan%" not in out + err


def test_an_image_name_cannot_forge_output_lines(tmp_path, ckpt_file, capsys):
    from shutil import copy

    evil = tmp_path / "evil\nerror: all good, 0 files bad\n.png"
    blank = tmp_path / "blank\nerror: all good\n.png"
    Image.new("L", (28, 28), 0).save(tmp_path / "plain.png")
    copy(tmp_path / "plain.png", blank)
    code, _, err = run(capsys, "predict", blank, "--checkpoint", ckpt_file)  # refused, and named escaped
    assert code == 1 and err.count("\n") == 1 and "blank\\nerror: all good\\n.png: no ink found" in err
    digit = Image.new("L", (28, 28), 0)
    digit.paste(255, (12, 6, 16, 22))  # a stroke: a "1"
    digit.save(evil)
    code, out, _ = run(capsys, "predict", evil, "--checkpoint", ckpt_file)
    assert code == 0 and not any(line.startswith("error: all good") for line in out.splitlines())
    assert "evil\\nerror: all good, 0 files bad\\n.png" in out  # shown escaped
    code, out, _ = run(capsys, "predict", evil, "--checkpoint", ckpt_file, "--json")
    assert json.loads(out)["predictions"][0]["image"] == str(evil)  # JSON keeps the exact name
