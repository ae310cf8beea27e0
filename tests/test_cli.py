import json
import re
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import torch
from fleet import env as fleet_env
from fleet import free_port, write_fleet_study
from PIL import Image

from lenet_hpo.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "lenet_hpo", "--help"], capture_output=True, text=True, check=True)
    listed = re.findall(r"^    (\S+)", proc.stdout.split("COMMAND\n", 1)[1], re.M)  # one line per subcommand
    assert listed == ["data", "train", "search", "dashboard", "retrain-best", "report", "predict"]


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
    code, out, _ = run(
        capsys, "train", "--config", str(cfg), "--dataset", "synthetic", "--device", "cpu", "--out", str(tmp_path),
        "--json",
    )
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


# --- dashboard ------------------------------------------------------------------------------


def serve_dashboard(url, *extra):
    """Start `dashboard` in a process; wait until it lists the studies.  (process, studies, stderr so far)"""
    port = free_port()
    argv = [
        sys.executable, "-m", "lenet_hpo", "dashboard", "--study", "t", "--storage", url, "--port", str(port),
        *extra,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=fleet_env())
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                return proc, json.loads(resp.read())["study_summaries"]
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(f"dashboard did not answer: {proc.communicate()[1][-2000:]}") from None
            time.sleep(0.5)


def stop_dashboard(proc):
    proc.terminate()
    return proc.communicate(timeout=10)[1]


def test_dashboard_serves_the_study_list(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    optuna.create_study(study_name="t", storage=url)
    proc, studies = serve_dashboard(url)
    err = stop_dashboard(proc)
    assert [s["study_name"] for s in studies] == ["t"]
    assert "warning" not in err and "127.0.0.1" in err


def test_dashboard_warns_when_bound_beyond_loopback(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 't.db'}"
    optuna.create_study(study_name="t", storage=url)
    proc, studies = serve_dashboard(url, "--host", "0.0.0.0")
    err = stop_dashboard(proc)
    assert [s["study_name"] for s in studies] == ["t"]  # it serves, on every address
    assert "no authentication" in err and "http://0.0.0.0:" in err
    assert main(["dashboard", "--study", "t", "--storage", f"sqlite:///{tmp_path / 'missing.db'}"]) == 1
    assert "no study database" in capsys.readouterr().err


@pytest.mark.slow
def test_the_dashboard_shows_the_metric_name(tmp_path, chromium):
    """A study page in headless Chromium says val_accuracy, not "Objective 0"."""
    from lenet_hpo.search import run_search
    from lenet_hpo.search.studyfile import load_spec

    study = write_fleet_study(tmp_path, "t")
    url = f"sqlite:///{tmp_path / 't.db'}"
    run_search(load_spec(str(study)), url, 2, workers=1, threads=1, device="cpu")
    proc, studies = serve_dashboard(url)
    port = proc.args[proc.args.index("--port") + 1]
    try:
        exe, flags = chromium
        page = f"http://127.0.0.1:{port}/dashboard/studies/{studies[0]['study_id']}"
        dom = subprocess.run([exe, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        shot = tmp_path / "dashboard.png"
        subprocess.run([exe, *flags, "--window-size=1280,900", f"--screenshot={shot}", page], capture_output=True,
                       timeout=120)
    finally:
        stop_dashboard(proc)
    assert "val_accuracy" in dom and "Objective 0" not in dom
    assert shot.exists() and Image.open(shot).size == (1280, 900)
