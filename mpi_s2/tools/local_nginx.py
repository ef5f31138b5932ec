"""nginx on 127.0.0.1 from a throw-away configuration: the remote-input tests and ``make bench``'s remote case
serve Cloud-Optimised GeoTIFFs from it (GDAL's ``/vsicurl/`` reads them with Range requests), and its access log
says what was fetched: every request's method, path, status, body bytes and ``Range`` header.

Debian's ``nginx`` package (``make test`` and ``make bench`` install it); nothing here is used by ``compose``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

NGINX = "/usr/sbin/nginx"
LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOCALHOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def local_url(port: int, relative: str | os.PathLike[str]) -> str:
    return f"http://{LOCALHOST}:{port}/{quote(str(relative).lstrip('/'))}"



# ------------------------------------------------------------------------------------------------------ nginx
@dataclass(frozen=True)
class Request:
    """One line of :class:`Nginx`'s access log. ``path`` is the decoded URI without its query string; ``range``
    the ``Range`` request header as sent, None without one; ``bytes_sent`` the body bytes (headers excluded)."""

    method: str
    path: str
    status: int
    bytes_sent: int
    range: str | None


_LOG_FORMAT = "$request_method\\t$uri\\t$status\\t$body_bytes_sent\\t$http_range"

_NGINX_CONF = """\
{user}
worker_processes 1;
pid "{tmp}/nginx.pid";
error_log "{tmp}/error.log" info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path "{tmp}/client_body";
    proxy_temp_path "{tmp}/proxy";
    fastcgi_temp_path "{tmp}/fastcgi";
    uwsgi_temp_path "{tmp}/uwsgi";
    scgi_temp_path "{tmp}/scgi";
    types {{
        image/tiff tif tiff;
        application/json json;
        application/xml xml;
        application/zip zip;
        text/plain txt;
    }}
    default_type application/octet-stream;
    log_format tsv '{log_format}';
    access_log "{tmp}/access.log" tsv;
    sendfile on;
    keepalive_timeout 60;
    keepalive_requests 10000;
    server_tokens off;
    server {{
        listen {host}:{port};
        server_name localhost;
        root "{root}";
        autoindex off;
        location / {{
            try_files $uri =404;
        }}
    }}
}}
"""


class Nginx:
    """nginx serving ``root`` statically on 127.0.0.1 from a throw-away configuration in ``tmp`` (config, pid,
    error log ``tmp/error.log``, access log ``tmp/access.log``, temp folders). Range requests are nginx's own
    static-file handling; directories are not listed. Runs as a child process in the foreground
    (``daemon off``); ``with`` starts it and waits for its port, leaving stops it.

    >>> with Nginx(root, tmp) as server:
    ...     gdal.Open("/vsicurl/" + server.url("a.tif"))
    ...     server.requests()
    """

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = Path(root).resolve()
        self.tmp = Path(tmp).resolve()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.tmp / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.tmp / "access.log"

    @property
    def error_log(self) -> Path:
        return self.tmp / "error.log"

    @property
    def stderr_log(self) -> Path:
        return self.tmp / "stderr.log"

    def url(self, relative: str | os.PathLike[str] = "") -> str:
        """``http://127.0.0.1:PORT/relative`` (``relative`` to ``root``, percent-encoded)."""
        return local_url(self.port, relative)

    def _write_conf(self) -> None:
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.tmp / sub).mkdir(parents=True, exist_ok=True)
        for path in (self.tmp, self.root):
            if any(c in str(path) for c in "\"\\$"):
                raise ValueError(f"nginx config: unsupported character in path {path}")
        self.conf.write_text(_NGINX_CONF.format(
            user="user root;" if os.geteuid() == 0 else "", tmp=self.tmp, root=self.root, host=LOCALHOST,
            port=self.port, log_format=_LOG_FORMAT))

    def _pid_written(self) -> bool:
        try:
            return self.process is not None and int((self.tmp / "nginx.pid").read_text()) == self.process.pid
        except (OSError, ValueError):
            return False

    def _error_text(self) -> str:
        try:
            text = self.error_log.read_text(errors="replace")[-4000:]
        except OSError:
            text = "(no error log)"
        try:
            return text + self.stderr_log.read_text(errors="replace")[-2000:]
        except OSError:
            return text

    def start(self) -> None:
        if not Path(NGINX).exists():
            raise RuntimeError(f"nginx is not installed at {NGINX}: apt-get install nginx-light (or nginx)")
        if not self.root.is_dir():
            raise NotADirectoryError(f"nginx root {self.root} is not a directory")
        self.tmp.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # another process may take the free port between choosing and binding it
            self.port = free_port()
            self._write_conf()
            self.error_log.unlink(missing_ok=True)
            (self.tmp / "nginx.pid").unlink(missing_ok=True)
            self.access_log.touch()
            with open(self.stderr_log, "wb") as stderr:
                self.process = subprocess.Popen(
                    [NGINX, "-p", f"{self.tmp}/", "-c", str(self.conf), "-e", str(self.error_log),
                     "-g", "daemon off;"],
                    stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                # nginx writes its pid file once its port is bound: then a connection reaches it, not another
                if self._pid_written() and accepts_connections(self.port):
                    return
                time.sleep(0.02)
            if self.process.poll() is None:
                self._stop_process()
                reason = "did not accept connections within 15 s"
            else:
                reason = f"exited with status {self.process.returncode}"
            text = self._error_text()
            self.process = None
            if "Address already in use" in text and attempt < 2:
                continue
            raise RuntimeError(f"nginx ({NGINX} -c {self.conf}) {reason} on port {self.port}; error log:\n{text}")

    def _stop_process(self) -> None:
        """Graceful stop (SIGQUIT), then SIGTERM; as a last resort SIGKILL to nginx's own process group (its
        master and workers: it was started in a session of its own)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGQUIT, signal.SIGTERM):
            process.send_signal(sig)
            try:
                process.wait(5)
                return
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(5)

    def stop(self) -> None:
        self._stop_process()
        self.process = None

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        """CPU seconds (user and system) nginx's master and worker processes have used so far (Linux's /proc)."""
        if self.process is None:
            return 0.0
        pid = self.process.pid
        pids = [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
        ticks = 0
        for each in pids:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        return ticks / os.sysconf("SC_CLK_TCK")

    def requests(self, settle: float = 0.05) -> list[Request]:
        """The requests logged since the start (or :meth:`clear_log`), oldest first. nginx writes each line
        unbuffered as the request completes, just after sending its last byte: the log is read once it has not
        grown for ``settle`` seconds, so that a request its client has just finished is in it."""
        size, deadline = -1, time.monotonic() + 5
        while (now := self.access_log.stat().st_size) != size and time.monotonic() < deadline:
            size = now
            time.sleep(settle)
        found = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) != 5:
                continue
            method, path, status, sent, rng = fields
            found.append(Request(method=method, path=path, status=int(status), bytes_sent=int(sent),
                                 range=None if rng == "-" else rng))
        return found

    def clear_log(self) -> None:
        """Empty the access log (nginx appends, so later requests start at its beginning)."""
        with open(self.access_log, "r+b") as log:
            log.truncate(0)
