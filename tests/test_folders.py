"""Your own images: a folder of class subfolders as a dataset, end to end, and every bad input."""

import json
import os
import shutil
import warnings

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from studyfiles import write_study

from lenet_hpo.acquire import make_synthetic
from lenet_hpo.cli import main
from lenet_hpo.data import load_data
from lenet_hpo.errors import DataError, StudyError
from lenet_hpo.folders import MIN_PER_CLASS, FolderOptions, cache_folder, load_folder
from lenet_hpo.search import run_search
from lenet_hpo.search.studies import study_record
from lenet_hpo.search.studyfile import load_spec

CLASSES = ["alpha", "beta", "gamma", "delta"]  # written unsorted: the class order is sorted()


def write_folder(root, per_class=20, *, rgb=False, seed=0):
    """Synthetic class patterns as files: PNG and JPEG, sizes 24 to 64 px, L and RGB modes."""
    raw = make_synthetic(n_train=per_class * 10, n_test=10, seed=seed)
    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        images = raw["train_x"][raw["train_y"] == k][:per_class, 0].numpy()
        for i, a in enumerate(images):
            size = int(rng.integers(24, 65))
            img = Image.fromarray(a).resize((size, size if i % 3 else size // 2 + 8))
            if rgb and i % 2:
                img = Image.merge("RGB", (img, img.point(lambda v: v // 2), img))
            elif i % 2:
                img = img.convert("RGB")  # grey content in RGB mode: still grayscale
            img.save(root / name / f"{i:03d}.{'png' if i % 4 else 'jpg'}")
    (root / "alpha" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "symbols")


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_a_folder_is_a_dataset_with_sorted_classes_and_a_held_out_test_split(folder, tmp_path):
    data = load_data(str(folder), data_dir=tmp_path / "data")
    assert data.classes == tuple(sorted(CLASSES)) and data.channels == 1 and data.name == "symbols"
    assert data.train.x.shape[1:] == (1, 32, 32) and data.train.x.dtype == torch.uint8
    assert len(data.test) == 16 and len(data.val) + len(data.train) == 64  # 20% held out, then 20% validation
    counts = data.counts()
    assert all(n == 4 for n in counts["test"].values())  # stratified
    src = data.meta()["source"]
    assert src["not_images"] == 1 and src["skipped"] == [] and src["path"] == str(folder.resolve())
    again = load_data(str(folder), data_dir=tmp_path / "data", split_seed=1)
    assert torch.equal(again.test.x, data.test.x)  # held out once: the study's split seed does not move it


def test_decoded_once_then_cached_and_any_change_decodes_again(folder, tmp_path):
    data_dir = tmp_path / "data"
    first = load_folder(folder, FolderOptions(), data_dir)
    cache = cache_folder(data_dir, folder.resolve()) / "tensors.pt"
    stamp = cache.stat().st_mtime_ns
    second = load_folder(folder, FolderOptions(), data_dir)
    assert cache.stat().st_mtime_ns == stamp and second.checksum == first.checksum  # read, not decoded
    Image.new("L", (30, 30), 200).save(folder / "beta" / "005.png")  # edited
    edited = load_folder(folder, FolderOptions(), data_dir)
    assert edited.checksum != first.checksum and cache.stat().st_mtime_ns != stamp
    (folder / "gamma" / "001.png").unlink()
    assert load_folder(folder, FolderOptions(), data_dir).checksum not in (first.checksum, edited.checksum)
    assert load_folder(folder, FolderOptions(resize="stretch"), data_dir).checksum != edited.checksum  # options count


def test_train_and_test_subfolders_are_the_splits(tmp_path):
    write_folder(tmp_path / "set" / "train", per_class=15)
    write_folder(tmp_path / "set" / "test", per_class=10, seed=1)
    data = load_data(str(tmp_path / "set"), data_dir=tmp_path / "data")
    assert len(data.test) == 40 and len(data.train) + len(data.val) == 60
    assert data.meta()["source"]["layout"] == "train/ and test/ subfolders"


def test_colour_images_make_an_rgb_dataset_unless_told_otherwise(tmp_path):
    folder = write_folder(tmp_path / "colour", rgb=True)
    assert load_data(str(folder), data_dir=tmp_path / "data").channels == 3
    gray = load_data(str(folder), data_dir=tmp_path / "data", folder=FolderOptions(channels=1))
    assert gray.channels == 1


def test_pad_keeps_the_aspect_ratio_and_stretch_fills_the_square(tmp_path):
    folder = tmp_path / "bars"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(MIN_PER_CLASS):
            Image.new("L", (64, 16), 255).save(folder / name / f"{i}.png")  # a white 4:1 bar on black
            img = Image.new("L", (64, 32), 0)
            img.paste(255, (0, 8, 64, 24))
            img.save(folder / name / f"{i}b.png")
    padded = load_folder(folder, FolderOptions(resize="pad"), tmp_path / "d").tensors["train_x"]
    stretched = load_folder(folder, FolderOptions(resize="stretch"), tmp_path / "d").tensors["train_x"]
    assert padded[0, 0, 12:20].float().mean() > 250  # the bar, 8 rows high in the middle
    bar = padded[1, 0]  # the bar drawn on black: padded with its border's black
    assert bar[:8].max() == 0 and bar[24:].max() == 0 and bar[12:20].float().mean() > 250
    assert stretched[0, 0].float().mean() > 250  # stretched over the whole square


def test_cli_data_json_summary(folder, tmp_path, capsys):
    argv = ["data", "--dataset", str(folder), "--data-dir", str(tmp_path / "data"), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"] == sorted(CLASSES) and out["channels"] == 1 and len(out["checksum"]) == 64
    assert out["counts"]["test"] == dict.fromkeys(sorted(CLASSES), 4)
    assert out["source"]["skipped"] == [] and out["source"]["not_images"] == 1
    assert main(argv[:-1]) == 0
    text = capsys.readouterr().out
    assert "1 file(s) that are not images ignored" in text and "alpha" in text.splitlines()[-4]


# --- bad input: each says what is wrong and writes nothing ---------------------------------------------


def refused(folder, tmp_path, message, **options):
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=message):
        load_data(str(folder), data_dir=data_dir, folder=FolderOptions(**options))
    assert listing(data_dir) == []  # no cache, no manifest


def test_a_folder_that_does_not_exist(tmp_path, capsys):
    message = "unknown dataset '.*nowhere': .*there is no folder .*nowhere; give a folder with one subfolder"
    refused(tmp_path / "nowhere", tmp_path, message)
    with pytest.raises(SystemExit) as exc:
        main(["data", "--dataset", str(tmp_path / "nowhere")])
    assert exc.value.code == 2 and "or give a folder of images" in capsys.readouterr().err


def test_no_class_subfolders_or_only_one_class(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "x.png")
    refused(tmp_path / "flat", tmp_path, "no class subfolders; a dataset needs a subfolder of images for each of at")
    (tmp_path / "one" / "only").mkdir(parents=True)
    refused(tmp_path / "one", tmp_path, "one class \\('only'\\)")


def test_a_class_with_too_few_images_is_named(folder, tmp_path):
    for p in sorted((folder / "gamma").glob("*"))[3:]:
        p.unlink()
    refused(folder, tmp_path, f"every class needs at least {MIN_PER_CLASS} images; 'gamma' has 3")


def test_unreadable_images_are_named_and_can_be_skipped(folder, tmp_path):
    for i in range(12):
        (folder / "beta" / f"broken{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = (folder / "delta" / "001.png").read_bytes()
    (folder / "delta" / "001.png").write_bytes(data[: len(data) // 2])  # truncated
    refused(folder, tmp_path, r"13 image file\(s\) cannot be read: beta/broken00.png .*; and 3 more\. .*--skip-bad")
    ok = load_data(str(folder), data_dir=tmp_path / "data", folder=FolderOptions(skip_bad=True))
    assert len(ok.meta()["source"]["skipped"]) == 13 and "delta/001.png" in " ".join(ok.meta()["source"]["skipped"])
    assert len(ok.train) + len(ok.val) + len(ok.test) == 80 - 1


def test_too_large_or_too_many_images_are_refused(folder, tmp_path):
    Image.new("L", (7000, 7000)).save(folder / "alpha" / "huge.png")
    refused(folder, tmp_path, r"alpha/huge.png \(7000x7000 pixels, more than 40,000,000: shrink it first\)")
    (folder / "alpha" / "huge.png").unlink()
    Image.new("1", (10_000, 10_000)).save(folder / "alpha" / "bomb.png")  # past PIL's own warning limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw DecompressionBombWarning reaches the user
        refused(folder, tmp_path, r"alpha/bomb.png \(10000x10000 pixels")
        ok = load_data(str(folder), data_dir=tmp_path / "data", folder=FolderOptions(skip_bad=True))
    skipped = ["alpha/bomb.png (10000x10000 pixels, more than 40,000,000: shrink it first)"]
    assert ok.meta()["source"]["skipped"] == skipped
    (folder / "alpha" / "bomb.png").unlink()
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(DataError, match=r"80 images would take more than 0 MiB decoded \(32x32 each\); use a subset"):
        load_folder(folder, FolderOptions(), tmp_path / "data", max_bytes=1000)
    assert listing(tmp_path / "data") == []


# --- everything downstream -------------------------------------------------------------------------------------


def test_search_retrain_report_and_predict_on_a_folder(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    studies = tmp_path / "studies"
    studies.mkdir()
    path = write_study(
        studies, "symbols",
        study={"dataset": "../symbols", "epochs": 2, "val_size": 0.25, "report_at": [0.5], "val_subset": 8},
        sampler={"name": "random", "seed": 0}, pruner={"name": "none"},
        fixed={"activation": "relu", "optimizer": "adam", "lr": 0.003}, space={"c1": {"low": 4, "high": 8}},
    )
    spec = load_spec(str(path))
    assert spec.dataset_location == str(folder.resolve())  # relative to the study file
    url = f"sqlite:///{studies / 'symbols.db'}"
    summary = run_search(spec, url, 3, workers=1, threads=1, device="cpu")
    assert summary.n_complete == 3
    assert study_record(optuna.storages.RDBStorage(url), "symbols")["data"]["classes"] == sorted(CLASSES)
    assert main(["retrain-best", "--study", "symbols", "--storage", url, "--seeds", "2", "--epochs", "2",
                 "--device", "cpu", "--workers", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"]["classes"] == sorted(CLASSES) and result["best"]["params"] > 0
    assert main(["report", "--study", "symbols", "--storage", url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    with open(report["html"]) as page:
        assert "gamma" in page.read()  # class names on the confusion matrix and the gallery
    assert main(["predict", str(folder / "beta"), "--study", "symbols", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert {p["label"] for p in predictions} <= set(CLASSES) and len(predictions) == 20
    assert sum(p["label"] == "beta" for p in predictions) > 10  # well above chance (5 of 20)


def test_a_study_refuses_to_go_on_when_its_images_changed_and_says_which(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path, "s", study={"dataset": "symbols", "epochs": 1, "val_size": 0.25},
                       pruner={"name": "none"}, space={"c1": {"low": 4, "high": 8}})
    url = f"sqlite:///{tmp_path / 's.db'}"
    run_search(load_spec(str(path)), url, 1, workers=1, threads=1, device="cpu")
    Image.new("L", (30, 30), 99).save(folder / "beta" / "002.png")
    (folder / "gamma" / "new.png").write_bytes((folder / "gamma" / "001.png").read_bytes())
    with pytest.raises(StudyError, match=r"other data: in .*symbols, files 1 changed \(beta/002.png\); 1 added"):
        run_search(load_spec(str(path)), url, 2, workers=1, threads=1, device="cpu")
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 1  # nothing written to the study


def test_study_file_errors_for_folders(tmp_path):
    bad = write_study(tmp_path, "b", study={"dataset": "no-such-folder"})
    with pytest.raises(StudyError, match="'no-such-folder' is not a built-in dataset .* is not a folder"):
        load_spec(str(bad))
    bad = write_study(tmp_path, "c", study={"dataset": "mnist", "channels": 3})
    with pytest.raises(StudyError, match="study.channels: only for a folder dataset"):
        load_spec(str(bad))
    os.makedirs(tmp_path / "imgs")
    bad = write_study(tmp_path, "d", study={"dataset": "imgs", "resize": "crop"})
    with pytest.raises(StudyError, match="study.resize: 'crop' is not one of"):
        load_spec(str(bad))
