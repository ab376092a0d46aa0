"""project.yml: validated offline by the deployer library itself, plus what the deployer does not check.

The deployer (@nimbella/nimbella-deployer 4.3.10, run by tests/deployer/validate.js) checks keys,
triggers, cron syntax, limits types, webSecure, runtimes and the ${VAR} substitution from an env
file. ``structural_problems`` adds our own rules: every function has its directory and
__main__.py, .include paths resolve, at most 3 scheduled triggers, web: false where it must be,
no secret literal, named packages only, runtime python:3.11+, explicit limits in range.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VALIDATOR = REPO / "tests" / "deployer" / "validate.js"
SETUP_SCRIPT = REPO / "scripts" / "setup_node_tools.sh"
ENV_EXAMPLE = REPO / "deploy" / "functions.env.example"
DEPLOYER_VERSION = "4.3.10"

WEB_FUNCTIONS = {
    "health", "status", "backups", "backup", "verify", "metrics",
    "alerts", "restore-test", "recovery-time", "runs", "dashboard",
}  # fmt: skip
EXPECTED = {"monitor": WEB_FUNCTIONS, "scheduler": {"tick", "changes"}}
NON_WEB = {("scheduler", "tick"), ("scheduler", "changes")}
MAX_TRIGGERS = 3
BUILD_OUTPUTS = {"virtualenv"}  # .include entries that the function's build.sh creates
REQUIREMENTS = {
    ("monitor", None): {"boto3"},
    ("scheduler", "tick"): {"boto3", "requests", "croniter"},
    ("scheduler", "changes"): {"boto3", "pg8000", "cryptography", "zstandard"},
}
#: What the change drain needs besides the common environment: the database and the backup key.
CHANGES_ENVIRONMENT = {
    "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SSLMODE", "DB_SSLROOTCERT",
    "BACKUP_ENCRYPTION_KEY",
}  # fmt: skip

# Design constants allowed as literals (not settings, not secrets): the value each package must have.
CONSTANTS = {"COLDCOPY_LAUNCHER": {"monitor": "none", "scheduler": "app-platform"}}
VAR = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
ONLY_VAR = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
SECRETISH_KEY = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
SECRET_LOOKING_TEXT = [
    re.compile(r"dop_v1_[0-9a-f]{16,}"),  # DigitalOcean personal access token
    re.compile(r"\bDO[0-9A-Z]{18}\b"),  # Spaces access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"postgres(ql)?://[^:\s]+:[^@\s]+@"),  # URL with an inline password
]

WEB_MAIN = """from coldcopy.functions.web import handle


def main(event, context=None):
    return handle("{fn}", event, context)
"""
SCHEDULED_MAIN = """from coldcopy.functions.{fn} import run


def main(event, context=None):
    return run(event, context)
"""


# -- helpers -------------------------------------------------------------------------------------


def project_variables(project_dir: Path) -> set[str]:
    """Every ${VAR} in project.yml: the deployer substitutes in the raw text, comments included."""
    return set(VAR.findall((project_dir / "project.yml").read_text()))


def write_dummy_env(path: Path, names: set[str]) -> Path:
    path.write_text("".join(f"{name}=dummy-{name}\n" for name in sorted(names)))
    return path


def run_validator(project_dir: Path, env_file: Path) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: install Node.js 18+ and npm, then run scripts/setup_node_tools.sh"
        )
    # A clean environment: the deployer reads the process environment before the env file.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    if "COLDCOPY_NODE_DIR" in os.environ:
        env["COLDCOPY_NODE_DIR"] = os.environ["COLDCOPY_NODE_DIR"]
    proc = subprocess.run(
        [node, str(VALIDATOR), str(project_dir), str(env_file)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    assert lines, f"validate.js printed nothing (exit {proc.returncode}); stderr:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    if result.get("missing"):
        pytest.fail(f"{result['error']} (the deployer library is needed to validate project.yml offline)")
    assert (proc.returncode == 0) == bool(result["ok"]), proc.stdout + proc.stderr
    return result


def copy_project(dest: Path) -> Path:
    shutil.copy2(REPO / "project.yml", dest / "project.yml")
    shutil.copytree(
        REPO / "packages", dest / "packages",
        ignore=shutil.ignore_patterns("virtualenv", "__deployer__.zip", ".built", "__pycache__"),
    )  # fmt: skip
    (dest / "lib").mkdir()
    (dest / "lib" / "coldcopy").symlink_to(REPO / "lib" / "coldcopy", target_is_directory=True)
    (dest / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "build_function.sh", dest / "scripts" / "build_function.sh")
    return dest


def functions_of(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for pkg in doc.get("packages") or []:
        for fn in pkg.get("functions") or pkg.get("actions") or []:
            yield pkg, fn


def environments(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "project", doc.get("environment") or {}
    yield "project parameters", doc.get("parameters") or {}
    for pkg in doc.get("packages") or []:
        yield f"package {pkg.get('name')}", pkg.get("environment") or {}
        yield f"package {pkg.get('name')} parameters", pkg.get("parameters") or {}
    for pkg, fn in functions_of(doc):
        where = f"{pkg.get('name')}/{fn.get('name')}"
        yield where, fn.get("environment") or {}
        yield f"{where} parameters", fn.get("parameters") or {}


def walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from walk(item, f"{path}[{i}]")


def structural_problems(project_dir: Path) -> list[str]:
    """What the deployer's validator lets through but a ColdCopy deployment must not have."""
    problems: list[str] = []
    text = (project_dir / "project.yml").read_text()
    doc = yaml.safe_load(text)
    triggers = 0
    for pkg in doc.get("packages") or []:
        if not pkg.get("name") or pkg.get("name") == "default":
            problems.append(
                f"package {pkg.get('name')!r}: every function must be in a named package, not 'default'"
            )
    for pkg, fn in functions_of(doc):
        name = f"{pkg.get('name')}/{fn.get('name')}"
        fn_dir = project_dir / "packages" / str(pkg.get("name")) / str(fn.get("name"))
        if not fn_dir.is_dir():
            problems.append(f"{name}: directory {fn_dir.relative_to(project_dir)} is missing")
            continue
        if not (fn_dir / "__main__.py").is_file():
            problems.append(f"{name}: __main__.py is missing")
        m = re.fullmatch(r"python:3\.(\d+)", str(fn.get("runtime", "")))
        if not m or int(m.group(1)) < 11:
            problems.append(f"{name}: runtime must be python:3.11 or newer, not {fn.get('runtime')!r}")
        limits = fn.get("limits") or {}
        timeout, memory, logs = limits.get("timeout"), limits.get("memory"), limits.get("logs")
        if not isinstance(timeout, int) or not 1000 <= timeout <= 900_000:
            problems.append(f"{name}: limits.timeout must be explicit, 1000–900000 ms (got {timeout!r})")
        if not isinstance(memory, int) or not 128 <= memory <= 1024:
            problems.append(f"{name}: limits.memory must be explicit, 128–1024 MB (got {memory!r})")
        if logs is not None and (not isinstance(logs, int) or not 0 < logs <= 256):
            problems.append(f"{name}: limits.logs must be 1–256 KB (got {logs!r})")
        if "web" not in fn:
            problems.append(f"{name}: 'web' must be explicit (the platform's default is a public web action)")
        fn_triggers = fn.get("triggers") or []
        triggers += len(fn_triggers)
        if ((pkg.get("name"), fn.get("name")) in NON_WEB or fn_triggers) and fn.get("web") is not False:
            problems.append(f"{name}: not a web endpoint, must say web: false")
        secure = fn.get("webSecure")
        if secure not in (None, False) and not (isinstance(secure, str) and ONLY_VAR.match(secure)):
            problems.append(f"{name}: webSecure must be false or a dollar-brace variable, not a literal")
        problems += include_problems(name, fn_dir)
    if triggers > MAX_TRIGGERS:
        problems.append(f"{triggers} scheduled triggers; DigitalOcean allows at most {MAX_TRIGGERS}")
    for where, env in environments(doc):
        for key, value in env.items():
            if key in CONSTANTS and where.startswith("package ") and value in CONSTANTS[key].values():
                continue
            if not (isinstance(value, str) and ONLY_VAR.match(value)):
                problems.append(
                    f"{where}: {key} must come from .env as a dollar-brace variable, not {value!r}"
                )
    for path, key, value in walk(doc):
        literal = value is not False and not isinstance(value, (dict, list))
        if SECRETISH_KEY.search(key) and literal and not (isinstance(value, str) and ONLY_VAR.match(value)):
            problems.append(f"{path}.{key}: secret-looking key with a literal value")
    for pattern in SECRET_LOOKING_TEXT:
        if pattern.search(text):
            problems.append(f"project.yml contains something that looks like a secret ({pattern.pattern})")
    return problems


def include_problems(name: str, fn_dir: Path) -> list[str]:
    include = fn_dir / ".include"
    if not include.is_file():
        return [f"{name}: .include is missing (it is the exact list of what ships)"]
    items = [line.strip() for line in include.read_text().splitlines() if line.strip()]
    problems = []
    for item in ("__main__.py", "../../../lib/coldcopy"):
        if item not in items:
            problems.append(f"{name}: .include must list {item}")
    for item in items:
        if item.startswith("/") or (".." in item and not item.startswith("../../../lib")):
            problems.append(
                f"{name}: .include item {item!r} is illegal (absolute, or '..' outside ../../../lib)"
            )
        elif item.rstrip("/") in BUILD_OUTPUTS:
            if not (fn_dir / "build.sh").is_file() or not os.access(fn_dir / "build.sh", os.X_OK):
                problems.append(
                    f"{name}: .include lists build output {item!r} but there is no executable build.sh"
                )
        elif not (fn_dir / item).exists():
            problems.append(f"{name}: .include item {item!r} does not exist")
    if (fn_dir / "build.sh").is_file() and not (fn_dir / "requirements.txt").is_file():
        problems.append(f"{name}: build.sh without requirements.txt")
    return problems


def mutate(project_dir: Path, old: str, new: str, count: int = 1) -> None:
    path = project_dir / "project.yml"
    text = path.read_text()
    assert text.count(old) >= count, f"mutation target not found: {old!r}"
    path.write_text(text.replace(old, new, count))


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = write_dummy_env(tmp_path_factory.mktemp("env") / "dummy.env", project_variables(REPO))
    result = run_validator(REPO, env)
    assert result["ok"], f"the deployer rejected project.yml: {result.get('error')}"
    spec: dict[str, Any] = result["spec"]
    return spec


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    return copy_project(tmp_path)


# -- the deployer's view -------------------------------------------------------------------------


def test_deployer_accepts_project_yml_with_every_variable_substituted(validated: dict[str, Any]) -> None:
    packages = {p["name"]: p for p in validated["packages"]}
    assert {name: {a["name"] for a in p["actions"]} for name, p in packages.items()} == EXPECTED
    for pkg in packages.values():
        for key, value in (pkg["environment"] or {}).items():
            expected = CONSTANTS[key][pkg["name"]] if key in CONSTANTS else f"dummy-{key}"
            assert value == expected, f"{pkg['name']}: {key} was not substituted from the env file"
        for action in pkg["actions"]:
            for key, value in (action.get("environment") or {}).items():
                assert value == f"dummy-{key}"
    assert not any("${" in json.dumps(p) for p in validated["packages"])


def test_deployer_sees_web_flags_runtimes_limits_and_the_two_triggers(validated: dict[str, Any]) -> None:
    triggers = []
    for pkg in validated["packages"]:
        for action in pkg["actions"]:
            assert action["runtime"] == "python:3.11"
            assert action["build"] == "build.sh"
            if pkg["name"] == "monitor":
                assert action["web"] is True and action["webSecure"] is False
                assert action["limits"] == {"timeout": 30000, "memory": 256}
            else:
                assert action["web"] is False
                assert action["limits"]["timeout"] >= 60000
            triggers += [(pkg["name"], action["name"], t) for t in action.get("triggers") or []]
    crons = {(p, f): t["sourceDetails"]["cron"] for p, f, t in triggers}
    assert len(triggers) == 2
    assert crons == {("scheduler", "tick"): "*/5 * * * *", ("scheduler", "changes"): "* * * * *"}
    assert all(t["sourceType"] == "scheduler" for _, _, t in triggers)


def test_only_the_tick_can_wake_the_runner(validated: dict[str, Any]) -> None:
    packages = {p["name"]: p for p in validated["packages"]}
    tick = next(a for a in packages["scheduler"]["actions"] if a["name"] == "tick")
    for key in ("DO_API_TOKEN", "RUNNER_APP_ID", "SMTP_HOST", "SMTP_PASSWORD", "ALERT_EMAIL"):
        assert key in tick["environment"]
    for kind in ("FULL", "VERIFY", "CLEANUP", "COMPLIANCE", "WAL_SWEEP"):
        assert f"COLDCOPY_SCHEDULE_{kind}" in tick["environment"]
    common = {"COLDCOPY_CLUSTER", "MONITOR_TOKEN"} | {
        f"DO_SPACES_{x}" for x in ("KEY", "SECRET", "BUCKET", "REGION", "ENDPOINT")
    }
    for name, pkg in packages.items():
        assert set(pkg["environment"]) == common | {"COLDCOPY_LAUNCHER"}
        assert pkg["environment"]["COLDCOPY_LAUNCHER"] == CONSTANTS["COLDCOPY_LAUNCHER"][name]
    for action in packages["monitor"]["actions"]:  # public endpoints never hold the DO API token
        assert "DO_API_TOKEN" not in (action.get("environment") or {})


def test_the_change_drain_gets_the_database_and_nothing_optional(validated: dict[str, Any]) -> None:
    """Only settings every deployment has: the deployer and deploy.sh refuse an empty placeholder,
    so an optional setting (COLDCOPY_CHANGES_*, ALERT_*) there would be forced on everyone."""
    packages = {p["name"]: p for p in validated["packages"]}
    drain = next(a for a in packages["scheduler"]["actions"] if a["name"] == "changes")
    assert set(drain["environment"]) == CHANGES_ENVIRONMENT
    runner = yaml.safe_load((REPO / "runner_image" / "app.yaml").read_text())
    assert {e["key"] for e in runner["jobs"][0]["envs"]} >= CHANGES_ENVIRONMENT  # required already
    assert drain["limits"]["timeout"] >= 1000 * (50 + 5)  # the loop's 50 s budget, then the summary


def test_environment_names_are_ones_coldcopy_reads() -> None:
    from coldcopy import config

    doc = yaml.safe_load((REPO / "project.yml").read_text())
    read_by_settings = set(config._SPEC)
    elsewhere = {"SMTP_HOST", "SMTP_PORT", "SMTP_USER", "SMTP_PASSWORD", "SMTP_FROM", "ALERT_EMAIL"}
    for where, env in environments(doc):
        for key in env:
            assert key in read_by_settings | elsewhere, f"{where}: {key} is not a setting ColdCopy reads"


def test_env_example_documents_every_variable_with_a_value() -> None:
    documented = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            documented[key.strip()] = value.strip()
    for name in project_variables(REPO):
        assert documented.get(name), f"{name} is used by project.yml but has no value in {ENV_EXAMPLE.name}"


def test_env_example_itself_satisfies_the_deployer() -> None:
    result = run_validator(REPO, ENV_EXAMPLE)
    assert result["ok"], result.get("error")


# -- what the deployer does not check ------------------------------------------------------------


def test_project_has_no_structural_problems() -> None:
    assert structural_problems(REPO) == []


def test_function_directories_match_project_yml() -> None:
    doc = yaml.safe_load((REPO / "project.yml").read_text())
    declared = {(p["name"], f["name"]) for p, f in functions_of(doc)}
    on_disk = {(d.parent.name, d.name) for d in (REPO / "packages").glob("*/*") if d.is_dir()}
    assert declared == on_disk == {(p, f) for p, fns in EXPECTED.items() for f in fns}


@pytest.mark.parametrize("fn", sorted(WEB_FUNCTIONS))
def test_web_function_main_is_the_exact_hand_off(fn: str) -> None:
    assert (REPO / "packages" / "monitor" / fn / "__main__.py").read_text() == WEB_MAIN.format(fn=fn)


@pytest.mark.parametrize("fn", ["tick", "changes"])
def test_scheduled_main_is_the_exact_hand_off(fn: str) -> None:
    assert (REPO / "packages" / "scheduler" / fn / "__main__.py").read_text() == SCHEDULED_MAIN.format(fn=fn)


@pytest.mark.parametrize(("pkg", "fn"), sorted((p, f) for p, fns in EXPECTED.items() for f in fns))
def test_function_ships_its_third_party_requirements(pkg: str, fn: str) -> None:
    fn_dir = REPO / "packages" / pkg / fn
    names = set()
    for line in (fn_dir / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    assert names == REQUIREMENTS.get((pkg, fn), REQUIREMENTS.get((pkg, None)))
    build = (fn_dir / "build.sh").read_text()
    assert "scripts/build_function.sh" in build
    assert os.access(fn_dir / "build.sh", os.X_OK)


# -- the checks can fail: broken copies are rejected ---------------------------------------------

DEPLOYER_REJECTS = [
    pytest.param('cron: "*/5 * * * *"', 'cron: "61 3 * * *"', "not valid crontab syntax", id="bad-cron"),
    pytest.param('cron: "*/5 * * * *"', 'cron: "*/5 * * *"', "not valid crontab syntax", id="4-field-cron"),
    pytest.param(
        "        web: false", "        web: false\n        timeoutt: 5", "Invalid key", id="unknown-key"
    ),
    pytest.param(
        "            sourceType: scheduler\n            sourceDetails:",
        "            type: SCHEDULED\n            scheduledDetails:",
        "Invalid key 'type'",
        id="new-style-trigger-not-accepted-by-4.3.10",
    ),
    pytest.param("        webSecure: false\n", "        webSecure: true\n", "webSecure", id="websecure-true"),
    pytest.param('SMTP_PORT: "${SMTP_PORT}"', "SMTP_PORT: 587", "must be strings", id="non-string-env"),
    pytest.param(
        'ALERT_EMAIL: "${ALERT_EMAIL}"',
        'ALERT_EMAIL: "${NOT_IN_ENV_FILE}"',
        "could not be resolved",
        id="unresolved-variable",
    ),
    pytest.param('runtime: "python:3.11"', 'runtime: "python:2.7"', "not a valid runtime", id="bad-runtime"),
    pytest.param("packages:\n", "pakages:\n", "Invalid key", id="top-level-typo"),
]


@pytest.mark.parametrize(("old", "new", "error"), DEPLOYER_REJECTS)
def test_deployer_rejects_a_broken_copy(
    project_copy: Path, tmp_path: Path, old: str, new: str, error: str
) -> None:
    env = write_dummy_env(tmp_path / "dummy.env", project_variables(REPO))
    assert run_validator(project_copy, env)["ok"], "the unbroken copy must pass first"
    mutate(project_copy, old, new)

    result = run_validator(project_copy, env)

    assert not result["ok"]
    assert error in result["error"]


STRUCTURE_REJECTS = [
    pytest.param(
        'DO_SPACES_SECRET: "${DO_SPACES_SECRET}"',
        'DO_SPACES_SECRET: "hunter2"',
        "DO_SPACES_SECRET",
        id="literal-secret",
    ),
    pytest.param(
        'MONITOR_TOKEN: "${MONITOR_TOKEN}"',
        'MONITOR_TOKEN: "dop_v1_0123456789abcdef0123"',
        "secret",
        id="token-literal",
    ),
    pytest.param(
        'COLDCOPY_LAUNCHER: "none"', 'COLDCOPY_LAUNCHER: "local"', "COLDCOPY_LAUNCHER", id="launcher"
    ),
    pytest.param(
        "        web: false          #",
        "        web: true          #",
        "must say web: false",
        id="tick-public",
    ),
    pytest.param(
        "      - name: health\n",
        "      - name: healthz\n",
        "directory packages/monitor/healthz",
        id="function-without-directory",
    ),
    pytest.param('runtime: "python:3.11"', 'runtime: "python:3.9"', "python:3.11 or newer", id="old-runtime"),
    pytest.param("timeout: 120000", "timeout: 1200000", "limits.timeout", id="timeout-too-long"),
    pytest.param(
        "          memory: 256       # MB",
        "          memory: 64       # MB",
        "limits.memory",
        id="memory-too-small",
    ),
    pytest.param("  - name: monitor\n", "  - name: default\n", "named package", id="default-package"),
    pytest.param("        web: true\n", "", "'web' must be explicit", id="implicit-web"),
    pytest.param(
        "            enabled: true\n",
        "            enabled: true\n"
        + "".join(
            f"          - name: extra-{i}\n            sourceType: scheduler\n"
            f'            sourceDetails:\n              cron: "0 {i} * * *"\n'
            for i in range(2)  # with the tick's and the drain's: four
        ),
        "at most 3",
        id="four-triggers",
    ),
]


@pytest.mark.parametrize(("old", "new", "problem"), STRUCTURE_REJECTS)
def test_structural_check_rejects_a_broken_copy(project_copy: Path, old: str, new: str, problem: str) -> None:
    assert structural_problems(project_copy) == []
    mutate(project_copy, old, new)

    problems = structural_problems(project_copy)

    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("__main__.py\n../../../lib/coldcopy\nvirtualenv\nmissing.py\n", "'missing.py' does not exist"),
        ("__main__.py\n../../../lib/coldcopy\n../../other\n", "illegal"),
        ("__main__.py\nvirtualenv\n", "must list ../../../lib/coldcopy"),
        ("../../../lib/coldcopy\n", "must list __main__.py"),
    ],
)
def test_structural_check_rejects_a_bad_include(project_copy: Path, content: str, problem: str) -> None:
    (project_copy / "packages" / "monitor" / "status" / ".include").write_text(content)

    problems = structural_problems(project_copy)

    assert any(problem in p and "monitor/status" in p for p in problems), problems


def test_structural_check_rejects_a_missing_main(project_copy: Path) -> None:
    (project_copy / "packages" / "monitor" / "metrics" / "__main__.py").unlink()
    assert any("__main__.py is missing" in p for p in structural_problems(project_copy))


# -- the node tooling ----------------------------------------------------------------------------


def test_deployer_version_is_pinned() -> None:
    manifest = json.loads((REPO / "tests" / "deployer" / "package.json").read_text())
    assert manifest["dependencies"] == {"@nimbella/nimbella-deployer": DEPLOYER_VERSION}


def test_setup_node_tools_is_idempotent() -> None:
    first = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    assert first.returncode == 0, first.stdout + first.stderr
    second = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=120, check=False
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"@nimbella/nimbella-deployer {DEPLOYER_VERSION} already in" in second.stdout
