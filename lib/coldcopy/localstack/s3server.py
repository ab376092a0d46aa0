"""moto's S3 server on loopback, in a child process, for the demo and the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import weakref
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from coldcopy.config import Secret, Settings
from coldcopy.errors import StorageError
from coldcopy.loopback import free_port, wait_until
from coldcopy.storage.s3 import make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_START_TIMEOUT = 30.0
_IN_MEMORY_BYTES = 16 << 30  # a throwaway server: keep objects in RAM, never in temp files
# Loopback requests must never go through an HTTP proxy configured in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class S3Server:
    """``python -m moto.server`` on 127.0.0.1; its output goes to ``log_path``.

    The child stays in our process group, so Ctrl-C in a terminal reaches it too, and it is
    terminated at interpreter exit or garbage collection if ``stop()`` was never called.
    """

    host = "127.0.0.1"
    access_key = "test"
    secret_key = "local-s3-secret"  # moto checks no signature; distinctive so redaction is visible
    region = "us-east-1"

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self._port_chosen_by_us = port is None
        self.port = free_port() if port is None else port
        if log_path is None:
            tmp_dir = Path(tempfile.mkdtemp(prefix="coldcopy-s3-"))
            log_path = tmp_dir / "moto.log"
            # Kept across stop() and start(), so the log stays readable; removed at exit.
            weakref.finalize(self, shutil.rmtree, tmp_dir, ignore_errors=True)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., S3Server] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> Self:
        if self._proc is not None and self._proc.poll() is None:
            return self
        for attempt in range(3):
            self._spawn()
            if self._wait_ready():
                return self
            if (
                self._port_chosen_by_us
                and attempt < 2
                and self._proc is not None
                and self._proc.poll() is not None
            ):
                self.port = free_port()  # most likely the port was taken before moto bound it
                continue
            break
        log = _tail(self.log_path)
        self.stop()
        raise StorageError(
            f"the local S3 server (moto) did not answer on {self.endpoint_url} in {_START_TIMEOUT:.0f} s:"
            f"\n{log}",
            "check that moto[server] is installed (pip install 'coldcopy[local]')",
        )

    def stop(self) -> None:
        """Terminate the server; safe to call twice, and start() may follow."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._proc = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self) -> S3Client:
        """A boto3 S3 client for this server (ColdCopy's own factory, pointed at it)."""
        return make_client(
            Settings(
                spaces_key=self.access_key,
                spaces_secret=Secret(self.secret_key),
                spaces_region=self.region,
                spaces_endpoint=self.endpoint_url,
            )
        )

    def spaces_env(self, bucket: str) -> dict[str, str]:
        """The ``DO_SPACES_*`` settings that point ColdCopy at ``bucket`` on this server."""
        return {
            "DO_SPACES_KEY": self.access_key,
            "DO_SPACES_SECRET": self.secret_key,
            "DO_SPACES_BUCKET": bucket,
            "DO_SPACES_REGION": self.region,
            "DO_SPACES_ENDPOINT": self.endpoint_url,
        }

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with _OPENER.open(request, timeout=30) as response:
            response.read()

    def _spawn(self) -> None:
        if self._finalizer is not None:  # an earlier attempt that never became ready
            self._finalizer()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                # Objects stay in memory: by default moto spills every value over 5 MB to a temporary
                # file and reads it back on each copy, which costs more than the upload itself.
                env={**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(_IN_MEMORY_BYTES)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=False,
            )
        self._proc = proc
        self._finalizer = weakref.finalize(self, _terminate, proc)

    def _wait_ready(self) -> bool:
        proc = self._proc
        assert proc is not None

        def answered() -> bool:
            if proc.poll() is not None:
                raise _Exited
            try:
                with _OPENER.open(f"{self.endpoint_url}/", timeout=2) as response:  # ListBuckets
                    return int(response.status) == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        try:
            return wait_until(answered, timeout=_START_TIMEOUT)
        except _Exited:
            return False


class Counted:
    """The requests one boto3 client makes, per operation name (tests and benchmarks count them)."""

    def __init__(self, client: Any) -> None:
        self.calls: Counter[str] = Counter()
        client.meta.events.register("before-call.s3.*", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())


class _Exited(Exception):
    """The server process ended while we waited for it."""


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError), path.open("rb") as f:
        return "\n".join(f.read().decode("utf-8", "replace").strip().splitlines()[-lines:])
    return ""
