"""Fixtures of the ZODB storage tests: databases, a real ZEO server and a
real PostgreSQL server for RelStorage."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import transaction
import ZODB
import zodburi

from zbigarray.storage import open_db

BLKSIZE = 16 * 1024
"""Small blocks: several per test array, four ZBlk1 chunks each."""

PG_USER = "zbigarray"
"""The PostgreSQL role the tests connect as (trusted on loopback)."""

PG_DATABASES = {True: "zbigarray_history", False: "zbigarray_history_free"}
"""One database per RelStorage schema kind (``keep_history``): a database
created in one kind cannot be opened in the other."""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ZODB.DB]:
    """A FileStorage database in a temporary directory."""
    d = open_db(str(tmp_path / "data.fs"))
    yield d
    transaction.abort()
    d.close()


@pytest.fixture(params=["ZBlk0", "ZBlk1"])
def zblk_fmt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each block format as the writer's format."""
    monkeypatch.setenv("ZBIGARRAY_ZBLK_FMT", request.param)
    return request.param


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def zeo_server(tmp_path: Path) -> Iterator[str]:
    """Start ``runzeo`` on a free port of 127.0.0.1; yield its ``host:port``.

    The server is its own process serving a FileStorage in `tmp_path`; it is
    stopped (SIGTERM, then SIGKILL) after the test.
    """
    yield from _run_zeo(tmp_path)


@pytest.fixture(scope="module")
def zeo_server_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like `zeo_server`, one server for a whole test module (tests keep
    their data under their own root keys)."""
    yield from _run_zeo(tmp_path_factory.mktemp("zeo"))


def _run_zeo(tmp_path: Path) -> Iterator[str]:
    proc, addr = start_zeo(tmp_path / "zeo.fs")
    try:
        yield addr
    finally:
        stop_zeo(proc)


def start_zeo(path: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``runzeo`` serving FileStorage `path` on 127.0.0.1; return the
    process and its ``host:port`` once it listens.

    `port`: a free one when None; give the port of a server that was stopped
    to restart it where its clients will reconnect.
    """
    if port is None:
        port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}", "-f", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"runzeo exited with {proc.returncode}: "
                                   f"{proc.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("runzeo did not listen within 20 s") from None
                time.sleep(0.05)
    except BaseException:
        stop_zeo(proc)
        raise
    return proc, f"127.0.0.1:{port}"


def stop_zeo(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server from :func:`start_zeo` (SIGTERM, then SIGKILL) and
    wait for it."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stderr.close()


def _pg_program(name: str) -> str | None:
    """Path of PostgreSQL program `name`: on PATH, or in Debian's versioned
    directory (not on PATH there)."""
    found = shutil.which(name)
    if found is None:
        found = next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                 reverse=True)), None)
    return found


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL server on a free port of 127.0.0.1; yield
    its ``host:port``.

    Skips when RelStorage, psycopg2 or PostgreSQL's programs are missing.  The
    cluster lives in a fresh temporary directory, trusts `PG_USER` on loopback,
    runs without fsync (the data is thrown away) and holds the databases of
    `PG_DATABASES`.  PostgreSQL refuses to run as root: then the cluster
    belongs to, and the server runs as, the unprivileged user ``nobody``.
    Stopped (``pg_ctl stop -m fast``) and removed at the end of the session.
    """
    pytest.importorskip("relstorage", reason="RelStorage is not installed")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed")
    initdb, pg_ctl = _pg_program("initdb"), _pg_program("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            nobody = None
        if runuser is None or nobody is None:
            pytest.skip("running as root, and no runuser/user 'nobody' to run "
                        "PostgreSQL as")
        as_user = [runuser, "-u", "nobody", "--"]
    # Not under pytest's tmp_path: its directories are private to root.
    top = tempfile.mkdtemp(prefix="zbigarray-pg-")
    if as_user:
        os.chown(top, nobody.pw_uid, nobody.pw_gid)
    data, log = os.path.join(top, "data"), os.path.join(top, "log")
    port = _free_port()

    def pg(*args: str) -> None:
        r = subprocess.run([*as_user, *args], cwd=top, capture_output=True, text=True,
                           env={**os.environ, "LC_ALL": "C"})
        if r.returncode != 0:
            server_log = ""
            if os.path.exists(log):
                with open(log, errors="replace") as f:
                    server_log = f.read()
            raise RuntimeError(f"{os.path.basename(args[0])} failed ({r.returncode}):\n"
                               f"{r.stdout}{r.stderr}{server_log}")

    try:
        pg(initdb, "-D", data, "-A", "trust", "-U", PG_USER, "-E", "UTF8",
           "--locale=C", "--no-sync")
        pg(pg_ctl, "-D", data, "-l", log, "-w", "-t", "30", "start", "-o",
           f"-h 127.0.0.1 -p {port} -k {top} -c fsync=off "
           "-c synchronous_commit=off -c full_page_writes=off")
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER,
                                    dbname="postgres")
            conn.autocommit = True      # CREATE DATABASE runs outside transactions
            with conn.cursor() as cur:
                for name in PG_DATABASES.values():
                    cur.execute(f"CREATE DATABASE {name}")
            conn.close()
            yield f"127.0.0.1:{port}"
        finally:
            pg(pg_ctl, "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def empty_relstorage(server: str, keep_history: bool = True) -> str:
    """Empty the RelStorage database of `server` for `keep_history`; return
    its ``postgres://`` URI (append ``&key=value`` options to it)."""
    uri = (f"postgres://{PG_USER}@{server}/{PG_DATABASES[keep_history]}"
           f"?keep_history={int(keep_history)}")
    factory, _ = zodburi.resolve_uri(uri)
    storage = factory()         # creates RelStorage's tables on first use
    try:
        storage.zap_all()
    finally:
        storage.close()
    return uri
