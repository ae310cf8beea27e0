"""Bad input: each case ends with a message that says what to do, exit status 1 (or 2
for a bad command-line value), and nothing written or corrupted.

Covered elsewhere and listed in docs/reliability.md: corrupted and truncated dataset
files (test_acquire.py), malformed study files at the library level and unsafe names
(test_space.py), NaN loss in a search (test_search.py, test_train.py), a checkpoint
carrying a pickle payload (test_checkpoint.py).
"""

import contextlib
import socket
import struct
import threading

import optuna
import pytest
from fleet import free_port, write_fleet_study
from optuna.trial import TrialState
from studyfiles import stored_study

from lenet_hpo.cli import main
from lenet_hpo.errors import StudyError
from lenet_hpo.search.space import check_name
from lenet_hpo.search.storage import mask_url
from lenet_hpo.search.studies import best_trials, open_study

PASSWORD = "s3cret-pw"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Work in an empty folder, so anything written there shows."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def written(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix != ".toml")


def search(study, url, *extra):
    return main(
        [
            "search", "--study", str(study), "--trials", "1", "--workers", "1", "--threads", "1", "--device", "cpu",
            "--storage", url, *extra,
        ]
    )


# --- storage -----------------------------------------------------------------------------


def test_unreachable_storage_says_what_to_do_and_hides_the_password(workdir, capsys):
    study = write_fleet_study(workdir, "s")
    url = f"postgresql+psycopg://lenet:{PASSWORD}@127.0.0.1:{free_port()}/lenet_hpo"  # nothing listens there
    assert search(study, url) == 1
    out, err = capsys.readouterr()
    assert "Is the database server running and reachable?" in err and "lenet:***@127.0.0.1" in err
    assert PASSWORD not in out + err
    assert written(workdir) == []


class FakePostgres:
    """Speaks just enough of the PostgreSQL protocol to ask for a password and reject
    it, as a server with password authentication does (the test server trusts everyone)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.passwords: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, struct.error):
                self._reject(conn)

    def _reject(self, conn: socket.socket) -> None:
        def read(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                if not chunk:
                    raise OSError("closed")
                data += chunk
            return data

        while True:  # SSLRequest / GSSENCRequest: answer "no", then the startup message follows
            length, code = struct.unpack("!ii", read(8))
            read(length - 8)
            if code not in (80877103, 80877104):
                break
            conn.sendall(b"N")
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        kind, length = struct.unpack("!ci", read(5))
        self.passwords.append(read(length - 4).rstrip(b"\0").decode())
        fields = b"SFATAL\0VFATAL\0C28P01\0" + b'Mpassword authentication failed for user "lenet"\0' + b"\0"
        conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("command", ["search", "dashboard"])
def test_wrong_password_is_rejected_with_advice_and_never_printed(workdir, capsys, command):
    server = FakePostgres()
    url = f"postgresql+psycopg://lenet:{PASSWORD}@127.0.0.1:{server.port}/lenet_hpo"
    try:
        if command == "search":
            code = search(write_fleet_study(workdir, "s"), url)
        else:
            code = main(["dashboard", "--study", "s", "--storage", url])
    finally:
        server.close()
    out, err = capsys.readouterr()
    assert code == 1
    assert PASSWORD in server.passwords  # the password was sent and refused ...
    assert "password authentication failed" in err and "Check the user and password" in err
    assert PASSWORD not in out + err  # ... and never shown
    assert written(workdir) == []


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("user", "database", "advice"),
    [
        ("nobody", "postgres", 'role "nobody" does not exist'),
        (None, "no_such_db", 'database "no_such_db" does not exist'),
    ],
)
def test_missing_role_or_database_on_a_real_server(postgres_server, workdir, capsys, user, database, advice):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_server).set(database=database, password=PASSWORD, **({"username": user} if user else {}))
    assert search(write_fleet_study(workdir, "s"), url.render_as_string(hide_password=False)) == 1
    out, err = capsys.readouterr()
    assert advice in err and "Create it on the server first" in err
    assert PASSWORD not in out + err


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://u:{PASSWORD}@h:notaport/db",  # unparsable: masked by the fallback
        f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/db?x=1",
        f"redis://u:{PASSWORD}@h/0",  # unsupported backend
    ],
)
def test_odd_urls_are_refused_without_their_password(workdir, capsys, url):
    assert PASSWORD not in mask_url(url)
    assert search(write_fleet_study(workdir, "s"), url) == 1
    out, err = capsys.readouterr()
    assert "error:" in err and PASSWORD not in out + err
    assert written(workdir) == []


@pytest.mark.postgres
def test_a_search_never_prints_the_password_of_its_storage(postgres_url, workdir, capsys):
    """The test server trusts any password, so this search runs; every place that
    shows the storage (first line, summary, next steps, --json) masks it."""
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    study = write_fleet_study(workdir, "s")
    assert search(study, url) == 0
    assert search(study, url, "--json") == 0
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    assert out.count(":***@") >= 1 and ":***@" in err  # the JSON and the start line show it masked
    assert "--storage URL" in out  # the follow-up commands name it instead of showing ***


@pytest.mark.parametrize("password", ["e", "o", "pg"])
def test_a_short_password_is_masked_as_a_field_not_wherever_its_letters_appear(workdir, capsys, password):
    study = write_fleet_study(workdir, "s")
    url = f"postgresql+psycopg://postgres:{password}@127.0.0.1:{free_port()}/x"
    assert search(study, url) == 1
    err = capsys.readouterr().err
    assert "postgres:***@127.0.0.1:" in err and "Connection refused" in err and "reachable?" in err
    assert "***" not in err.replace("postgres:***@", "")  # no letter of the message was masked
    assert written(workdir) == []


def test_a_missing_driver_names_the_one_the_url_asks_for(workdir, capsys):
    study = write_fleet_study(workdir, "s")
    assert search(study, "mysql://u:p@127.0.0.1/x") == 1
    err = capsys.readouterr().err
    assert "Failed to import" in err and "pip install 'mysqlclient'" in err and "psycopg" not in err
    assert "mysql://u:***@127.0.0.1/x" in err and "one.." not in err


def test_an_in_memory_sqlite_storage_is_refused_with_what_to_give_instead(workdir, capsys):
    study = write_fleet_study(workdir, "s")
    assert search(study, "sqlite://") == 1
    err = capsys.readouterr().err
    assert "in-memory SQLite database" in err and "sqlite:///studies/NAME.db" in err and "not supported" not in err


def test_sqlite_folder_that_cannot_be_made(workdir, capsys):
    (workdir / "afile").write_text("")
    assert search(write_fleet_study(workdir, "s"), f"sqlite:///{workdir / 'afile' / 'x.db'}") == 1
    assert "cannot create the folder" in capsys.readouterr().err
    assert written(workdir) == ["afile"]


# --- study files, names and command-line values ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[study\n", "not valid TOML"),
        ('[study]\nepochs = "two"\n', "study.epochs: expected a non-negative integer"),
        ('[study]\ndataset = "imagenet"\n', "study.dataset: 'imagenet' is not a built-in dataset"),
        ("[space]\nc1 = { low = 8, high = 4 }\n", "space.c1: low 8 is above high 4"),
        ("[space]\nwidth = { low = 1, high = 2 }\n", "unknown key space.width"),
        ("[sampler]\nname = 'annealing'\n", "sampler.name"),
    ],
)
def test_malformed_study_file_names_file_and_key_and_writes_nothing(workdir, capsys, text, message):
    bad = workdir / "bad.toml"
    bad.write_text(text)
    assert main(["search", "--study", str(bad), "--trials", "1"]) == 1
    err = capsys.readouterr().err
    assert "bad.toml" in err and message in err
    assert written(workdir) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "--trials", "-1"], "out of range"),
        (["search", "--trials", "0"], "out of range"),
        (["search", "--trials", "x"], "expected an integer"),
        (["search", "--workers", "0"], "out of range"),
        (["search", "--timeout", "-5"], "out of range"),
        (["search", "--seed", "-1"], "out of range"),
        (["search", "--trials", "0", "--storage", "sqlite:///x.db"], "out of range"),
        (["search", "--trials", "1e3"], "expected an integer"),
        (["search", "--workers", "x"], "expected an integer"),
        (["search", "--threads", "0"], "out of range"),
        (["search", "--heartbeat", "0"], "out of range"),
        (["search", "--heartbeat", "1.5"], "expected an integer"),
        (["search", "--timeout", "soon"], "expected a number"),
        (["search", "--timeout", "nan"], "out of range"),
        (["dashboard", "--port", "70000"], "out of range"),
        (["dashboard", "--port", "http"], "expected an integer"),
        (["train", "--epochs", "0"], "out of range"),
        (["train", "--epochs", "two"], "expected an integer"),
        (["train", "--dataset", "svhn"], "unknown dataset"),
        (["train", "--seed", "-3"], "out of range"),
        (["data", "--dataset", "imagenet"], "unknown dataset"),
        (["data", "--per-class", "0"], "out of range"),
        (["retrain-best", "--seeds", "1"], "out of range"),
        (["retrain-best", "--top-k", "0"], "out of range"),
        (["retrain-best", "--workers", "zero"], "expected an integer"),
        (["retrain-best", "--epochs", "0"], "out of range"),
        (["retrain-best", "--precision", "fp8"], "invalid choice"),
        (["report", "--threads", "0"], "out of range"),
        (["predict", "x.png", "--top", "0"], "out of range"),
        (["predict", "x.png", "--dataset", "svhn"], "unknown dataset"),
    ],
)
def test_bad_command_line_values_exit_2_before_anything_is_written(workdir, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert written(workdir) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--dataset", "synthetic", "--epochs", "1", "--out", "taken"],
        ["train", "--dataset", "synthetic", "--epochs", "1"],  # the default folder, runs/, is a file here
        ["data", "--dataset", "synthetic", "--export", "taken"],
        ["report", "--study", "s", "--out", "taken"],
        ["data", "--dataset", "synthetic", "--export", "taken/inside"],
    ],
)
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(workdir, capsys, argv):
    (workdir / "taken").write_text("keep me")
    (workdir / "runs").write_text("keep me too")
    code = None
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder; give a folder" in err and "Traceback" not in err
    assert written(workdir) == ["runs", "taken"]
    assert (workdir / "taken").read_text() == "keep me"


def test_retrain_best_without_a_baseline_is_refused_before_any_work(workdir, capsys):
    assert main(["retrain-best", "--study", "s", "--baselines", ","]) == 2
    assert "baselines: name at least one" in capsys.readouterr().err
    assert written(workdir) == []


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "/etc/passwd"])
def test_study_and_report_names_with_path_parts(workdir, capsys, name):
    with pytest.raises(StudyError, match="report name .* is not allowed"):
        check_name(name, what="report")
    assert main(["dashboard", "--study", name]) == 1
    assert "not allowed" in capsys.readouterr().err
    assert written(workdir) == []


# --- training and results -------------------------------------------------------------------


def test_nan_loss_in_train_says_lower_the_learning_rate(workdir, capsys):
    cfg = workdir / "hot.json"
    cfg.write_text('{"activation": "relu", "momentum": 0.99, "lr": 10.0, "epochs": 3}')
    assert (
        main(
            ["train", "--config", str(cfg), "--dataset", "synthetic", "--device", "cpu", "--out", str(workdir / "runs")]
        )
        == 1
    )
    assert "diverged: the loss became NaN/inf in epoch 1; lower the learning rate" in capsys.readouterr().out


def test_a_study_where_every_trial_failed_explains_itself(workdir):
    url = f"sqlite:///{workdir / 'f.db'}"
    study = optuna.create_study(study_name="f", storage=url, direction="maximize")
    for state in (TrialState.FAIL, TrialState.FAIL, TrialState.PRUNED):
        study.tell(study.ask(), state=state)
    with pytest.raises(StudyError) as exc:
        best_trials(open_study("f", url).study)
    message = str(exc.value)
    assert "study 'f' has no completed trial (1 pruned, 2 failed, 0 running)" in message
    assert "python -m lenet_hpo search --study f" in message
    with pytest.raises(StudyError, match="no study 'g' .*studies there: f"):
        open_study("g", url)


def test_a_dashboard_on_a_port_in_use_says_so_instead_of_a_traceback(workdir, capsys):
    url = f"sqlite:///{workdir / 's.db'}"
    stored_study(url, "s")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["dashboard", "--study", "s", "--storage", url, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "Give another --port" in err and "Traceback" not in err


def test_a_read_only_sqlite_study_is_refused_with_advice_and_left_as_it_was(workdir, capsys):
    study = write_fleet_study(workdir, "s")
    url = f"sqlite:///{workdir / 's.db'}"
    assert search(study, url) == 0
    before = [(t.number, t.state) for t in optuna.load_study(study_name="s", storage=url).trials]
    capsys.readouterr()
    read_only = f"sqlite:///file:{workdir / 's.db'}?mode=ro&uri=true"  # what a read-only file is, even for root
    assert main(["search", "--study", str(study), "--trials", "3", "--workers", "1", "--device", "cpu",
                 "--storage", read_only]) == 1
    err = capsys.readouterr().err
    assert "attempt to write a readonly database. A read-only file or database?" in err and "Traceback" not in err
    assert [(t.number, t.state) for t in optuna.load_study(study_name="s", storage=url).trials] == before
