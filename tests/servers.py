"""Test-support servers for the remote-input tests: GDAL reads Cloud-Optimised GeoTIFFs over HTTP (``/vsicurl/``)
and S3 (``/vsis3/``) from them.

* :class:`Nginx` (from :mod:`mpi_s2.tools.local_nginx`, which ``make bench`` uses too): the Debian nginx serving a
  folder statically (Range requests, sendfile), with an access log that records every request's method, path,
  status, body bytes and ``Range`` header (:meth:`Nginx.requests`).
* :class:`FaultProxy`: a standard-library HTTP/1.1 proxy in front of an upstream URL that injects faults: 503s
  (every Nth, a seeded fraction, some paths for good), slow answers and dropped connections.
* :class:`S3Server`: moto's server mode as an S3 endpoint with IAM authentication on: requests must be signed
  (AWS Signature V4) with the access key of a user it created, whose policy allows S3.

All listen on 127.0.0.1 only, on a free port, and are context managers that start and stop them; their
configuration and logs live in a temporary directory given by the caller.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import random
import socket
import struct
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from mpi_s2.tools.local_nginx import LOCALHOST, NGINX, Nginx, Request, free_port, local_url

# ------------------------------------------------------------------------------------------------ fault proxy
#: request headers passed upstream (others, Accept-Encoding among them, are not: bodies stay identity-coded)
_FORWARD_REQUEST = ("Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
                    "Accept", "User-Agent", "Authorization")
#: response headers passed back
_FORWARD_RESPONSE = ("Content-Type", "Content-Range", "Accept-Ranges", "Last-Modified", "ETag", "Cache-Control",
                     "Location")


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._closed(self.connection)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        proxy._begin()
        try:
            self._respond(proxy)
        finally:
            proxy._end()

    def _respond(self, proxy: FaultProxy) -> None:
        fault = proxy._decide(self.path)
        if proxy.delay > 0:
            time.sleep(proxy.delay)
        if fault == "drop":
            self._drop(reset=proxy.drop_reset)
            return
        if fault is not None:
            self._answer(int(fault), {"Content-Type": "text/plain"},
                         f"FaultProxy: injected HTTP {fault} for {self.path}\n".encode())
            return
        self._forward(proxy)

    def _drop(self, reset: bool) -> None:
        """Close the connection without a byte of response: an orderly close (FIN: the client sees an empty
        reply), or with ``reset`` an abortive one (RST: the client sees "connection reset by peer")."""
        self.close_connection = True
        try:
            if reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()  # the last reference but the socket's: closing it closes the descriptor now
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _answer(self, status: int, headers: dict[str, str], body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def _forward(self, proxy: FaultProxy) -> None:
        headers = {name: self.headers[name] for name in _FORWARD_REQUEST if self.headers[name] is not None}
        connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
        try:
            connection.request(self.command, proxy.upstream_prefix + self.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            length = response.getheader("Content-Length")
            back = {name: value for name in _FORWARD_RESPONSE if (value := response.getheader(name)) is not None}
            status = response.status
        except OSError as error:
            self._answer(502, {"Content-Type": "text/plain"}, f"FaultProxy: upstream failed: {error}\n".encode())
            return
        finally:
            connection.close()
        # HEAD: the upstream's Content-Length (of the body it would send), no body
        self._answer(status, back, body, int(length) if self.command == "HEAD" and length is not None else None)


class FaultProxy:
    """A threaded HTTP/1.1 proxy in front of ``upstream`` (a base URL such as ``Nginx.url()``) that forwards GET
    and HEAD with their Range (and conditional) headers, and answers with the upstream's status, Content-Length,
    Content-Type, Content-Range, Accept-Ranges and body, on keep-alive connections — unless a fault is due.

    Faults, decided per request in this order (attributes, changeable while it runs):

    * ``fail_paths``: requests whose path contains one of these substrings are answered ``fail_status`` for good,
      or only after the first ``fail_after`` requests to that path (a source that starts failing);
    * ``drop_first`` N: the first N requests get no response, their connections are closed (``drop_reset``: by a
      TCP reset instead of an orderly close);
    * ``drop_every`` N: every Nth request is dropped so;
    * ``fail_every`` N: every Nth request is answered 503 without contacting the upstream;
    * ``fail_fraction``: that fraction of requests, drawn from ``random.Random(seed)``, are answered 503;
    * ``delay``: seconds each request waits before its answer (faulty or not).

    ``requests`` counts requests received, ``faults`` those given a fault (503s and drops), ``dropped`` the drops,
    ``most_at_once`` the most requests it was answering at one time.
    """

    def __init__(self, upstream: str, *, fail_every: int = 0, fail_fraction: float = 0.0, seed: int = 0,
                 fail_paths: set[str] | None = None, fail_status: int = 503, fail_after: int = 0,
                 delay: float = 0.0, drop_first: int = 0, drop_every: int = 0, drop_reset: bool = False) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"FaultProxy: upstream must be an http:// URL, not {upstream!r}")
        self.upstream = upstream
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_prefix = parts.path.rstrip("/")
        self.fail_every = fail_every
        self.fail_fraction = fail_fraction
        self.random = random.Random(seed)
        self.fail_paths: set[str] = set(fail_paths or ())
        self.fail_status = fail_status
        self.fail_after = fail_after
        self.delay = delay
        self.drop_first = drop_first
        self.drop_every = drop_every
        self.drop_reset = drop_reset
        self._lock = threading.Lock()
        self._requests = 0
        self._faults = 0
        self._dropped = 0
        self._in_flight = 0
        self._most_at_once = 0
        self._per_path: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def faults(self) -> int:
        with self._lock:
            return self._faults

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    @property
    def most_at_once(self) -> int:
        with self._lock:
            return self._most_at_once

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._most_at_once = max(self._most_at_once, self._in_flight)

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy is not running")
        return int(self._server.server_address[1])

    def url(self, relative: str | os.PathLike[str] = "") -> str:
        """``http://127.0.0.1:PORT/relative``, the upstream's ``relative`` through the proxy."""
        return local_url(self.port, relative)

    def _decide(self, path: str) -> str | int | None:
        """Count the request; the fault it gets: "drop", an HTTP status, or None to forward it."""
        bare = path.split("?", 1)[0]
        with self._lock:
            self._requests += 1
            n = self._requests
            self._per_path[bare] = seen = self._per_path.get(bare, 0) + 1
            fault: str | int | None = None
            if any(part in bare for part in self.fail_paths) and seen > self.fail_after:
                fault = self.fail_status
            elif n <= self.drop_first or (self.drop_every > 0 and n % self.drop_every == 0):
                fault = "drop"
            elif self.fail_every > 0 and n % self.fail_every == 0:
                fault = 503
            elif self.fail_fraction > 0 and self.random.random() < self.fail_fraction:
                fault = 503
            if fault is not None:
                self._faults += 1
                self._dropped += fault == "drop"
            return fault

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def start(self) -> None:
        self._server = _ProxyServer((LOCALHOST, 0), _ProxyHandler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"FaultProxy:{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for connection in open_connections:  # idle keep-alive handlers: wake them so their threads end
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ S3 (moto)
class S3Server:
    """moto's server mode (``ThreadedMotoServer``, in this process) as an S3 endpoint on 127.0.0.1, with moto's
    IAM authentication switched on once it is set up.

    On entry, with authentication still off, it creates the IAM user ``mpi-s2-test`` with an access key and an
    inline policy allowing ``s3:*`` on everything, then switches authentication on (``/moto-api/reset-auth`` with
    0). From then on every request to it must carry an AWS Signature V4 (``Authorization`` header, or presigned
    query) made with an access key moto knows: moto recomputes the signature over the request (method, path,
    query, the signed headers, payload hash) with that key's secret and answers 403 ``SignatureDoesNotMatch`` when
    it differs, 403 ``InvalidAccessKeyId`` for an unknown key, 403 ``AccessDenied`` when the user's policies do not
    allow the action on the resource. What moto does not check: the request date (no clock-skew or expiry limit),
    that ``x-amz-content-sha256`` matches the body actually sent, the region and service in the credential scope
    beyond using them in the signature, and anything about TLS (plain HTTP here).

    moto's state and its authentication switch (``moto.settings.INITIAL_NO_AUTH_ACTION_COUNT``) belong to the
    whole process: on exit moto is reset (all buckets and users deleted) and the switch restored, so use one
    S3Server at a time and no ``mock_aws`` meanwhile.
    """

    REGION = "us-east-1"
    USER = "mpi-s2-test"
    #: the credentials that set it up, before authentication is on (any are accepted then)
    SETUP_KEY_ID, SETUP_SECRET = "testing", "testing"

    def __init__(self) -> None:
        self.access_key_id = ""
        self.secret_access_key = ""
        self._server = None
        self._previous_auth_count = float("inf")
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def client(self, service: str = "s3", *, key_id: str | None = None, secret: str | None = None):
        """A boto3 client of ``service`` on this server, signing with the test user's key (or those given)."""
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.REGION,
                            aws_access_key_id=key_id or self.access_key_id,
                            aws_secret_access_key=secret or self.secret_access_key, aws_session_token=None,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def _moto_api(self, what: str, data: bytes) -> dict:
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/{what}", data=data, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address=LOCALHOST, port=0, verbose=False)
        server.start()
        self._server = server
        self.port = int(server.get_host_and_port()[1])
        # authentication off while setting up, whatever it was (restored on exit)
        previous = self._moto_api("reset-auth", b"inf").get("PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT", "inf")
        self._previous_auth_count = float(previous)
        iam = self.client("iam", key_id=self.SETUP_KEY_ID, secret=self.SETUP_SECRET)
        iam.create_user(UserName=self.USER)
        iam.put_user_policy(UserName=self.USER, PolicyName="s3-all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=self.USER)["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        self._moto_api("reset-auth", b"0")  # from now on, every request is authenticated

    def stop(self) -> None:
        if self._server is None:
            return
        try:
            self._moto_api("reset-auth", b"inf")
            self._moto_api("reset", b"")
            self._moto_api("reset-auth", str(self._previous_auth_count).encode())
        finally:
            self._server.stop()
            self._server = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def upload(self, bucket: str, key: str, path: Path) -> None:
        self.client().upload_file(str(path), bucket, key)

    def gdal_env(self, wrong_secret: bool = False) -> dict[str, str]:
        """The configuration options (or environment variables) with which GDAL reads ``/vsis3/BUCKET/KEY`` from
        this server; ``wrong_secret``: signed with a secret key that is not the user's, which moto refuses."""
        secret = self.secret_access_key
        if wrong_secret:
            secret = ("x" if secret[:1] != "x" else "y") + secret[1:]
        return {
            "AWS_S3_ENDPOINT": f"{LOCALHOST}:{self.port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_SESSION_TOKEN": "",
            "AWS_REGION": self.REGION,
            "AWS_DEFAULT_REGION": self.REGION,
            "AWS_NO_SIGN_REQUEST": "NO",
        }


__all__ = ["NGINX", "FaultProxy", "Nginx", "Request", "S3Server", "free_port"]
