"""Launchers: wake the job runner, which drains the queue in the bucket and exits.

``app-platform`` (production) creates a deployment of the runner app, which runs its POST_DEPLOY
job; ``local`` starts ``python -m coldcopy worker`` as a detached process (tests, demo);
``docker`` runs the runner image through the Docker SDK. Waking is idempotent in effect: the
runner takes work from the queue, so a second wake while one runner is busy only wastes a start.

Third-party imports (requests, docker) are deferred so importing this module costs nothing.
Tokens and environment values never appear in reprs, messages or logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coldcopy.config import ENV_FILE_VAR, Settings, redact
from coldcopy.errors import ColdCopyError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

#: Deployment phases during which a runner is being built, started or is running.
IN_PROGRESS_PHASES = frozenset({"PENDING_BUILD", "BUILDING", "PENDING_DEPLOY", "DEPLOYING"})
LAUNCHER_KINDS = ("app-platform", "docker", "local")
_CLIENT_ERRORS = {
    401: (
        "the DigitalOcean API rejected the token (401 Unauthorized)",
        "check DO_API_TOKEN: it must be a valid, unexpired token with app:read and app:update scope",
    ),
    403: (
        "the DigitalOcean token is not allowed to do this (403 Forbidden)",
        "check DO_API_TOKEN has app:update scope (and app:read)",
    ),
    404: (
        "the runner app was not found (404 Not Found)",
        "check RUNNER_APP_ID (doctl apps list) and that the token's team owns the app",
    ),
}


class LauncherError(ColdCopyError):
    """The runner could not be woken."""


class _MaybeApplied(Exception):
    """A non-idempotent call failed in a way that may still have taken effect (5xx, lost connection)."""


@dataclass(frozen=True)
class LaunchResult:
    started: bool
    detail: str
    id: str | None = None


class Launcher(Protocol):
    name: str

    def wake(self) -> LaunchResult: ...


class LocalLauncher:
    """Start the runner as a detached local process (its own session, output to a log file)."""

    name: str = "local"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        argv: Sequence[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self._env = dict(env or {})
        self.log_path = Path(log_path) if log_path is not None else None
        self.argv = list(argv) if argv is not None else [sys.executable, "-m", "coldcopy", "worker"]
        self.cwd = cwd
        #: The last process started; callers that must wait for it (tests) can.
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"LocalLauncher(argv={self.argv!r}, log_path={self.log_path!r}, env=<{len(self._env)} vars>)"

    def wake(self) -> LaunchResult:
        try:
            with contextlib.ExitStack() as stack:
                out: Any = subprocess.DEVNULL
                if self.log_path is not None:
                    self.log_path.parent.mkdir(parents=True, exist_ok=True)
                    out = stack.enter_context(self.log_path.open("ab"))
                proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self._env},
                    cwd=self.cwd,
                    start_new_session=True,  # detached: outlives the caller, no terminal signals
                    close_fds=True,
                )
        except OSError as exc:
            raise LauncherError(
                f"could not start the local runner ({self.argv[0]}): {exc.strerror or exc}",
                "check that the command exists and is executable",
            ) from None
        self.process = proc
        where = f", log {self.log_path}" if self.log_path else ""
        return LaunchResult(True, f"started local runner, pid {proc.pid}{where}", str(proc.pid))


class DockerLauncher:
    """Run the runner image once, detached and auto-removed, through the Docker SDK."""

    name: str = "docker"

    def __init__(
        self,
        image: str,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = ("coldcopy", "worker"),
        base_url: str | None = None,
        network: str | None = None,
    ) -> None:
        if not image:
            raise LauncherError("the docker launcher needs an image", "set the runner image name")
        self.image = image
        self._env = dict(env or {})
        self.command = list(command)
        self.base_url = base_url
        self.network = network

    def __repr__(self) -> str:
        return f"DockerLauncher(image={self.image!r}, env=<{len(self._env)} vars>)"

    def wake(self) -> LaunchResult:
        try:
            import docker
            import docker.errors
        except ImportError:
            raise LauncherError(
                "the docker launcher needs the 'docker' package", "pip install docker"
            ) from None
        try:
            client = docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
        except docker.errors.DockerException as exc:
            raise LauncherError(
                f"no Docker engine is reachable ({_first_line(exc)})",
                "start Docker or set DOCKER_HOST, or use the 'local' launcher",
            ) from None
        try:
            container = client.containers.run(
                self.image,
                command=self.command,
                environment=self._env,
                detach=True,
                auto_remove=True,
                network=self.network,
            )
        except docker.errors.ImageNotFound:
            raise LauncherError(
                f"runner image {self.image!r} not found",
                "build it: docker build -f runner_image/Dockerfile -t <image> .",
            ) from None
        except docker.errors.DockerException as exc:
            raise LauncherError(f"Docker could not start the runner: {_first_line(exc)}") from None
        finally:
            client.close()
        cid = str(container.id)
        return LaunchResult(True, f"started runner container {cid[:12]} from {self.image}", cid)


class AppPlatformLauncher:
    """Create a deployment of the runner app; its POST_DEPLOY job is the runner.

    App Platform has no public "run this job now" call, so a new deployment is the way to start
    the job. Before creating one we look at recent deployments and do nothing if one is still
    being built or deployed (its job will drain the queue).
    """

    name: str = "app-platform"

    def __init__(
        self,
        token: str,
        app_id: str,
        base_url: str = "https://api.digitalocean.com",
        *,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_delay: float = 60.0,
        timeout: tuple[float, float] = (5.0, 30.0),
        per_page: int = 20,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ) -> None:
        if not token:
            raise LauncherError("no DigitalOcean API token is set", "set DO_API_TOKEN (app:read, app:update)")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}", app_id or ""):
            raise LauncherError(f"runner app id {app_id!r} is not valid", "check RUNNER_APP_ID")
        self._token = token
        self.app_id = app_id
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_delay = max_delay
        self.timeout = timeout
        self.per_page = per_page
        self._sleep = sleep
        if session is None:
            import requests

            session = requests.Session()
        self._session = session

    def __repr__(self) -> str:
        return f"AppPlatformLauncher(app_id={self.app_id!r}, base_url={self.base_url!r})"

    def wake(self) -> LaunchResult:
        path = f"/v2/apps/{self.app_id}/deployments"
        for attempt in range(1, self.max_attempts + 1):
            listing = self._call("GET", path, params={"page": 1, "per_page": self.per_page})
            for dep in listing.get("deployments") or []:
                if isinstance(dep, dict) and dep.get("phase") in IN_PROGRESS_PHASES:
                    dep_id = str(dep.get("id"))
                    return LaunchResult(
                        False, f"a runner deployment is already in progress: {dep_id}", dep_id
                    )
            try:
                body = self._call("POST", path, json={"force_build": False}, retry_unsafe=False)
            except _MaybeApplied as exc:
                # The deployment may exist anyway: list again before creating another one.
                if attempt == self.max_attempts:
                    raise LauncherError(
                        f"creating a runner deployment failed {attempt} times (last: {exc}); giving up",
                        "DigitalOcean may be degraded; the next tick will try again",
                    ) from None
                self._wait(f"POST {path}", str(exc), self._backoff(attempt))
                continue
            created = body.get("deployment")
            if not isinstance(created, dict) or not created.get("id"):
                raise LauncherError("the DigitalOcean API did not return the new deployment's id")
            dep_id = str(created["id"])
            return LaunchResult(
                True, f"created runner deployment {dep_id} ({created.get('phase', '?')})", dep_id
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, method: str, path: str, *, retry_unsafe: bool = True, **kwargs: Any) -> dict[str, Any]:
        """One call; retried on 429 (never applied) and, if ``retry_unsafe``, on 5xx and network errors."""
        import requests

        url = self.base_url + path
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        what = f"{method} {path}"
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            try:
                resp = self._session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                problem = f"could not reach the DigitalOcean API ({type(exc).__name__})"
                if not retry_unsafe:
                    raise _MaybeApplied(problem) from None
                if last:
                    hint = f"check network access to {self.base_url}"
                    raise LauncherError(f"{problem} for {what} after {attempt} attempts", hint) from None
                self._wait(what, problem, self._backoff(attempt))
                continue
            status = resp.status_code
            if status >= 500 and not retry_unsafe:
                raise _MaybeApplied(f"HTTP {status}")
            if status == 429 or status >= 500:
                if last:
                    raise LauncherError(
                        f"the DigitalOcean API answered {status} to {what} {attempt} times; giving up",
                        "DigitalOcean may be rate limiting or degraded; the next tick will try again",
                    )
                delay = _retry_after(resp.headers.get("retry-after"))
                self._wait(what, f"HTTP {status}", self._backoff(attempt) if delay is None else delay)
                continue
            if status in _CLIENT_ERRORS:
                message, hint = _CLIENT_ERRORS[status]
                raise LauncherError(f"{message} for {what}", hint)
            if status >= 400:
                raise LauncherError(
                    f"the DigitalOcean API refused {what}: HTTP {status} {_api_message(resp)}".rstrip(),
                    "see https://docs.digitalocean.com/reference/api/",
                )
            try:
                body = resp.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise LauncherError(f"the DigitalOcean API answered {what} with something not a JSON object")
            return body
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        return float(min(self.max_delay, self.backoff * 2 ** (attempt - 1)))

    def _wait(self, what: str, problem: str, delay: float) -> None:
        delay = min(max(delay, 0.0), self.max_delay)
        log.warning("DigitalOcean API %s: %s; retrying in %.1f s", what, problem, delay)
        self._sleep(delay)


def launcher_for(settings: Settings, env_file: str | None = None, *, quick: bool = False) -> Launcher | None:
    """The launcher COLDCOPY_LAUNCHER names (None for ``none``: something else runs workers).

    ``env_file`` is the settings file this process was given, so that a local runner reads the
    same one; a docker runner inherits nothing and gets the settings' variables themselves.
    ``quick``: few, short retries (a web request must answer in seconds; the tick retries later).
    """
    kind = settings.launcher
    if kind == "none":
        return None
    if kind == "app-platform":
        limits: dict[str, Any] = (
            {"max_attempts": 2, "backoff": 0.5, "max_delay": 2.0, "timeout": (3.0, 10.0)} if quick else {}
        )
        return launcher_from_settings(
            kind,
            token=settings.do_api_token.reveal(),
            app_id=settings.runner_app_id,
            base_url=settings.do_api_url,
            **limits,
        )
    if kind == "docker":
        return launcher_from_settings(kind, image=settings.runner_image, env=settings.runner_env())
    return launcher_from_settings(kind, env={ENV_FILE_VAR: env_file} if env_file else {})


def wake(
    settings: Settings, launcher: Launcher | None = None, *, env_file: str | None = None, quick: bool = False
) -> dict[str, Any] | None:
    """Wake the runner; a summary of what happened (None when no launcher is configured)."""
    try:
        launcher = launcher or launcher_for(settings, env_file, quick=quick)
        if launcher is None:
            return None
        r = launcher.wake()
    except ColdCopyError as exc:
        log.error("could not wake the runner: %s", redact(str(exc), settings))
        return {"started": False, "error": redact(exc.message, settings)}
    log.info("runner wake (%s): %s", launcher.name, r.detail)
    return {"launcher": launcher.name, "started": r.started, "detail": redact(r.detail, settings), "id": r.id}


def launcher_from_settings(kind: str, **kwargs: Any) -> Launcher:
    """Build the launcher named ``kind`` (``app-platform``, ``docker`` or ``local``)."""
    factories: dict[str, Callable[..., Launcher]] = {
        "app-platform": AppPlatformLauncher,
        "docker": DockerLauncher,
        "local": LocalLauncher,
    }
    factory = factories.get(kind)
    if factory is None:
        raise ColdCopyError(
            f"unknown launcher {kind!r}",
            f"choose one of: {', '.join(LAUNCHER_KINDS)}",
        )
    return factory(**kwargs)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``retry-after`` header (DigitalOcean sends delta-seconds); None if absent/unusable."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _api_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return str(message)[:200] if message else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
