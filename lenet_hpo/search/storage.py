"""Study storage: Optuna's RDB storage on an SQLite file or PostgreSQL.

- SQLite (the default, `studies/<name>.db`): a long lock timeout so parallel
  workers wait for each other instead of failing with "database is locked".
- PostgreSQL (`postgresql+psycopg://user:pass@host/db`): for workers on many
  machines; `pool_pre_ping` reconnects after a dropped connection.
- Heartbeats: a worker that dies mid-trial leaves its trial RUNNING only until
  the grace period passes; then it is marked FAIL and retried with the same
  params (`RetryHeartbeatStaleTrialCallback`).  A heartbeat that fails (dropped
  connection) is logged and tried again at the next interval.
- PostgreSQL: the tables are created under an advisory lock, so workers started
  on an empty database at the same moment do not race on CREATE TABLE.
- Passwords never leave this module unmasked: print `mask_url(url)`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url

from lenet_hpo.errors import StorageError, experimental_used_knowingly
from lenet_hpo.files import studies_dir as default_studies_dir

log = logging.getLogger(__name__)
STORAGE_ENV = "LENET_HPO_STORAGE"
SQLITE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Heartbeat:
    interval: int = 10  # seconds between a running trial's heartbeats
    grace: int = 60  # a RUNNING trial silent this long is failed and retried
    max_retry: int = 3  # retries of one failed trial's params


DEFAULT_HEARTBEAT = Heartbeat()


def default_url(study_name: str, studies_dir: Path | None = None) -> str:
    return f"sqlite:///{(studies_dir or default_studies_dir()) / f'{study_name}.db'}"


def resolve_url(url: str | None, study_name: str) -> str:
    """--storage, else $LENET_HPO_STORAGE, else the study's SQLite file."""
    return url or os.environ.get(STORAGE_ENV) or default_url(study_name)


def storage_url(study_name: str, url: str | None = None) -> str:
    """A study's storage URL: `url`, else $LENET_HPO_STORAGE, else its SQLite file in studies/."""
    return resolve_url(url, study_name)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without its credentials part
        head, _, tail = url.rpartition("@")
        return f"{head.split('://')[0]}://***@{tail}" if head else url


def storage_identity(url: str) -> str:
    """The storage as one text whichever way its URL was written: an SQLite file by its absolute
    path; a server's URL without its password."""
    path = sqlite_path(url)
    if path is not None:
        return f"sqlite:///{path.expanduser().resolve()}"
    return make_url(url).set(password=None).render_as_string(hide_password=False)


def check_url(url: str) -> sqlalchemy.URL:
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001
        raise StorageError(
            f"storage URL {mask_url(url)!r} is not a database URL; use sqlite:///path.db or"
            " postgresql+psycopg://user:password@host:5432/dbname"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(f"storage backend {parsed.get_backend_name()!r} is not supported; use sqlite or postgresql")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StorageError(
            f"storage {mask_url(url)!r} is an in-memory SQLite database, gone when the search ends and not shared"
            " with its workers; give a file: sqlite:///studies/NAME.db"
        )
    return parsed


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def open_storage(url: str, *, heartbeat: Heartbeat | None = DEFAULT_HEARTBEAT, create: bool = True) -> RDBStorage:
    """Connect (creating an SQLite file's folder when `create`); errors are masked and say what to do."""
    parsed = check_url(url)
    engine_kwargs: dict[str, object] = {}
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.exists():
            raise StorageError(f"no study database at {path}; run `python -m lenet_hpo search` first")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the folder for {path} ({exc.strerror}); give --storage a path in a writable folder"
            ) from None
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    kwargs: dict[str, object] = {"engine_kwargs": engine_kwargs}
    with experimental_used_knowingly():  # heartbeats
        if heartbeat is not None:
            kwargs |= {
                "heartbeat_interval": heartbeat.interval,
                "grace_period": heartbeat.grace,
                "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry),
            }
        try:
            with _schema_lock(url):
                return _Storage(url, **kwargs)  # type: ignore[arg-type]
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError) as exc:
            raise StorageError(f"cannot open storage {mask_url(url)}: {failure_reason(exc, url)}") from None


class _Storage(RDBStorage):
    """Optuna's RDB storage with a heartbeat that outlives a dropped connection.

    Optuna's heartbeat thread ends at the first exception, so one failed beat would
    leave a live trial silent until another worker fails it as stale.  Here a failed
    beat is logged and the next one (on a fresh connection) goes ahead.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            log.warning(
                "heartbeat of trial id %d failed (%s); retrying at the next interval", trial_id, type(exc).__name__
            )


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Hold a database-wide lock while Optuna creates its tables, so processes that start
    together on an empty database create them once: an advisory lock on PostgreSQL, a
    file lock beside an SQLite file."""
    path = sqlite_path(url)
    if path is not None:
        fd = os.open(f"{path}.schema.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock
        return
    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


# The package that gives SQLAlchemy each driver (its default for a bare backend name first).
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "mysqldb": "mysqlclient",
                   "pymysql": "pymysql", "mysqlconnector": "mysql-connector-python", "asyncpg": "asyncpg"}


def mask_password(text: str, url: str) -> str:
    """`text` with the URL's password field masked wherever the URL or a `password=` item shows
    it; the password's letters elsewhere are left alone (masking every occurrence of a short
    password would mangle the text and reveal the password by what it hides)."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: nothing parsed to mask
        return text
    if not parsed.password:
        return text
    secret = str(parsed.password)
    text = text.replace(url, mask_url(url))
    for shown in (f":{secret}@", f":{quote(secret, safe='')}@"):
        text = text.replace(shown, ":***@")
    return re.sub(rf"(password\s*=\s*['\"]?){re.escape(secret)}(?=['\"\s]|$)", r"\1***", text)


def failure_reason(exc: BaseException, url: str) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    parsed = make_url(url)
    text = mask_password(text, url).rstrip(". ")
    if "password authentication failed" in text:
        return f"{text}. Check the user and password in the URL (or $LENET_HPO_STORAGE)."
    if "does not exist" in text and ("database" in text or "role" in text):
        return (
            f"{text}. Create it on the server first (createuser / createdb, or `make db` with Docker), or fix the URL."
        )
    if "Connection refused" in text or "could not connect" in text or "timeout" in text.lower():
        return f"{text}. Is the database server running and reachable? (`make up` starts one with Docker)"
    if isinstance(exc, ImportError):
        driver = parsed.get_driver_name()
        package = DRIVER_PACKAGES.get(driver, driver)
        return f"{text}. Install the driver {driver!r} that the URL asks for: pip install '{package}'"
    return text


# --- a study-wide lock: claiming a trial is atomic across workers and machines -------------


def _advisory_key(name: str) -> int:
    return zlib.crc32(f"lenet-hpo:{name}".encode()) - 2**31


SCHEMA_LOCK_KEY = _advisory_key("*schema*")  # "*" cannot occur in a study name


class ClaimLock:
    """Mutual exclusion for "count trials, then start one".

    SQLite: an advisory file lock next to the database (one machine).
    PostgreSQL: a session advisory lock keyed by the study name (many machines);
    it is released by the server if the holder's connection dies.
    """

    def __init__(self, url: str, study_name: str) -> None:
        self._path = sqlite_path(url)
        self._fd: int | None = None
        self._conn: sqlalchemy.Connection | None = None
        self._engine: sqlalchemy.Engine | None = None
        self._key = _advisory_key(study_name)
        backend = make_url(url).get_backend_name()
        if self._path is None and backend == "postgresql":
            self._engine = sqlalchemy.create_engine(url, pool_pre_ping=True, poolclass=sqlalchemy.pool.NullPool)
        elif self._path is None:
            raise StorageError(f"parallel search on {backend} storage is not supported; use SQLite or PostgreSQL")

    def acquire(self) -> None:
        if self._path is not None:
            self._fd = os.open(f"{self._path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        else:
            assert self._engine is not None
            conn = self._engine.connect()
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    @property
    def held(self) -> bool:
        return self._fd is not None or self._conn is not None

    def release(self) -> bool:
        """Idempotent: safe to call when not held.  False when the lock was lost while
        held (PostgreSQL: the connection dropped, so the server had released it)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is None:
            return True
        conn, self._conn = self._conn, None
        try:
            return bool(conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key}).scalar())
        except sqlalchemy.exc.SQLAlchemyError:
            return False
        finally:
            with suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.close()

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()
