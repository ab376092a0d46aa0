"""runner_image/: what can be checked without a Docker engine.

The Dockerfile parses; it runs as a non-root user; the PostgreSQL client comes from PGDG; its
command is our console script; its COPY set (through Dockerfile.dockerignore) is enough to build
the package. The App Platform spec is well-formed, a POST_DEPLOY job from DOCR with allowed values
and no secret in clear.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "runner_image" / "Dockerfile"
DOCKERIGNORE = REPO / "runner_image" / "Dockerfile.dockerignore"
APP_SPEC = REPO / "runner_image" / "app.yaml"

# openapi app_component_instance_base.yml (legacy basic-*/professional-* are deprecated)
INSTANCE_SIZES = {
    "apps-s-1vcpu-0.5gb", "apps-s-1vcpu-1gb-fixed", "apps-s-1vcpu-1gb", "apps-s-1vcpu-2gb",
    "apps-s-2vcpu-4gb", "apps-d-1vcpu-0.5gb", "apps-d-1vcpu-1gb", "apps-d-1vcpu-2gb",
    "apps-d-1vcpu-4gb", "apps-d-2vcpu-4gb", "apps-d-2vcpu-8gb", "apps-d-4vcpu-8gb",
    "apps-d-4vcpu-16gb", "apps-d-8vcpu-32gb",
}  # fmt: skip
JOB_KINDS = {"UNSPECIFIED", "PRE_DEPLOY", "POST_DEPLOY", "FAILED_DEPLOY", "SCHEDULED"}
JOB_KEYS = {
    "name", "image", "git", "github", "gitlab", "bitbucket", "dockerfile_path", "build_command", "source_dir",
    "environment_slug", "run_command", "envs", "instance_size_slug", "instance_count", "kind", "schedule",
    "termination", "timeout", "alerts", "log_destinations",
}  # fmt: skip
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ENCRYPTION_KEY|SPACES_KEY|CREDENTIAL)")
PLACEHOLDER = re.compile(r"^\$\{\??[A-Z_][A-Z0-9_]*\}$")  # ${?NAME}: optional (scripts/deploy.sh)
DURATION = re.compile(r"^(?=\d)(\d+h)?(\d+m)?(\d+s)?$")


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE), cache_content=True)


def instructions(dfp: DockerfileParser, name: str) -> list[str]:
    return [str(i["value"]) for i in dfp.structure if i["instruction"] == name]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    doc = yaml.safe_load(APP_SPEC.read_text())
    assert isinstance(doc, dict)
    return doc


# -- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_parses_with_one_stage_from_python_311_or_newer(dockerfile: DockerfileParser) -> None:
    assert len(instructions(dockerfile, "FROM")) == 1
    m = re.match(r"python:3\.(\d+)", dockerfile.baseimage)
    assert m and int(m.group(1)) >= 11, dockerfile.baseimage
    assert "bookworm" in dockerfile.baseimage  # a Debian release that PGDG serves


def test_runs_as_a_non_root_user(dockerfile: DockerfileParser) -> None:
    users = instructions(dockerfile, "USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_user = max(i for i, ins in enumerate(dockerfile.structure) if ins["instruction"] == "USER")
    later = [ins["instruction"] for ins in dockerfile.structure[last_user:]]
    assert (
        "RUN" not in later and "COPY" not in later
    )  # nothing runs or lands after dropping privileges as root
    useradd = next(r for r in instructions(dockerfile, "RUN") if "useradd" in r)
    assert f"--uid {user}" in useradd


def test_postgresql_client_comes_from_pgdg(dockerfile: DockerfileParser) -> None:
    apt = next(r for r in instructions(dockerfile, "RUN") if "postgresql-client" in r)
    assert "/usr/share/postgresql-common/pgdg/apt.postgresql.org.sh" in apt  # adds apt.postgresql.org
    assert apt.index("apt.postgresql.org.sh") < apt.index(
        "install -y --no-install-recommends postgresql-client"
    )
    assert "PG_MIN_MAJOR" in apt  # the build fails if Debian's older client sneaks in
    assert int(dockerfile.args["PG_MIN_MAJOR"]) >= 17
    assert "rm -rf /var/lib/apt/lists/*" in apt


def test_server_binaries_for_base_backup_drills(dockerfile: DockerfileParser) -> None:
    """A base-backup drill starts a server of the backup's major: the image installs those majors."""
    apt = next(r for r in instructions(dockerfile, "RUN") if "postgresql-client" in r)
    assert 'apt-get install -y --no-install-recommends "postgresql-$v"' in apt
    assert "for v in $PG_SERVER_MAJORS" in apt
    majors = dockerfile.args["PG_SERVER_MAJORS"].strip('"').split()
    assert majors and all(int(m) >= 15 for m in majors)


def test_command_is_coldcopy_worker_under_an_init(dockerfile: DockerfileParser) -> None:
    entrypoint = json.loads(instructions(dockerfile, "ENTRYPOINT")[-1])
    cmd = json.loads(instructions(dockerfile, "CMD")[-1])
    assert entrypoint == ["/usr/bin/tini", "--"]
    assert cmd == ["coldcopy", "worker"]


def test_coldcopy_worker_is_a_declared_console_script() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("coldcopy") == "coldcopy.__main__:main"
    console = Path(sys.executable).parent / "coldcopy"
    assert console.exists(), "the venv has no coldcopy console script: pip install -e ."
    proc = subprocess.run(
        [str(console), "worker", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "worker" in proc.stdout


def _ignored(rel: str, rules: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; a pattern matching a parent matches its files."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for rule in rules:
        negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        patterns = {pattern, pattern.replace("**/", "*/"), pattern.replace("**/", "")}
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns):
            ignored = not negate
    return ignored


def _context_files() -> list[Path]:
    """Files docker would send as build context, per Dockerfile.dockerignore."""
    rules = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    reincluded = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    kept = []
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        # Prune directories that are ignored and hold nothing a "!" rule brings back.
        dirs[:] = [
            d for d in dirs
            if not _ignored(rel_root + d, rules) or any(r.startswith(rel_root + d + "/") for r in reincluded)
        ]  # fmt: skip
        kept += [Path(root) / f for f in files if not _ignored(rel_root + f, rules)]
    return kept


def test_build_context_is_small_and_has_what_copy_needs(dockerfile: DockerfileParser) -> None:
    context = {p.relative_to(REPO).as_posix() for p in _context_files()}
    assert "pyproject.toml" in context and "README.md" in context
    assert any(p.startswith("lib/coldcopy/") for p in context)
    assert not any(p.startswith((".venv/", ".cache/", "tests/", "packages/")) or p == ".env" for p in context)
    for copy in instructions(dockerfile, "COPY"):
        for source in copy.split()[:-1]:
            assert any(p == source.rstrip("/") or p.startswith(source) for p in context), source


def test_the_copied_files_build_the_package(tmp_path: Path) -> None:
    """`pip install .` in the image sees only the context files: they must make a wheel (isolated build)."""
    for path in _context_files():
        target = tmp_path / "ctx" / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
         str(tmp_path / "wheels"), str(tmp_path / "ctx")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheel = next((tmp_path / "wheels").glob("coldcopy-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "coldcopy/cli/main.py" in names and "coldcopy/ops/launchers.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "coldcopy = coldcopy.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# -- App Platform spec ---------------------------------------------------------------------------


def test_app_spec_has_one_post_deploy_job_from_docr(spec: dict[str, Any]) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9-]{1,30}[a-z0-9]", spec["name"])
    assert set(spec) <= {"name", "region", "jobs", "alerts", "envs", "features", "ingress"}
    assert not any(k in spec for k in ("services", "workers", "static_sites", "functions", "databases"))
    (job,) = spec["jobs"]
    assert set(job) <= JOB_KEYS, set(job) - JOB_KEYS
    assert job["kind"] == "POST_DEPLOY" and job["kind"] in JOB_KINDS
    assert re.fullmatch(r"[a-z][a-z0-9-]{1,30}[a-z0-9]", job["name"])
    image = job["image"]
    assert image["registry_type"] == "DOCR"
    assert "registry" not in image  # empty for DOCR: the account's own registry
    assert image["repository"] == "coldcopy-runner"
    assert "tag" in image or "digest" in image
    assert "run_command" not in job  # the image's CMD (coldcopy worker) is the one command


def test_app_spec_job_values_are_allowed(spec: dict[str, Any]) -> None:
    job = spec["jobs"][0]
    assert job["instance_size_slug"] in INSTANCE_SIZES
    assert job.get("instance_count", 1) == 1  # one runner drains the queue
    assert isinstance(job["timeout"], str) and DURATION.match(job["timeout"]), job["timeout"]
    grace = job["termination"]["grace_period_seconds"]
    assert isinstance(grace, int) and 1 <= grace <= 600
    for alert in spec.get("alerts", []):
        assert alert["rule"] in {"DEPLOYMENT_FAILED", "DEPLOYMENT_LIVE", "DOMAIN_FAILED", "DOMAIN_LIVE"}


def test_app_spec_envs_are_well_formed_and_secrets_are_not_in_clear(spec: dict[str, Any]) -> None:
    envs = spec["jobs"][0]["envs"]
    keys = [e["key"] for e in envs]
    assert len(keys) == len(set(keys))
    for env in envs:
        assert set(env) <= {"key", "value", "scope", "type"}
        assert env.get("scope", "RUN_TIME") in {"RUN_TIME", "BUILD_TIME", "RUN_AND_BUILD_TIME"}
        assert env.get("type", "GENERAL") in {"GENERAL", "SECRET"}
        assert PLACEHOLDER.match(str(env.get("value", ""))), f"{env['key']}: literal value in the spec"
        if SECRETISH.search(env["key"]):
            assert env.get("type") == "SECRET", f"{env['key']} must be type SECRET"
    for needed in ("DB_HOST", "DB_PASSWORD", "DO_SPACES_SECRET", "DO_SPACES_BUCKET", "BACKUP_ENCRYPTION_KEY"):
        assert needed in keys


def test_app_spec_placeholders_are_documented() -> None:
    documented = {
        line.split("=", 1)[0].strip()
        for line in (REPO / "deploy" / "functions.env.example").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    used = set(re.findall(r"\$\{\??([A-Z_][A-Z0-9_]*)\}", APP_SPEC.read_text()))
    assert used and used <= documented, used - documented


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("kind: POST_DEPLOY", "kind: PRE_DEPLOYY", "kind"),
        ("instance_size_slug: apps-s-1vcpu-2gb", "instance_size_slug: basic-xxs", "instance size"),
        ("timeout: 2h", "timeout: two hours", "timeout"),
        ("grace_period_seconds: 120", "grace_period_seconds: 900", "grace"),
        ("key: DB_PASSWORD, value: \"${DB_PASSWORD}\", scope: RUN_TIME, type: SECRET",
         "key: DB_PASSWORD, value: \"${DB_PASSWORD}\", scope: RUN_TIME, type: GENERAL", "secret type"),
        ('value: "${DO_SPACES_SECRET}"', 'value: "abc123"', "literal"),
    ],
)  # fmt: skip
def test_app_spec_checks_can_fail(tmp_path: Path, old: str, new: str, why: str) -> None:
    text = APP_SPEC.read_text()
    assert old in text, why
    broken = yaml.safe_load(text.replace(old, new, 1))
    checks = [
        test_app_spec_has_one_post_deploy_job_from_docr,
        test_app_spec_job_values_are_allowed,
        test_app_spec_envs_are_well_formed_and_secrets_are_not_in_clear,
    ]
    failed = 0
    for check in checks:
        try:
            check(broken)
        except AssertionError:
            failed += 1
    assert failed, f"a broken spec ({why}) passed every check"
