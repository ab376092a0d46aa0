"""Launchers against a local fake of the DigitalOcean deployment API, a real subprocess, and Docker."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coldcopy.config import load_settings
from coldcopy.errors import ColdCopyError
from coldcopy.ops.launchers import (
    IN_PROGRESS_PHASES,
    AppPlatformLauncher,
    DockerLauncher,
    LauncherError,
    LaunchResult,
    LocalLauncher,
    launcher_from_settings,
)
from fake_do_api import FakeDoApi

TOKEN = "dop_v1_test-token-3f9a1c0b7e"  # the fake's "good" token; must never leak
READ_ONLY = "dop_v1_read-only-55aa"


@pytest.fixture
def api() -> Iterator[FakeDoApi]:
    with FakeDoApi(tokens={TOKEN: {"app:read", "app:update"}, READ_ONLY: {"app:read"}}) as fake:
        yield fake


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make(
    api: FakeDoApi, app_id: str, token: str = TOKEN, **kwargs: object
) -> tuple[AppPlatformLauncher, Sleeps]:
    sleeps = Sleeps()
    launcher = AppPlatformLauncher(token, app_id, base_url=api.url, sleep=sleeps, **kwargs)  # type: ignore[arg-type]
    return launcher, sleeps


def assert_no_token(text: str, token: str = TOKEN) -> None:
    assert token not in text
    assert token[8:] not in text  # not even the part after the dop_v1_ prefix


# -- App Platform --------------------------------------------------------------------------------


def test_app_platform_creates_a_deployment(api: FakeDoApi) -> None:
    app_id = api.add_app()
    launcher, sleeps = make(api, app_id)

    result = launcher.wake()

    deps = api.deployments(app_id)
    assert len(deps) == 1
    assert result == LaunchResult(True, result.detail, deps[0]["id"])
    assert deps[0]["id"] in result.detail
    assert deps[0]["force_build"] is False
    methods = [(r.method, r.path) for r in api.calls()]
    assert methods == [("GET", f"/v2/apps/{app_id}/deployments"), ("POST", f"/v2/apps/{app_id}/deployments")]
    assert api.calls("POST")[0].body == {"force_build": False}
    assert api.calls("GET")[0].query["per_page"] == ["20"]
    assert all(r.authorized for r in api.calls())
    assert sleeps.calls == []


@pytest.mark.parametrize("phase", sorted(IN_PROGRESS_PHASES))
def test_app_platform_does_not_start_a_second_runner_while_one_is_in_progress(
    api: FakeDoApi, phase: str
) -> None:
    app_id = api.add_app()
    launcher, _ = make(api, app_id)
    first = launcher.wake()
    assert first.started and first.id
    api.set_phase(app_id, first.id, phase)

    second = launcher.wake()

    assert second.started is False
    assert second.id == first.id
    assert second.detail == f"a runner deployment is already in progress: {first.id}"
    assert len(api.deployments(app_id)) == 1
    assert len(api.calls("POST")) == 1


@pytest.mark.parametrize("finished", ["ACTIVE", "SUPERSEDED", "ERROR", "CANCELED"])
def test_app_platform_starts_again_once_the_previous_deployment_finished(
    api: FakeDoApi, finished: str
) -> None:
    app_id = api.add_app()
    launcher, _ = make(api, app_id)
    first = launcher.wake()
    assert first.id
    api.set_phase(app_id, first.id, finished)

    second = launcher.wake()

    assert second.started is True
    assert second.id not in (None, first.id)
    assert len(api.deployments(app_id)) == 2


def test_app_platform_retries_429_honouring_retry_after(api: FakeDoApi) -> None:
    app_id = api.add_app()
    api.fail_next(429, times=2, headers={"retry-after": "7", "ratelimit-remaining": "0"})
    launcher, sleeps = make(api, app_id)

    result = launcher.wake()

    assert result.started is True
    assert sleeps.calls == [7.0, 7.0]
    assert [r.method for r in api.calls()] == ["GET", "GET", "GET", "POST"]


def test_app_platform_retries_5xx_with_exponential_backoff(api: FakeDoApi) -> None:
    app_id = api.add_app()
    api.fail_next(503, times=3, method="GET")
    launcher, sleeps = make(api, app_id, backoff=0.5)

    result = launcher.wake()

    assert result.started is True
    assert sleeps.calls == [0.5, 1.0, 2.0]
    assert [r.method for r in api.calls()] == ["GET"] * 4 + ["POST"]
    assert len(api.deployments(app_id)) == 1


def test_app_platform_failed_post_lists_again_before_retrying(api: FakeDoApi) -> None:
    app_id = api.add_app()
    api.fail_next(500, times=2, method="POST")
    launcher, sleeps = make(api, app_id, backoff=0.5)

    result = launcher.wake()

    assert result.started is True
    assert sleeps.calls == [0.5, 1.0]
    assert [r.method for r in api.calls()] == ["GET", "POST"] * 3
    assert len(api.deployments(app_id)) == 1


def test_app_platform_post_that_failed_after_creating_is_not_repeated(api: FakeDoApi) -> None:
    app_id = api.add_app()
    api.fail_next(502, times=1, method="POST", apply_first=True)  # created, but the answer is lost
    launcher, sleeps = make(api, app_id)

    result = launcher.wake()

    deps = api.deployments(app_id)
    assert len(deps) == 1  # no second deployment
    assert result.started is False
    assert result.id == deps[0]["id"]
    assert sleeps.calls == [1.0]


def test_app_platform_post_rate_limited_is_retried_in_place(api: FakeDoApi) -> None:
    app_id = api.add_app()
    api.fail_next(429, times=1, method="POST", headers={"retry-after": "4"})
    launcher, sleeps = make(api, app_id)

    assert launcher.wake().started is True
    assert sleeps.calls == [4.0]
    assert [r.method for r in api.calls()] == ["GET", "POST", "POST"]


def test_app_platform_caps_retry_after(api: FakeDoApi) -> None:
    app_id = api.add_app()
    api.fail_next(429, times=1, headers={"retry-after": "3600"})
    launcher, sleeps = make(api, app_id, max_delay=30.0)

    assert launcher.wake().started
    assert sleeps.calls == [30.0]


def test_app_platform_gives_up_after_bounded_attempts(api: FakeDoApi) -> None:
    app_id = api.add_app()
    api.fail_next(503, times=1000)
    launcher, sleeps = make(api, app_id, max_attempts=3)

    with pytest.raises(LauncherError) as info:
        launcher.wake()

    message = str(info.value)
    assert "503" in message and "3 times" in message and "giving up" in message
    assert len(api.calls()) == 3
    assert len(sleeps.calls) == 2
    assert api.deployments(app_id) == []


def test_app_platform_gives_up_when_creating_keeps_failing(api: FakeDoApi) -> None:
    app_id = api.add_app()
    api.fail_next(500, times=1000, method="POST")
    launcher, sleeps = make(api, app_id, max_attempts=3)

    with pytest.raises(LauncherError) as info:
        launcher.wake()

    assert "failed 3 times" in str(info.value) and "HTTP 500" in str(info.value)
    assert len(api.calls("POST")) == 3
    assert len(sleeps.calls) == 2


def test_app_platform_unreachable_api_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    launcher = AppPlatformLauncher(
        TOKEN, "app-1", base_url=f"http://127.0.0.1:{port}", max_attempts=2, sleep=sleeps, timeout=(2, 2)
    )
    with pytest.raises(LauncherError) as info:
        launcher.wake()
    assert "could not reach the DigitalOcean API" in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert len(sleeps.calls) == 1
    assert_no_token(str(info.value))


def test_app_platform_bad_token_is_a_clear_error_without_the_token(
    api: FakeDoApi, caplog: pytest.LogCaptureFixture
) -> None:
    app_id = api.add_app()
    wrong = "dop_v1_wrong-secret-token-0123456789"
    launcher, sleeps = make(api, app_id, token=wrong)

    with caplog.at_level(logging.DEBUG), pytest.raises(ColdCopyError) as info:
        launcher.wake()

    err = info.value
    assert "401" in err.message
    assert err.hint is not None and "DO_API_TOKEN" in err.hint
    for text in (str(err), repr(err), err.hint, repr(launcher), caplog.text):
        assert_no_token(text, wrong)
    assert sleeps.calls == []  # a bad token is not retried
    assert [r.authorized for r in api.calls()] == [False]


def test_app_platform_token_without_update_scope(api: FakeDoApi) -> None:
    app_id = api.add_app()
    launcher, _ = make(api, app_id, token=READ_ONLY)

    with pytest.raises(LauncherError) as info:
        launcher.wake()

    assert "403" in info.value.message
    assert info.value.hint is not None and "app:update" in info.value.hint
    assert_no_token(str(info.value), READ_ONLY)
    assert api.deployments(app_id) == []


def test_app_platform_unknown_app_points_at_runner_app_id(api: FakeDoApi) -> None:
    launcher, _ = make(api, "4f6c71e2-1e90-4762-9fee-6cc4a0a9f2cf")

    with pytest.raises(LauncherError) as info:
        launcher.wake()

    assert "404" in info.value.message
    assert info.value.hint is not None and "RUNNER_APP_ID" in info.value.hint


def test_app_platform_retries_are_logged_without_the_token(
    api: FakeDoApi, caplog: pytest.LogCaptureFixture
) -> None:
    app_id = api.add_app()
    api.fail_next(429, times=1, headers={"retry-after": "2"})
    launcher, _ = make(api, app_id)

    with caplog.at_level(logging.DEBUG):
        launcher.wake()

    assert "429" in caplog.text and "retrying in 2.0 s" in caplog.text
    assert_no_token(caplog.text)
    assert_no_token(repr(launcher))


@pytest.mark.parametrize(
    ("token", "app_id", "hint"),
    [
        ("", "app-1", "DO_API_TOKEN"),
        (TOKEN, "", "RUNNER_APP_ID"),
        (TOKEN, "../../v2/account", "RUNNER_APP_ID"),
    ],
)
def test_app_platform_rejects_bad_settings_before_calling(token: str, app_id: str, hint: str) -> None:
    with pytest.raises(LauncherError) as info:
        AppPlatformLauncher(token, app_id)
    assert info.value.hint is not None and hint in info.value.hint
    assert_no_token(str(info.value))


# -- local ---------------------------------------------------------------------------------------


def test_local_launcher_really_starts_a_detached_process(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    log_file = tmp_path / "logs" / "runner.log"
    script = (
        "import os, sys; "
        "value = os.environ['COLDCOPY_TEST_VALUE']; "
        "open(sys.argv[1], 'w').write(f'{os.getpid()} {os.getsid(0)} {value}'); "
        "print('runner says hello')"
    )
    launcher = LocalLauncher(
        env={"COLDCOPY_TEST_VALUE": "s3cr3t-value"},
        log_path=log_file,
        argv=[sys.executable, "-c", script, str(marker)],
    )

    result = launcher.wake()

    assert result.started is True
    assert launcher.process is not None
    assert launcher.process.wait(timeout=60) == 0
    pid, sid, value = marker.read_text().split()
    assert result.id == pid == str(launcher.process.pid)
    assert sid == pid  # its own session: detached from ours
    assert value == "s3cr3t-value"
    assert "runner says hello" in log_file.read_text()
    assert "s3cr3t-value" not in repr(launcher)


def test_local_launcher_default_command_is_the_worker() -> None:
    launcher = LocalLauncher()
    assert launcher.argv == [sys.executable, "-m", "coldcopy", "worker"]


def test_local_launcher_reports_a_missing_command(tmp_path: Path) -> None:
    launcher = LocalLauncher(argv=[str(tmp_path / "no-such-runner")])
    with pytest.raises(LauncherError) as info:
        launcher.wake()
    assert "could not start the local runner" in info.value.message


# -- docker --------------------------------------------------------------------------------------


def test_docker_launcher_without_an_engine_is_a_clear_error(tmp_path: Path) -> None:
    launcher = DockerLauncher(
        "registry.digitalocean.com/example/coldcopy-runner:test",
        env={"BACKUP_ENCRYPTION_KEY": "k-very-secret"},
        base_url=f"unix://{tmp_path}/no-docker.sock",
    )
    assert launcher.name == "docker"
    assert launcher.command == ["coldcopy", "worker"]

    with pytest.raises(LauncherError) as info:
        launcher.wake()

    assert "no Docker engine is reachable" in info.value.message
    assert info.value.hint is not None and "DOCKER_HOST" in info.value.hint
    assert "k-very-secret" not in str(info.value) + repr(launcher)


def test_docker_launcher_from_env_without_an_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    with pytest.raises(LauncherError, match="no Docker engine is reachable"):
        DockerLauncher("coldcopy-runner:test").wake()


def test_docker_launcher_needs_an_image() -> None:
    with pytest.raises(LauncherError):
        DockerLauncher("")


# -- factory -------------------------------------------------------------------------------------


def test_launcher_from_settings_builds_each_kind(tmp_path: Path) -> None:
    local = launcher_from_settings("local", log_path=tmp_path / "x.log")
    docker = launcher_from_settings("docker", image="coldcopy-runner:test")
    app = launcher_from_settings("app-platform", token=TOKEN, app_id="app-1")
    assert isinstance(local, LocalLauncher) and local.name == "local"
    assert isinstance(docker, DockerLauncher) and docker.name == "docker"
    assert isinstance(app, AppPlatformLauncher) and app.name == "app-platform"


def test_launcher_from_settings_rejects_unknown_kinds() -> None:
    with pytest.raises(ColdCopyError) as info:
        launcher_from_settings("kubernetes")
    assert "kubernetes" in info.value.message
    assert info.value.hint is not None
    for kind in ("app-platform", "docker", "local"):
        assert kind in info.value.hint


def test_a_docker_runner_gets_every_setting_but_the_api_tokens() -> None:
    """A container inherits nothing: it is handed the settings' variables, as given, except the
    monitor's and the launcher's tokens (no job uses them), and nothing that is not a setting."""
    given = {
        "DB_HOST": "db.internal",
        "DB_NAME": "app",
        "DO_SPACES_BUCKET": "backups",
        "VERIFY_SANITY_QUERIES": "SELECT count(*) FROM users > 0",
        "VERIFY_STATEMENT_TIMEOUT_SECONDS": "30",
        "SMTP_PASSWORD": " spaced ",
        "ALERT_EMAIL": "ops@example.com",
        "COLDCOPY_LAUNCHER": "docker",
        "MONITOR_TOKEN": "monitor-token-value",
        "DO_API_TOKEN": "do-api-token-value",
        "PATH": "/usr/bin",
        "HOME": "/root",
    }
    settings = load_settings(given, env_file=Path(os.devnull))
    expected = {k: v for k, v in given.items() if k not in ("MONITOR_TOKEN", "DO_API_TOKEN", "PATH", "HOME")}
    assert settings.runner_env() == expected
