import json
import subprocess
import sys

import torch

from lenet_hpo.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "lenet_hpo", "--help"], capture_output=True, text=True, check=True)
    for command in ("data", "train"):
        assert command in proc.stdout


def test_bad_config_file_and_name(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": -1}')
    code, _, err = run(capsys, "train", "--config", str(bad), "--dataset", "synthetic", "--out", str(tmp_path))
    assert code == 2 and "lr: -1" in err and "bad.json" in err
    code, _, err = run(capsys, "train", "--config", "nope", "--dataset", "synthetic", "--out", str(tmp_path))
    assert code == 2 and "cannot read config file" in err
    assert not list(tmp_path.glob("*.pt"))


def test_train_json_and_checkpoint(capsys, tmp_path):
    cfg = tmp_path / "fast.json"
    cfg.write_text(json.dumps({"activation": "relu", "pooling": "max", "optimizer": "adam", "lr": 0.003, "epochs": 2}))
    code, out, _ = run(capsys, "train", "--config", str(cfg), "--dataset", "synthetic", "--device", "cpu", "--out", str(tmp_path), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["test_accuracy"] > 0.8 and summary["params"] == 61_706
    assert len(summary["history"]) == 2 and summary["seconds"] > 0
    blob = torch.load(summary["checkpoint"], weights_only=True)
    assert blob["config"]["optimizer"] == "adam" and blob["data"]["dataset"] == "synthetic"


def test_train_epochs_override_and_text_output(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--dataset", "synthetic", "--epochs", "1", "--out", str(tmp_path))
    assert code == 0 and "test accuracy" in out and "checkpoint:" in out
    assert (tmp_path / "baseline-synthetic-seed0.pt").exists()


def test_data_command_synthetic(capsys):
    code, out, _ = run(capsys, "data", "--dataset", "synthetic", "--json")
    assert code == 0 and json.loads(out)["n_test"] == 500
