#!/usr/bin/env python3
"""Build every function's bundle as the deployer ships it and check it against the 48 MB limit.

For each function of project.yml: copy its directory into a scratch project (with lib/ and
scripts/build_function.sh), run its build.sh there (the same build `doctl serverless deploy`
runs: Linux x86-64 / CPython 3.11 wheels into ./virtualenv), resolve its .include the way the
deployer does (directories expanded, `../../../lib/x` shipped as `x/`, the deployer's exclusion
patterns), zip it and report the zipped and unzipped sizes. Exit status 1 if any bundle exceeds
the limit (zipped or unzipped: DigitalOcean does not say which one its 48 MB applies to), 2 if a
build fails.

    .venv/bin/python scripts/bundle_sizes.py [--limit-mb 48] [--json] [--import-check] [pkg/fn ...]

Downloads are cached in .cache/pip (PIP_CACHE_DIR). Functions whose build inputs (build.sh,
requirements.txt) are identical share one build. --import-check imports each bundle's
__main__.py in a fresh interpreter with no site-packages except the bundle's own, as the runtime's
launcher does, and reports what could not be imported.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000
LEGAL_DOTS = "../../../lib"
BUILD_TIMEOUT_S = 900

# The deployer's SYSTEM_EXCLUDE_PATTERNS (applied to every expanded directory).
_EXCLUDED_NAMES = {".gitignore", ".DS_Store"}
_EXCLUDED_SUBSTRINGS = (".nimbella", ".deployed", "_tmp_", ".#")


@dataclass
class Bundle:
    function: str
    files: int
    unzipped_bytes: int
    zipped_bytes: int
    import_error: str | None = None


def excluded(path: str) -> bool:
    name = os.path.basename(path)
    return (
        name in _EXCLUDED_NAMES
        or "/.git/" in f"/{path}"
        or any(s in path for s in _EXCLUDED_SUBSTRINGS)
        or path.endswith("~")
        or fnmatch.fnmatch(name, "*.sw[px]")
    )


def resolve_include(fn_dir: Path) -> list[tuple[Path, str]]:
    """(source file, name in the zip) pairs for a function directory, per its .include."""
    items = [line.strip() for line in (fn_dir / ".include").read_text().splitlines() if line.strip()]
    pairs: list[tuple[Path, str]] = []
    for item in items:
        if item.startswith("./"):
            item = item[2:]
        if os.path.isabs(item) or (".." in item and not item.startswith(LEGAL_DOTS)):
            raise SystemExit(f"{fn_dir}: illegal .include item {item!r}")
        source = (fn_dir / item.rstrip("/")).resolve()
        target = os.path.basename(item.rstrip("/")) if ".." in item else item.rstrip("/")
        if source.is_file():
            pairs.append((source, target))
        elif source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                rel = path.relative_to(source).as_posix()
                if not excluded(rel):
                    pairs.append((path, f"{target}/{rel}"))
        else:
            raise SystemExit(f"{fn_dir}: .include item {item!r} does not exist (after the build)")
    return pairs


def functions(project: Path) -> list[tuple[str, str]]:
    doc = yaml.safe_load((project / "project.yml").read_text())
    return [(p["name"], f["name"]) for p in doc.get("packages") or [] for f in p.get("functions") or []]


def build_key(fn_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("build.sh", "requirements.txt"):
        path = fn_dir / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    digest.update((REPO / "scripts" / "build_function.sh").read_bytes())
    return digest.hexdigest()


def build(scratch: Path, pkg: str, fn: str, built: dict[str, Path], cache: Path) -> Path:
    fn_dir = scratch / "packages" / pkg / fn
    shutil.copytree(
        REPO / "packages" / pkg / fn,
        fn_dir,
        ignore=shutil.ignore_patterns("virtualenv", "__deployer__.zip", ".built"),
    )
    if not (fn_dir / "build.sh").exists():
        return fn_dir
    key = build_key(fn_dir)
    if key in built:  # same inputs, same output: reuse it
        (fn_dir / "virtualenv").symlink_to(built[key] / "virtualenv", target_is_directory=True)
        return fn_dir
    env = {**os.environ, "PIP_CACHE_DIR": str(cache / "pip"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        ["bash", "./build.sh"],
        cwd=fn_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        print(
            f"build of {pkg}/{fn} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    built[key] = fn_dir
    return fn_dir


def zip_bundle(pairs: list[tuple[Path, str]], target: Path) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for source, name in pairs:
            zf.write(source, name)


IMPORT_PROBE = r"""
import os, sys, traceback
bundle = sys.argv[1]
os.chdir(bundle)
sys.path.insert(0, bundle)
activate = os.path.join(bundle, "virtualenv", "bin", "activate_this.py")
if os.path.isdir(os.path.join(bundle, "virtualenv")):
    with open(activate) as f:
        exec(compile(f.read(), activate, "exec"), dict(__file__=activate))
import importlib.util
spec = importlib.util.spec_from_file_location("main__", os.path.join(bundle, "__main__.py"))
module = importlib.util.module_from_spec(spec)
try:
    spec.loader.exec_module(module)
    assert callable(module.main), "no main()"
except BaseException as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(1)
"""


def import_check(bundle_zip: Path, scratch: Path) -> str | None:
    """Import the bundle's __main__.py like the runtime does: unzipped, no site-packages but its own.

    Bundles that differ only in __main__.py share one unpacked copy (the other files are identical).
    """
    with zipfile.ZipFile(bundle_zip) as zf:
        others = sorted(
            (i.filename, i.CRC, i.file_size) for i in zf.infolist() if i.filename != "__main__.py"
        )
        where = scratch / "import" / hashlib.sha256(repr(others).encode()).hexdigest()[:16]
        if where.is_dir():
            (where / "__main__.py").write_bytes(zf.read("__main__.py"))
        else:
            zf.extractall(where)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(scratch)}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", IMPORT_PROBE, str(where)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    if proc.returncode == 0:
        return None
    lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("functions", nargs="*", help="pkg/fn to measure (default: all of project.yml)")
    parser.add_argument("--limit-mb", type=float, default=48.0)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--import-check", action="store_true", help="import each bundle's __main__.py")
    parser.add_argument("--keep", type=Path, help="copy the zipped bundles into this directory")
    args = parser.parse_args(argv)

    wanted = functions(REPO)
    if args.functions:
        unknown = set(args.functions) - {f"{p}/{f}" for p, f in wanted}
        if unknown:
            parser.error(f"not in project.yml: {', '.join(sorted(unknown))}")
        wanted = [(p, f) for p, f in wanted if f"{p}/{f}" in args.functions]
    limit = int(args.limit_mb * MB)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    ignore = args.cache_dir / ".gitignore"
    if not ignore.exists():  # downloads only: keep them out of git
        ignore.write_text("# created by scripts/bundle_sizes.py: caches only\n*\n")
    results: list[Bundle] = []
    with tempfile.TemporaryDirectory(prefix="coldcopy-bundles-") as tmp:
        scratch = Path(tmp)
        (scratch / "lib").mkdir()
        shutil.copytree(REPO / "lib" / "coldcopy", scratch / "lib" / "coldcopy")
        (scratch / "scripts").mkdir()
        shutil.copy2(REPO / "scripts" / "build_function.sh", scratch / "scripts" / "build_function.sh")
        built: dict[str, Path] = {}
        for pkg, fn in wanted:
            fn_dir = build(scratch, pkg, fn, built, args.cache_dir)
            pairs = resolve_include(fn_dir)
            target = scratch / "zips" / f"{pkg}--{fn}.zip"
            target.parent.mkdir(exist_ok=True)
            zip_bundle(pairs, target)
            bundle = Bundle(
                f"{pkg}/{fn}", len(pairs), sum(s.stat().st_size for s, _ in pairs), target.stat().st_size
            )
            if args.import_check:
                bundle.import_error = import_check(target, scratch)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy2(target, args.keep / target.name)
            results.append(bundle)

    over = [b for b in results if max(b.zipped_bytes, b.unzipped_bytes) > limit]
    if args.json:
        print(json.dumps({"limit_bytes": limit, "bundles": [asdict(b) for b in results]}, indent=2))
    else:
        header = f"{'function':<24} {'files':>6} {'zipped MB':>10} {'unzipped MB':>12}"
        print(f"{header}  (limit {args.limit_mb:g} MB each)")
        for b in results:
            flag = "  OVER" if b in over else ""
            extra = f"  import: {b.import_error}" if b.import_error else ""
            sizes = f"{b.zipped_bytes / MB:>10.2f} {b.unzipped_bytes / MB:>12.2f}"
            print(f"{b.function:<24} {b.files:>6} {sizes}{flag}{extra}")
    if over:
        print(
            f"{len(over)} bundle(s) over {args.limit_mb:g} MB: {', '.join(b.function for b in over)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
