"""scripts/deploy.sh: prerequisite checks, --dry-run, and the real sequence against a fake doctl."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coldcopy.config import load_settings, normalise_pem
from coldcopy.errors import ConfigError
from test_project_yml import project_variables, run_validator

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "deploy.sh"
EXAMPLE = REPO / "deploy" / "functions.env.example"
NEW_APP_ID = "4f6c71e2-1e90-4762-9fee-6cc4a0a9f2cf"
SECRET = 'pa"ss\\word-7Qx'  # quote and backslash: must survive YAML rendering, never be printed

FAKE_DOCTL = r"""#!/usr/bin/env bash
# Records each call; answers like doctl would for the few commands deploy.sh uses.
log="$FAKE_DOCTL_LOG"
printf '%s\n' "$*" >> "$log"
case "$1 $2" in
  "apps create"|"apps update")
    spec=""; prev=""
    for a in "$@"; do [ "$prev" = "--spec" ] && spec="$a"; prev="$a"; done
    cp "$spec" "$FAKE_DOCTL_LOG.spec"
    stat -c '%a' "$spec" > "$FAKE_DOCTL_LOG.mode"
    [ "$1 $2" = "apps create" ] && echo "$FAKE_NEW_APP_ID"
    exit 0 ;;
  "registry repository") printf '%s\n' latest "$FAKE_TAGS" ;;
  "serverless status") exit "${FAKE_SLS_STATUS:-0}" ;;
  "serverless deploy") echo "RUNNER_APP_ID=$RUNNER_APP_ID" >> "$log.deployenv"; env -0 > "$log.env0" ;;
  *) echo "fake doctl: unexpected $*" >&2; exit 9 ;;
esac
"""


def write_env(path: Path, **overrides: str) -> Path:
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0]
        if "=" in line and not line.startswith("#") and key in overrides:
            line = f"{key}={overrides.pop(key)}"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fake_doctl(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    doctl = bindir / "doctl"
    doctl.write_text(FAKE_DOCTL)
    doctl.chmod(doctl.stat().st_mode | stat.S_IEXEC)
    return {
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
        "FAKE_DOCTL_LOG": str(tmp_path / "doctl.log"),
        "FAKE_NEW_APP_ID": NEW_APP_ID,
        "FAKE_TAGS": "0.1.0",
    }


def no_doctl_path(tmp_path: Path) -> str:
    """A PATH with bash, python3 and coreutils but no doctl."""
    bindir = tmp_path / "nodoctl"
    bindir.mkdir(exist_ok=True)
    (bindir / "python3").symlink_to(sys.executable)
    for tool in ("bash", "sed", "grep", "tr", "mktemp", "rm", "dirname", "cat", "env"):
        found = shutil.which(tool)
        if found and not (bindir / tool).exists():
            (bindir / tool).symlink_to(found)
    return str(bindir)


def deploy(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"HOME": os.environ.get("HOME", "/tmp"), "PATH": os.environ.get("PATH", "")}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **env},
        check=False,
    )


def test_dry_run_prints_the_commands_without_doctl_or_secrets(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", DB_PASSWORD=SECRET)

    proc = deploy("--dry-run", "--env", str(env_file), env={"PATH": no_doctl_path(tmp_path)})

    assert proc.returncode == 0, proc.stderr
    assert "doctl is not installed" in proc.stderr
    assert "+ doctl apps create --spec" in proc.stdout
    assert f"+ doctl serverless deploy {REPO} --env {env_file}" in proc.stdout
    assert "--remote-build" not in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    assert "nothing was changed" in proc.stderr


def test_dry_run_updates_an_existing_app(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", RUNNER_APP_ID=NEW_APP_ID)
    proc = deploy("--dry-run", "--env", str(env_file), env={"PATH": no_doctl_path(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert f"+ doctl apps update {NEW_APP_ID} --spec" in proc.stdout
    assert "apps create" not in proc.stdout


def test_no_python_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bash").symlink_to(shutil.which("bash") or "/bin/bash")
    (empty / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    proc = deploy("--dry-run", env={"PATH": str(empty)})
    assert proc.returncode != 0
    assert "python3 is needed" in proc.stderr


def test_missing_env_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = deploy("--dry-run", "--env", str(tmp_path / "nope.env"), env={"PATH": no_doctl_path(tmp_path)})
    assert proc.returncode != 0
    assert "deploy/functions.env.example" in proc.stderr


def test_missing_or_empty_variables_are_named(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", MONITOR_TOKEN="", DB_HOST="")
    (tmp_path / "trimmed.env").write_text(
        "\n".join(line for line in env_file.read_text().splitlines() if not line.startswith("SMTP_FROM="))
    )
    proc = deploy("--dry-run", "--env", str(tmp_path / "trimmed.env"), env={"PATH": no_doctl_path(tmp_path)})
    assert proc.returncode != 0
    for name in ("MONITOR_TOKEN", "DB_HOST", "SMTP_FROM"):
        assert name in proc.stderr


def test_functions_only_needs_the_runner_app_id(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env")  # the example's all-zero id means "not created yet"
    proc = deploy(
        "--dry-run", "--functions-only", "--env", str(env_file), env={"PATH": no_doctl_path(tmp_path)}
    )
    assert proc.returncode != 0
    assert "RUNNER_APP_ID" in proc.stderr


def test_real_run_creates_the_app_then_deploys_functions_with_its_id(
    tmp_path: Path, fake_doctl: dict[str, str]
) -> None:
    env_file = write_env(tmp_path / ".env", DB_PASSWORD=SECRET)

    proc = deploy("--env", str(env_file), env=fake_doctl)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = Path(fake_doctl["FAKE_DOCTL_LOG"]).read_text().splitlines()
    assert calls[0] == "registry repository list-tags coldcopy-runner --format Tag --no-header"
    assert calls[1].startswith("apps create --spec ")
    assert calls[2] == "serverless status"
    assert calls[3] == f"serverless deploy {REPO} --env {env_file}"
    assert (
        Path(fake_doctl["FAKE_DOCTL_LOG"] + ".deployenv").read_text().strip() == f"RUNNER_APP_ID={NEW_APP_ID}"
    )
    assert f"add RUNNER_APP_ID={NEW_APP_ID}" in proc.stderr
    # The spec doctl received: rendered, private, the secret intact, the temporary file gone.
    assert Path(fake_doctl["FAKE_DOCTL_LOG"] + ".mode").read_text().strip() == "600"
    rendered = yaml.safe_load(Path(fake_doctl["FAKE_DOCTL_LOG"] + ".spec").read_text())
    envs = {e["key"]: e for e in rendered["jobs"][0]["envs"]}
    assert envs["DB_PASSWORD"]["value"] == SECRET and envs["DB_PASSWORD"]["type"] == "SECRET"
    assert rendered["jobs"][0]["image"]["tag"] == "0.1.0"
    assert "${" not in Path(fake_doctl["FAKE_DOCTL_LOG"] + ".spec").read_text()
    spec_path = Path(calls[1].split("--spec ")[1].split()[0])
    assert not spec_path.exists()
    assert SECRET not in proc.stdout + proc.stderr


def test_real_run_refuses_when_the_image_is_not_pushed(tmp_path: Path, fake_doctl: dict[str, str]) -> None:
    env_file = write_env(tmp_path / ".env", RUNNER_IMAGE_TAG="9.9.9")
    proc = deploy("--env", str(env_file), env=fake_doctl)
    assert proc.returncode != 0
    assert "coldcopy-runner:9.9.9 is not in your registry" in proc.stderr
    assert "apps create" not in Path(fake_doctl["FAKE_DOCTL_LOG"]).read_text()


def test_real_run_refuses_without_a_functions_namespace(tmp_path: Path, fake_doctl: dict[str, str]) -> None:
    env_file = write_env(tmp_path / ".env", RUNNER_APP_ID=NEW_APP_ID)
    proc = deploy("--functions-only", "--env", str(env_file), env={**fake_doctl, "FAKE_SLS_STATUS": "1"})
    assert proc.returncode != 0
    assert "doctl serverless connect" in proc.stderr
    assert "serverless deploy" not in Path(fake_doctl["FAKE_DOCTL_LOG"]).read_text()


def test_the_runner_gets_the_database_ca_as_a_value(tmp_path: Path, fake_doctl: dict[str, str]) -> None:
    """The one-line PEM of deploy/functions.env.example reaches the runner job as a certificate."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-days", "1", "-subj", "/CN=Deploy test CA", "-keyout", "ca.key", "-out", "ca.crt"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    pem = (tmp_path / "ca.crt").read_text()
    one_line = "\\n".join(pem.strip().splitlines())  # what the example's awk line prints
    env_file = write_env(tmp_path / ".env", DB_SSLROOTCERT=one_line)

    proc = deploy("--env", str(env_file), env=fake_doctl)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    rendered = yaml.safe_load(Path(fake_doctl["FAKE_DOCTL_LOG"] + ".spec").read_text())
    envs = {e["key"]: e["value"] for e in rendered["jobs"][0]["envs"]}
    assert envs["DB_SSLMODE"] == "verify-full"
    root = load_settings({"DB_SSLROOTCERT": envs["DB_SSLROOTCERT"], "COLDCOPY_ENV_FILE": os.devnull})
    assert root.db_sslrootcert is not None and root.db_sslrootcert.pem == normalise_pem(pem)
    # The example's placeholder is refused when the runner starts, never taken for a certificate.
    example = next(ln for ln in EXAMPLE.read_text().splitlines() if ln.startswith("DB_SSLROOTCERT="))
    with pytest.raises(ConfigError):
        load_settings({"DB_SSLROOTCERT": example.split("=", 1)[1], "COLDCOPY_ENV_FILE": os.devnull})


def test_the_functions_get_a_password_with_quote_and_backslash_intact(
    tmp_path: Path, fake_doctl: dict[str, str]
) -> None:
    """The deployer pastes values into project.yml's double quotes as raw text; deploy.sh hands
    doctl the escaped values, which the deployer reads before the env file."""
    env_file = write_env(tmp_path / ".env", DB_PASSWORD=SECRET, RUNNER_APP_ID=NEW_APP_ID)

    proc = deploy("--functions-only", "--env", str(env_file), env=fake_doctl)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = dict(
        item.split("=", 1)
        for item in Path(fake_doctl["FAKE_DOCTL_LOG"] + ".env0").read_text().split("\0")
        if "=" in item
    )
    in_file = dict(ln.split("=", 1) for ln in env_file.read_text().splitlines() if ln[:1].isupper())
    given = {name: seen.get(name) or in_file[name] for name in project_variables(REPO)}  # as it reads
    as_env = tmp_path / "doctl-env.json"  # the deployer reads a JSON env file as it reads its env
    as_env.write_text(json.dumps(given))
    result = run_validator(REPO, as_env)
    assert result["ok"], result.get("error")
    scheduler = next(p for p in result["spec"]["packages"] if p["name"] == "scheduler")
    drain = next(a for a in scheduler["actions"] if a["name"] == "changes")
    assert drain["environment"]["DB_PASSWORD"] == SECRET
    assert drain["environment"]["DB_SSLROOTCERT"] == in_file["DB_SSLROOTCERT"]  # as the runner gets it
    assert SECRET not in proc.stdout + proc.stderr


def test_the_runner_gets_the_storage_settings_only_when_they_are_set(
    tmp_path: Path, fake_doctl: dict[str, str]
) -> None:
    """SUPABASE_STORAGE_* are optional: left out of the runner's spec when empty, passed through
    (the key and secret as SECRET) when set, and refused when only some of them are."""
    spec = Path(fake_doctl["FAKE_DOCTL_LOG"] + ".spec")

    def runner_envs() -> dict[str, dict[str, str]]:
        return {e["key"]: e for e in yaml.safe_load(spec.read_text())["jobs"][0]["envs"]}

    proc = deploy("--runner-only", "--env", str(write_env(tmp_path / "a.env")), env=fake_doctl)
    assert proc.returncode == 0, proc.stderr
    envs = runner_envs()
    assert "DB_HOST" in envs and not [k for k in envs if k.startswith("SUPABASE_STORAGE_")]

    storage_secret = 'st"or\\age-secret'
    values = {
        "SUPABASE_STORAGE_ENDPOINT": "https://abcd.supabase.co/storage/v1/s3",
        "SUPABASE_STORAGE_REGION": "eu-central-1",
        "SUPABASE_STORAGE_KEY": "storage-key-id",
        "SUPABASE_STORAGE_SECRET": storage_secret,
    }
    proc = deploy("--runner-only", "--env", str(write_env(tmp_path / "b.env", **values)), env=fake_doctl)
    assert proc.returncode == 0, proc.stderr
    envs = runner_envs()
    assert {k: envs[k]["value"] for k in values} == values
    assert envs["SUPABASE_STORAGE_SECRET"]["type"] == envs["SUPABASE_STORAGE_KEY"]["type"] == "SECRET"
    assert "${" not in spec.read_text() and storage_secret not in proc.stdout + proc.stderr
    runner = load_settings({**{k: envs[k]["value"] for k in values}, "COLDCOPY_ENV_FILE": os.devnull})
    assert runner.files_configured and runner.files_secret.reveal() == storage_secret

    partial = {"SUPABASE_STORAGE_ENDPOINT": values["SUPABASE_STORAGE_ENDPOINT"]}
    proc = deploy("--runner-only", "--env", str(write_env(tmp_path / "c.env", **partial)), env=fake_doctl)
    assert proc.returncode != 0
    assert "SUPABASE_STORAGE_KEY SUPABASE_STORAGE_SECRET" in proc.stderr
