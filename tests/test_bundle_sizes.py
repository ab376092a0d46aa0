"""scripts/bundle_sizes.py: every function's bundle, built as deployed, fits DigitalOcean's 48 MB.

The first run downloads the Linux wheels into .cache/pip; later runs reuse them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from coldcopy.localstack.s3server import S3Server
from coldcopy.postgres.cluster import PgCluster
from fake_do_api import FakeDoApi

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bundle_sizes.py"
LIMIT = 48_000_000
SITE = "virtualenv/lib/python3.11/site-packages"


def run_script(*args: str, timeout: int = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    keep = tmp_path_factory.mktemp("bundles")
    proc = run_script("--json", "--import-check", "--keep", str(keep))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    data["keep"] = keep
    return data


def test_every_function_is_measured_and_within_the_limit(report: dict[str, Any]) -> None:
    doc = yaml.safe_load((REPO / "project.yml").read_text())
    expected = {f"{p['name']}/{f['name']}" for p in doc["packages"] for f in p["functions"]}
    bundles = {b["function"]: b for b in report["bundles"]}
    assert set(bundles) == expected
    assert report["limit_bytes"] == LIMIT
    for name, b in bundles.items():
        assert 0 < b["zipped_bytes"] < LIMIT, name
        assert 0 < b["unzipped_bytes"] < LIMIT, name
        assert b["zipped_bytes"] < b["unzipped_bytes"], name


def test_every_bundle_imports_its_entry_point_with_only_what_it_ships(report: dict[str, Any]) -> None:
    failures = {b["function"]: b["import_error"] for b in report["bundles"] if b["import_error"]}
    assert failures == {}, "a function would fail to import on the platform: " + json.dumps(
        failures, indent=1
    )


@pytest.mark.parametrize(
    ("bundle", "modules"),
    [
        ("monitor--health.zip", ["boto3", "botocore", "s3transfer"]),
        ("scheduler--tick.zip", ["boto3", "requests", "croniter", "certifi"]),
        ("scheduler--changes.zip", ["boto3", "pg8000", "cryptography", "zstandard"]),
    ],
)
def test_bundle_contents_follow_the_include_list(
    report: dict[str, Any], bundle: str, modules: list[str]
) -> None:
    names = set(zipfile.ZipFile(report["keep"] / bundle).namelist())
    assert "__main__.py" in names
    assert (
        "coldcopy/__init__.py" in names and "coldcopy/errors.py" in names
    )  # ../../../lib/coldcopy → coldcopy/
    assert "virtualenv/bin/activate_this.py" in names
    for module in modules:
        assert f"{SITE}/{module}/__init__.py" in names, module
    for not_shipped in ("build.sh", "requirements.txt", ".include"):
        assert not_shipped not in names
    assert not any(n.startswith(("lib/", "../")) for n in names)
    assert not any(n.startswith(f"{SITE}/bin/") for n in names)


def test_bundled_packages_work_in_isolation(report: dict[str, Any], tmp_path: Path) -> None:
    """boto3 from the bundle finds its S3 model; croniter and requests import, with no other site-packages."""
    with zipfile.ZipFile(report["keep"] / "scheduler--tick.zip") as zf:
        zf.extractall(tmp_path)
    probe = (
        "import os, sys; f = os.path.join(sys.argv[1], 'virtualenv/bin/activate_this.py'); "
        "exec(compile(open(f).read(), f, 'exec'), {'__file__': f}); "
        "import boto3, botocore.session, croniter, requests; "
        "assert boto3.__file__.startswith(sys.argv[1]), boto3.__file__; "
        "m = botocore.session.get_session().get_service_model('s3'); "
        "print(m.service_name, requests.__version__)"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", probe, str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("s3 ")


def test_an_oversized_bundle_fails_the_script() -> None:
    proc = run_script("--limit-mb", "1", "monitor/health")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "OVER" in proc.stdout
    assert "monitor/health" in proc.stderr


def test_unknown_function_is_refused() -> None:
    proc = run_script("monitor/nope")
    assert proc.returncode == 2
    assert "not in project.yml" in proc.stderr


def test_same_files_as_the_deployers_own_build(report: dict[str, Any], tmp_path: Path) -> None:
    """The deployer's buildProject (build.sh, .include, zip) ships exactly the files we measured."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: install Node.js 18+ and npm, then run scripts/setup_node_tools.sh"
        )
    doc = yaml.safe_load((REPO / "project.yml").read_text())
    keep = {("monitor", "health"), ("scheduler", "tick")}
    for pkg in doc["packages"]:
        pkg["functions"] = [f for f in pkg["functions"] if (pkg["name"], f["name"]) in keep]
    (tmp_path / "project.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for pkg_name, fn in keep:
        shutil.copytree(
            REPO / "packages" / pkg_name / fn,
            tmp_path / "packages" / pkg_name / fn,
            ignore=shutil.ignore_patterns("virtualenv", "__deployer__.zip", ".built"),
        )
    shutil.copytree(REPO / "lib" / "coldcopy", tmp_path / "lib" / "coldcopy")
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "build_function.sh", tmp_path / "scripts")
    variables = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", (tmp_path / "project.yml").read_text()))
    env_file = tmp_path / "dummy.env"
    env_file.write_text("".join(f"{v}=dummy\n" for v in sorted(variables)))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        # pip's own settings as the user has them (index, certificates, a timeout longer than the
        # default 15 s: a busy machine's index requests outlast that), then our cache.
        **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
        "PIP_CACHE_DIR": str(REPO / ".cache" / "pip"),
        **(
            {"COLDCOPY_NODE_DIR": os.environ["COLDCOPY_NODE_DIR"]}
            if "COLDCOPY_NODE_DIR" in os.environ
            else {}
        ),
    }
    proc = subprocess.run(
        [node, str(REPO / "tests" / "deployer" / "validate.js"), str(tmp_path), str(env_file), "--build"],
        capture_output=True, text=True, timeout=900, env=env, check=False,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("missing"):
        pytest.fail(result["error"])
    # The deployer keeps a failed build's output among its warnings.
    assert result["ok"], "\n".join([result.get("error", ""), *result.get("warnings", [])])[-4000:]
    assert {(b["package"], b["name"]) for b in result["built"]} == keep
    for pkg_name, fn in keep:
        theirs = set(zipfile.ZipFile(tmp_path / "packages" / pkg_name / fn / "__deployer__.zip").namelist())
        ours = set(zipfile.ZipFile(report["keep"] / f"{pkg_name}--{fn}.zip").namelist())
        pycache = {n for n in ours ^ theirs if "__pycache__/" in n}  # lib/ may have gained .pyc meanwhile
        assert ours ^ theirs == pycache, sorted(ours ^ theirs)[:10]


SMOKE = r"""
import json, os, sys
bundle = sys.argv[1]
os.chdir(bundle)
sys.path.insert(0, bundle)
f = os.path.join(bundle, "virtualenv/bin/activate_this.py")
exec(compile(open(f).read(), f, "exec"), {"__file__": f})
import importlib.util
spec = importlib.util.spec_from_file_location("main__", os.path.join(bundle, "__main__.py"))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
result = module.main(json.loads(sys.argv[2]), None)
third_party = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in {
    "boto3", "botocore", "requests", "croniter", "cryptography", "zstandard", "pg8000", "dotenv"}})
print(json.dumps({"result": result, "modules": third_party}, default=str))
"""


@pytest.mark.parametrize(
    ("bundle", "event"),
    [
        (
            "monitor--status.zip",
            {"http": {"method": "GET", "path": "", "headers": {"authorization": "Bearer t0k"}}},
        ),
        ("scheduler--tick.zip", {"trigger": "coldcopy-tick"}),
    ],
)
def test_bundle_runs_its_function_against_s3_with_only_what_it_ships(
    report: dict[str, Any],
    tmp_path: Path,
    s3_server: S3Server,
    bucket: str,
    bundle: str,
    event: dict[str, Any],
) -> None:
    """Unzipped, in an interpreter with no site-packages but the bundle's: main() answers from real S3."""
    with zipfile.ZipFile(report["keep"] / bundle) as zf:
        zf.extractall(tmp_path)
    env = {
        "PATH": os.environ.get("PATH", ""),
        **s3_server.spaces_env(bucket),
        "MONITOR_TOKEN": "t0k",
        "COLDCOPY_CLUSTER": "smoke",
        "COLDCOPY_LAUNCHER": "none",
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", SMOKE, str(tmp_path), json.dumps(event)],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "No module named" not in proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    result = out["result"]
    assert "botocore" in out["modules"]  # it really talked to S3 through the bundled botocore
    if "statusCode" in result:
        assert result["statusCode"] == 200, result
    else:
        assert "error" not in result, result


def test_tick_bundle_wakes_the_runner_through_the_do_api(
    report: dict[str, Any], tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    """The deployed tick, as bundled: a due slot is enqueued and a runner deployment is created."""
    with zipfile.ZipFile(report["keep"] / "scheduler--tick.zip") as zf:
        zf.extractall(tmp_path)
    with FakeDoApi(tokens={"dop_v1_tick": {"app:read", "app:update"}}) as api:
        app_id = api.add_app()
        env = {
            "PATH": os.environ.get("PATH", ""),
            **s3_server.spaces_env(bucket),
            "COLDCOPY_CLUSTER": "smoke",
            "COLDCOPY_LAUNCHER": "app-platform",  # as project.yml sets it for the scheduler package
            "COLDCOPY_SCHEDULE_FULL": "* * * * *",  # due right now
            "DO_API_TOKEN": "dop_v1_tick",
            "DO_API_URL": api.url,
            "RUNNER_APP_ID": app_id,
        }
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-B", "-c", SMOKE, str(tmp_path), '{"trigger": "coldcopy-tick"}'],
            capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        summary = out["result"]
        assert "error" not in summary, summary
        assert summary["enqueued"] and summary["pending"] >= 1, summary
        assert summary["woken"]["started"] is True, summary
        deployments = api.deployments(app_id)
        assert len(deployments) == 1 and summary["woken"]["id"] == deployments[0]["id"]
        assert "requests" in out["modules"]
        assert "dop_v1_tick" not in proc.stdout + proc.stderr


def test_bundles_carry_botocores_s3_model_only(report: dict[str, Any]) -> None:
    """build_function.sh drops the other services' models and zstandard's CFFI backend (PyPy's): how
    the change drain fits 48 MB with room to spare."""
    for bundle in ("monitor--health.zip", "scheduler--tick.zip", "scheduler--changes.zip"):
        names = zipfile.ZipFile(report["keep"] / bundle).namelist()
        services = {
            n.split("/")[6] for n in names if n.startswith(f"{SITE}/botocore/data/") and n.count("/") > 6
        }
        assert services == {"s3"}, bundle
        assert f"{SITE}/botocore/data/endpoints.json" in names
    changes = zipfile.ZipFile(report["keep"] / "scheduler--changes.zip").namelist()
    assert not [n for n in changes if n.startswith(f"{SITE}/zstandard/") and "cffi" in n]
    assert any(n.startswith(f"{SITE}/zstandard/backend_c.") for n in changes)


def test_change_drain_bundle_answers_not_set_up_with_only_what_it_ships(
    report: dict[str, Any], tmp_path: Path, s3_server: S3Server, bucket: str, pg: PgCluster
) -> None:
    """The deployed drain, as bundled, where `coldcopy changes setup` never ran: it reaches the
    database and the bucket, stores nothing, and says so."""
    with zipfile.ZipFile(report["keep"] / "scheduler--changes.zip") as zf:
        zf.extractall(tmp_path)
    env = {
        "PATH": os.environ.get("PATH", ""),
        **s3_server.spaces_env(bucket),
        "COLDCOPY_CLUSTER": "smoke",
        "DB_HOST": pg.host,
        "DB_PORT": str(pg.port),
        "DB_NAME": "postgres",
        "DB_USER": pg.user,
        "DB_PASSWORD": pg.password,
        "DB_SSLMODE": "disable",
        "BACKUP_ENCRYPTION_KEY": "k" * 43,
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", SMOKE, str(tmp_path), '{"trigger": "coldcopy-changes"}'],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["result"] == {"status": "not set up", "slot": "coldcopy_changes_smoke"}
    assert {"botocore", "pg8000"} <= set(out["modules"])  # it really asked the bucket and the database
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
