"""A throw-away PostgreSQL server for the campaign database's tests.

:class:`PostgresServer` runs Debian's PostgreSQL server binaries: ``initdb`` makes a cluster in a temporary directory,
``pg_ctl`` starts it listening on 127.0.0.1 only, on a free port, with its unix socket in that directory, and trust
authentication for one user (the cluster's superuser) and nobody else. Durability is off (``fsync``, synchronous
commit, full-page writes): the data is thrown away, and start-up takes about a second. Stopping it is ``pg_ctl stop
-m immediate`` and removing the directory.

initdb and postgres refuse to run as root: as root they run as the ``postgres`` user (``runuser -u postgres --``),
which then owns the directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from mpi_s2.tools.local_nginx import LOCALHOST, free_port

#: what to install when the server binaries are missing
INSTALL = "apt-get install postgresql python3-psycopg"
#: the system user the server runs as when the tests run as root
SERVER_USER = "postgres"


def server_bin() -> Path | None:
    """The directory of the newest installed PostgreSQL server binaries (``MPI_S2_PG_BIN`` if set), or None."""
    candidates = [os.environ["MPI_S2_PG_BIN"]] if os.environ.get("MPI_S2_PG_BIN") else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name)
        if Path(path).parent.name.isdigit() else 0, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if all(os.access(Path(candidate) / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres", "createdb")):
            return Path(candidate)
    return None


def missing() -> str | None:
    """Why a PostgreSQL server cannot be started here (None when it can)."""
    if server_bin() is None:
        return "the PostgreSQL server binaries (initdb, pg_ctl, postgres)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"the {SERVER_USER!r} user to run PostgreSQL as (root may not)"
    return None


class PostgresServer:
    """A PostgreSQL cluster of its own in a temporary directory, on 127.0.0.1:``port``, whose superuser ``user`` is
    trusted without a password. ``url`` is that of database ``database`` in it; :meth:`create_database` makes more."""

    def __init__(self, user: str = "mpi_s2", database: str = "campaigns", start_timeout_s: int = 20):
        self.user = user
        self.database = database
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.directory: Path | None = None
        bin_dir = server_bin()
        if bin_dir is None or missing():
            raise RuntimeError(f"needs {missing()}: {INSTALL}")
        self.bin = bin_dir

    @property
    def url(self) -> str:
        return self.database_url(self.database)

    def database_url(self, name: str) -> str:
        return f"postgresql://{self.user}@{LOCALHOST}:{self.port}/{name}"

    @property
    def data(self) -> Path:
        assert self.directory is not None, "the server is not started"
        return self.directory / "data"

    def _run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a server binary, as the postgres user if we are root, in the server's directory; failing, raise an
        error with its output."""
        argv = [str(self.bin / command[0]), *command[1:]]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        done = subprocess.run(argv, cwd=self.directory, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"})
        if done.returncode:
            log = self.directory / "server.log" if self.directory else None
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")
        return done

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if os.geteuid() == 0:
            shutil.chown(path, SERVER_USER, SERVER_USER)

    def start(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mpi-s2-postgres-"))
        try:
            if os.geteuid() == 0:
                shutil.chown(self.directory, SERVER_USER, SERVER_USER)
            self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                      "--locale=C", "--no-sync", "--no-instructions")
            # trust for the test user only, over the socket in the directory and over 127.0.0.1
            self._write(self.data / "pg_hba.conf", f"local all {self.user} trust\n"
                                                   f"host all {self.user} 127.0.0.1/32 trust\n")
            for attempt in range(3):   # another process may take the free port before the server binds it
                self.port = free_port()
                options = (f"-c listen_addresses={LOCALHOST} -p {self.port} -k {self.directory} -c fsync=off "
                           "-c synchronous_commit=off -c full_page_writes=off -c max_connections=40 "
                           "-c shared_buffers=16MB")
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-l", str(self.directory / "server.log"), "-w",
                              "-t", str(self.start_timeout_s), "-o", options, "start")
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
            self.create_database(self.database)
        except BaseException:
            self.stop()
            raise

    def create_database(self, name: str) -> str:
        """Create database ``name`` (owned by the test user) and return its URL."""
        self._run("createdb", "-h", LOCALHOST, "-p", str(self.port), "-U", self.user, name)
        return self.database_url(name)

    def stop(self) -> None:
        if self.directory is None:
            return
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
