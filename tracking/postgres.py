"""PostgreSQL backend for the team tracking server: connection settings, database creation, a throw-away cluster.

* ``pg_uri_from_env()``: the backend URI ``postgresql+psycopg://USER@HOST:PORT/DB`` from the environment
  (``PIPELINE_PG_URI``, else the libpq variables ``PGHOST``/``PGPORT``/``PGUSER``/``PGPASSWORD``/``PGDATABASE``;
  defaults in ``DEFAULTS``).
* ``ensure_database(uri)``: ``CREATE DATABASE`` when it is missing (through the ``postgres`` maintenance database).
* ``split_password(uri)``: the URI without its password + the password, so a server gets the password through
  ``PGPASSWORD`` in its environment instead of on its command line (where ``ps`` shows it).
* ``TempCluster``: Debian's ``initdb``/``pg_ctl`` (``/usr/lib/postgresql/<version>/bin``) in a temp folder on a free
  loopback port, as an unprivileged user (``runuser -u postgres --`` when we are root), password auth only;
  stopped and removed on ``stop()``/exit. For tests and CI, never for data anyone wants to keep.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

DEFAULTS = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "mlflow", "PGDATABASE": "mlflow"}
DRIVER = "postgresql+psycopg"


class PostgresError(RuntimeError):
    """PostgreSQL cannot be used: missing binaries/driver, a refused connection, a cluster that did not start."""


def pg_uri_from_env(env: dict[str, str] | None = None) -> str:
    """``PIPELINE_PG_URI`` if set, else ``postgresql+psycopg://PGUSER[:PGPASSWORD]@PGHOST:PGPORT/PGDATABASE``."""
    env = os.environ if env is None else env
    if env.get("PIPELINE_PG_URI"):
        return env["PIPELINE_PG_URI"]
    v = {k: env.get(k) or d for k, d in DEFAULTS.items()}
    password = env.get("PGPASSWORD")
    auth = quote(v["PGUSER"], safe="") + (":" + quote(password, safe="") if password else "")
    return f"{DRIVER}://{auth}@{v['PGHOST']}:{v['PGPORT']}/{quote(v['PGDATABASE'], safe='')}"


def _url(uri: str):
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if url.get_backend_name() != "postgresql":
        raise PostgresError(f"not a PostgreSQL URI: {url.render_as_string(hide_password=True)}")
    if not url.database:
        raise PostgresError(f"no database name in {url.render_as_string(hide_password=True)}")
    return url


def redact(uri: str) -> str:
    """The URI with its password shown as ``***`` (for messages and logs)."""
    return _url(uri).render_as_string(hide_password=True)


def split_password(uri: str) -> tuple[str, str | None]:
    """(URI without the password, the password or None). libpq reads ``PGPASSWORD`` when the URI has none."""
    from sqlalchemy.engine import URL

    url = _url(uri)
    bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
    return bare.render_as_string(hide_password=False), url.password


def _connect(url, dbname: str, timeout_s: int = 10):
    try:
        import psycopg
    except ImportError as e:
        raise PostgresError("psycopg is not installed: pip install 'psycopg[binary]' (see requirements.txt)") from e
    kwargs = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": dbname,
        **{k: v for k, v in url.query.items() if isinstance(v, str)},  # e.g. sslmode=require
    }
    return psycopg.connect(
        **{k: v for k, v in kwargs.items() if v is not None}, autocommit=True, connect_timeout=timeout_s
    )


def ensure_database(uri: str, timeout_s: int = 10) -> bool:
    """Create the URI's database when it does not exist; True if it was created.

    Connects to the ``postgres`` maintenance database (``template1`` where that one is absent) as the URI's user,
    who needs the CREATEDB privilege only when the database is missing.
    """
    import psycopg
    from psycopg import sql

    url = _url(uri)
    last: Exception | None = None
    for maintenance in ("postgres", "template1"):
        try:
            conn = _connect(url, maintenance, timeout_s)
        except psycopg.OperationalError as e:
            last = e
            if f'database "{maintenance}" does not exist' in str(e):
                continue
            break
        with conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone():
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
            except psycopg.errors.DuplicateDatabase:  # another process created it between our check and create
                return False
            except psycopg.errors.InsufficientPrivilege as e:
                raise PostgresError(
                    f"database {url.database!r} does not exist and user {url.username!r} may not create it "
                    f"(ask for CREATEDB or create it: createdb -O {url.username} {url.database})"
                ) from e
            return True
    msg = str(last).strip().splitlines()[0] if last else "no maintenance database"
    raise PostgresError(f"cannot connect to PostgreSQL at {redact(uri)}: {msg}")


# ---------------------------------------------------------------- throw-away cluster


def find_bindir() -> Path | None:
    """Folder with ``initdb`` and ``pg_ctl``: ``$PIPELINE_PG_BINDIR``, the newest Debian version, else ``$PATH``."""
    candidates = [os.environ["PIPELINE_PG_BINDIR"]] if os.environ.get("PIPELINE_PG_BINDIR") else []

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).resolve().parent))
    for c in candidates:
        if (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def missing_requirements() -> str | None:
    """Why a ``TempCluster`` cannot run here (a reason for ``pytest.skip``), or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -r requirements.txt)"
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql; or set PIPELINE_PG_BINDIR)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is missing (PostgreSQL refuses to run as root)"
        try:
            pwd.getpwnam(TempCluster.SYSTEM_USER)
        except KeyError:
            return f"running as root and there is no {TempCluster.SYSTEM_USER!r} user to run PostgreSQL as"
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempCluster:
    """A PostgreSQL cluster in a temp folder on ``127.0.0.1:<free port>``, removed by ``stop()``.

    ``with TempCluster() as pg: pg.uri`` -> ``postgresql+psycopg://pipeline:<random>@127.0.0.1:<port>/mlflow``
    (the database exists). As root it runs as the ``postgres`` system user (Debian's package creates it) through
    ``runuser``; the folder is made under ``base`` (default: the system temp dir), which that user must be able to
    enter (``/tmp`` is; a pytest ``tmp_path`` under ``/tmp/pytest-of-root`` is not).
    """

    SYSTEM_USER = "postgres"

    def __init__(
        self,
        user: str = "pipeline",
        database: str = "mlflow",
        port: int | None = None,
        bindir: str | Path | None = None,
        base: str | Path | None = None,
        settings: dict[str, str] | None = None,
    ):
        self.user, self.database, self.port = user, database, port
        self.bindir = Path(bindir) if bindir else find_bindir()
        self.base = base
        self.settings = settings or {}
        self.password = secrets.token_urlsafe(18)
        self.root: Path | None = None

    # paths
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def uri(self) -> str:
        return f"{DRIVER}://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{self.database}"

    # lifecycle
    def __enter__(self) -> TempCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", self.SYSTEM_USER, "--", *args] if os.geteuid() == 0 else args

    def _run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        cmd = self._as_owner([str(self.bindir / args[0]), *args[1:]])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGPORT/PGDATA
        proc = subprocess.run(
            cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
        if proc.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.is_file() else ""
            raise PostgresError(
                f"{args[0]} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}\n{log}"
            )
        return proc

    def start(self, timeout_s: float = 120) -> TempCluster:
        if self.bindir is None:
            raise PostgresError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="pipeline-pg-", dir=self.base))
        atexit.register(self.stop)
        try:
            if os.geteuid() == 0:
                owner = pwd.getpwnam(self.SYSTEM_USER)
                os.chown(self.root, owner.pw_uid, owner.pw_gid)
            os.chmod(self.root, 0o700)
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if os.geteuid() == 0:
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",  # a throw-away cluster: skip initdb's fsync (durability after start is unaffected)
                timeout_s=timeout_s,
            )
            pwfile.unlink()
            self._start_server(timeout_s)
            ensure_database(self.uri)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self, timeout_s: float) -> None:
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",  # never /var/run/postgresql: no clash with a system cluster
            "max_connections": "200",
            **self.settings,
        }
        for attempt in range(3):  # a free port can be taken between our probe and the bind
            port = self.port or _free_port()
            with open(self.data_dir / "postgresql.auto.conf", "w") as f:
                f.write("".join(f"{k} = {v}\n" for k, v in {**conf, "port": str(port)}.items()))
            try:
                self._pg_ctl_start(timeout_s)
                self.port = port
                return
            except PostgresError:
                if self.port or attempt == 2:
                    raise

    def restart(self, timeout_s: float = 120) -> None:
        """Stop (fast shutdown: a checkpoint, nothing lost) and start again on the same port and data."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", timeout_s=timeout_s)
        self._pg_ctl_start(timeout_s)

    def _pg_ctl_start(self, timeout_s: float) -> None:
        args = ["start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", str(int(timeout_s))]
        self._run("pg_ctl", *args, timeout_s=timeout_s + 10)

    def stop(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and remove the folder. Safe to call twice."""
        atexit.unregister(self.stop)
        if self.root is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").is_file():
                for mode in ("fast", "immediate"):
                    try:
                        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", timeout_s=60)
                        break
                    except (PostgresError, subprocess.TimeoutExpired):
                        continue
                else:
                    self._kill_postmaster()
        finally:
            root, self.root = self.root, None
            shutil.rmtree(root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            time.sleep(1)
