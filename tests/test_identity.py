"""A backup's manifest and data are bound to its name (issue 13, item 1): a manifest or a volume
swapped, copied or edited from another backup is refused by verify and by every restore before
anything is written; the same for WAL files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.storage.s3 import make_client
from coldcopy.wal.archive import read_archived, wal_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def s3(env: dict[str, str]) -> S3Client:
    return make_client(load_settings(env, env_file=Path(os.devnull)))


def prefix(env: dict[str, str]) -> str:
    return f"coldcopy/{env['DB_NAME']}/"


def get(env: dict[str, str], key: str) -> bytes:
    return s3(env).get_object(Bucket=env["DO_SPACES_BUCKET"], Key=prefix(env) + key)["Body"].read()


def put(env: dict[str, str], key: str, body: bytes) -> None:
    s3(env).put_object(Bucket=env["DO_SPACES_BUCKET"], Key=prefix(env) + key, Body=body)


@pytest.fixture
def two_backups(pg, coldcopy_env, fresh_db) -> tuple[dict[str, str], str, str]:  # type: ignore[no-untyped-def]
    env = {**coldcopy_env, "DB_NAME": fresh_db}
    c = pg.connect(fresh_db)
    c.run("CREATE TABLE t (v text)")
    c.run("INSERT INTO t VALUES ('a')")
    a = json.loads(run_cli(env, "--json", "backup").out)["name"]
    c.run("UPDATE t SET v = 'b'")
    c.close()
    b = json.loads(run_cli(env, "--json", "backup", "--kind", "compliance").out)["name"]
    return env, a, b


def refused_everywhere(env: dict[str, str], name: str, pg: Any, db: str, words: str) -> None:
    v = run_cli(env, "--json", "verify", name, "--level", "full")
    assert v.rc == 4 and words in v.out, v.out
    for args in (("--target-db", "identity_copy"), ()):
        r = run_cli(env, "restore", "--backup-name", name, *args)
        assert r.rc == 4 and words in r.err, r.err
    c = pg.connect()
    try:
        assert c.run("SELECT datname FROM pg_database WHERE datname LIKE 'identity_copy%'") == []
    finally:
        c.close()
    c = pg.connect(db)
    try:
        assert c.run("SELECT v FROM t") == [["b"]]  # the live database was not touched
    finally:
        c.close()


def test_another_backups_manifest_is_refused(pg, two_backups, fresh_db) -> None:  # type: ignore[no-untyped-def]
    env, a, b = two_backups
    put(env, f"backups/{a}/manifest.json", get(env, f"backups/{b}/manifest.json"))
    refused_everywhere(env, a, pg, fresh_db, f"is the manifest of {b}")


def test_a_manifest_edited_to_point_at_another_backup_is_refused(pg, two_backups, fresh_db) -> None:  # type: ignore[no-untyped-def]
    env, a, b = two_backups
    forged = json.loads(get(env, f"backups/{b}/manifest.json"))
    forged["name"] = a
    put(env, f"backups/{a}/manifest.json", json.dumps(forged).encode())
    refused_everywhere(env, a, pg, fresh_db, "names objects of another backup")


def test_another_backups_data_under_this_name_is_refused(pg, two_backups, fresh_db) -> None:  # type: ignore[no-untyped-def]
    """B's volumes copied over A's and A's manifest made to match them byte for byte: only the name
    bound inside the authenticated stream tells them apart."""
    env, a, b = two_backups
    mb = json.loads(get(env, f"backups/{b}/manifest.json"))
    for i, _ in enumerate(mb["data"]["volumes"]):
        put(env, f"backups/{a}/data.{i:06d}", get(env, f"backups/{b}/data.{i:06d}"))
    forged = {**mb, "name": a, "kind": "full"}
    forged["data"] = {**mb["data"], "key": f"backups/{a}/data"}
    forged["globals"] = {**mb["globals"], "key": f"backups/{a}/globals"}
    put(env, f"backups/{a}/globals", get(env, f"backups/{b}/globals"))
    put(env, f"backups/{a}/manifest.json", json.dumps(forged).encode())
    refused_everywhere(env, a, pg, fresh_db, f"is 'backups/{b}/data', not 'backups/{a}/data'")


def test_a_wal_file_stored_under_another_name_is_refused(coldcopy_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    names = ["000000010000000000000001", "000000010000000000000002"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * 16 * 1024 * 1024)
        assert run_cli(coldcopy_env, "wal-push", str(tmp_path / name)).rc == 0
    ctx = open_context(load_settings(coldcopy_env, env_file=Path(os.devnull)))
    assert read_archived(ctx, names[1])[:1] == b"\x01"
    ctx.storage.put_bytes(wal_key(names[1]), ctx.storage.get_bytes(wal_key(names[0])))
    r = run_cli(coldcopy_env, "wal-fetch", names[1], str(tmp_path / "restored"))
    assert r.rc == 4 and f"is '{wal_key(names[0])}', not '{wal_key(names[1])}'" in r.err, r.err
    assert not (tmp_path / "restored").exists()
