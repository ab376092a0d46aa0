"""Backup → verify → restore against a real PostgreSQL cluster and a real S3 server over HTTP."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from cli_helpers import run_cli, spawn_cli
from coldcopy.config import load_settings
from coldcopy.localstack.dbcompare import compare_databases
from coldcopy.storage.s3 import make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture(scope="module")
def big_db(pg):  # type: ignore[no-untyped-def]
    """~60 MB of text that compresses like real text (about 2x): many frames, several 5 MB parts."""
    name = "bigdb"
    pg.create_database(name)
    c = pg.connect(name)
    c.run("SELECT setseed(0.42)")
    c.run("CREATE TABLE big (id int PRIMARY KEY, body text)")
    c.run(
        "INSERT INTO big SELECT g, (SELECT string_agg(md5((g * 31 + i)::text || random()::text), ' ') "
        "FROM generate_series(1, 12) i) FROM generate_series(1, 150000) g"
    )
    c.close()
    yield name
    pg.drop_database(name)


def s3_client(env: dict[str, str]) -> S3Client:
    return make_client(load_settings(env, env_file=Path(os.devnull)))


def keys(env: dict[str, str], prefix: str = "") -> list[str]:
    s3 = s3_client(env)
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["DO_SPACES_BUCKET"], Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def backup(env: dict[str, str], *extra: str) -> dict:  # type: ignore[type-arg]
    r = run_cli(env, "backup", "--json", *extra)
    assert r.rc == 0, r.err
    return json.loads(r.out)  # type: ignore[no-any-return]


def data_key(env: dict[str, str], name: str) -> str:
    return f"coldcopy/{env['DB_NAME']}/backups/{name}/data"


def db_exists(pg, name: str) -> bool:  # type: ignore[no-untyped-def]
    c = pg.connect()
    try:
        return bool(c.run("SELECT 1 FROM pg_database WHERE datname = :n", n=name))
    finally:
        c.close()


def test_round_trip_every_table_equal(pg, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    info = backup(coldcopy_env)
    assert info["kind"] == "full" and info["size_bytes"] > 0 and info["duration_seconds"] >= 0
    assert info["name"].startswith(f"full_backup_{coldcopy_env['DB_NAME']}_")

    listed = json.loads(run_cli(coldcopy_env, "list-backups", "--json").out)
    # Options work before the command too.
    assert json.loads(run_cli(coldcopy_env, "--json", "list-backups").out) == listed
    assert [b["name"] for b in listed] == [info["name"]]
    assert {"name", "kind", "created_at", "size_bytes", "status"} <= set(listed[0])
    assert listed[0]["status"] == "complete"

    shown = json.loads(run_cli(coldcopy_env, "show", info["name"], "--json").out)
    for field in (
        "server_version",
        "tool",
        "started_at",
        "finished_at",
        "duration_seconds",
        "raw_size_bytes",
        "stored_size_bytes",
        "compression",
        "encryption",
        "tables",
    ):
        assert field in shown
    assert shown["encryption"]["algorithm"] == "AES-256-GCM" and shown["encryption"]["key_id"]
    assert shown["tables"] and all(isinstance(n, int) for n in shown["tables"].values())
    volumes = shown["data"]["volumes"]
    assert volumes and sum(volumes) == shown["data"]["stored_size"]
    human = run_cli(coldcopy_env, "show", info["name"])
    assert human.rc == 0 and f"backups/{info['name']}/data.000000" in human.out

    v = run_cli(coldcopy_env, "verify", info["name"], "--json")
    assert v.rc == 0, v.out + v.err
    assert json.loads(v.out)["ok"] is True

    r = run_cli(coldcopy_env, "restore", "--backup-name", info["name"], "--target-db", "rt_copy", "--json")
    assert r.rc == 0, r.err
    a, b = pg.connect(coldcopy_env["DB_NAME"]), pg.connect("rt_copy")
    try:
        assert compare_databases(a, b) == []
    finally:
        a.close()
        b.close()
    # Restoring onto an existing database is refused without --clean …
    again = run_cli(coldcopy_env, "restore", "--backup-name", info["name"], "--target-db", "rt_copy")
    assert again.rc != 0 and "already exists" in again.err and "--clean" in again.err
    # … and replaces it with --clean.
    assert (
        run_cli(
            coldcopy_env, "restore", "--backup-name", info["name"], "--target-db", "rt_copy", "--clean"
        ).rc
        == 0
    )
    pg.drop_database("rt_copy")


def test_in_place_restore_keeps_old_database(pg, coldcopy_env, fresh_db) -> None:  # type: ignore[no-untyped-def]
    env = {**coldcopy_env, "DB_NAME": fresh_db}
    c = pg.connect(fresh_db)
    c.run("CREATE TABLE marker (v text)")
    c.run("INSERT INTO marker VALUES ('before')")
    c.close()
    name = backup(env)["name"]
    c = pg.connect(fresh_db)
    c.run("UPDATE marker SET v = 'after'")
    c.close()
    r = run_cli(env, "restore", "--backup-name", name, "--json")
    assert r.rc == 0, r.err
    kept = json.loads(r.out)["previous_kept_as"]
    c = pg.connect(fresh_db)
    assert c.run("SELECT v FROM marker") == [["before"]]
    c.close()
    c = pg.connect(kept)
    assert c.run("SELECT v FROM marker") == [["after"]]
    c.close()
    pg.drop_database(kept)


def test_wrong_key_refused_before_anything_is_written(pg, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    name = backup(coldcopy_env)["name"]
    bad = {**coldcopy_env, "BACKUP_ENCRYPTION_KEY": "not-the-right-key"}
    r = run_cli(bad, "restore", "--backup-name", name, "--target-db", "wrong_key_target")
    assert r.rc == 4 and "key" in r.err.lower()
    assert not db_exists(pg, "wrong_key_target")
    assert "not-the-right-key" not in r.err and coldcopy_env["BACKUP_ENCRYPTION_KEY"] not in r.err
    v = run_cli(bad, "verify", name)
    assert v.rc != 0


def volumes(env: dict[str, str], name: str) -> list[str]:
    return sorted(keys(env, data_key(env, name) + "."))


def _rewrite(env: dict[str, str], name: str, change) -> None:  # type: ignore[no-untyped-def]
    """Apply ``change`` to the stored stream (the volumes joined) and store it back cut where it was,
    the last volume taking what is left (volumes past a shortened stream's end are deleted)."""
    s3, bucket = s3_client(env), env["DO_SPACES_BUCKET"]
    vols = volumes(env, name)
    bodies = [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in vols]
    stream, pos = change(b"".join(bodies)), 0
    for i, (key, body) in enumerate(zip(vols, bodies, strict=True)):
        piece = stream[pos:] if i == len(vols) - 1 else stream[pos : pos + len(body)]
        pos += len(piece)
        if piece:
            s3.put_object(Bucket=bucket, Key=key, Body=piece)
        else:
            s3.delete_object(Bucket=bucket, Key=key)


def _frames(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Split a stored stream into its header and frames (see docs/encryption-format.md)."""
    from coldcopy.stream.crypto import read_header

    hlen = read_header(blob).size
    pos, frames = hlen, []
    while pos < len(blob):
        n = int.from_bytes(blob[pos : pos + 4], "big")
        frames.append(blob[pos : pos + 4 + n])
        pos += 4 + n
    return blob[:hlen], frames


@pytest.mark.parametrize(
    "damage", ["flip", "truncate", "missing_frame", "swap_frames", "missing_volume", "swap_volumes"]
)
def test_damaged_backup_detected_and_target_untouched(pg, coldcopy_env, big_db, damage) -> None:  # type: ignore[no-untyped-def]
    env = {**coldcopy_env, "DB_NAME": big_db}
    name = backup(env)["name"]
    vols = volumes(env, name)
    assert len(vols) >= 3, "the test database must span several volumes"

    def change(body: bytes) -> bytes:
        if damage == "flip":
            i = len(body) // 2
            return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        if damage == "truncate":
            return body[: len(body) - 1000]
        header, frames = _frames(body)
        assert len(frames) >= 3, "the test database must span several frames"
        if damage == "missing_frame":
            return header + b"".join(frames[:1] + frames[2:])
        return header + b"".join([frames[1], frames[0], *frames[2:]])

    s3, bucket = s3_client(env), env["DO_SPACES_BUCKET"]
    if damage == "missing_volume":
        s3.delete_object(Bucket=bucket, Key=vols[1])
    elif damage == "swap_volumes":
        one, two = (s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in vols[:2])
        s3.put_object(Bucket=bucket, Key=vols[0], Body=two)
        s3.put_object(Bucket=bucket, Key=vols[1], Body=one)
    else:
        _rewrite(env, name, change)
    v = run_cli(env, "verify", name, "--json")
    assert v.rc == 4 and json.loads(v.out)["ok"] is False
    r = run_cli(env, "restore", "--backup-name", name, "--target-db", "damaged_target")
    assert r.rc != 0 and r.err.startswith("error:")
    assert not db_exists(pg, "damaged_target")
    # In place: DB_NAME stays exactly as it was, and no staging database is left behind.
    before = _fingerprint(pg, big_db)
    r = run_cli(env, "restore", "--backup-name", name)
    assert r.rc != 0
    assert _fingerprint(pg, big_db) == before
    c = pg.connect()
    assert c.run("SELECT count(*) FROM pg_database WHERE datname LIKE '%ccstage%'")[0][0] == 0
    c.close()


def _fingerprint(pg, db: str) -> str:  # type: ignore[no-untyped-def]
    c = pg.connect(db)
    try:
        return str(
            c.run("SELECT count(*), md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM big t")
        )
    finally:
        c.close()


def test_unencrypted_backup_warns_and_round_trips(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in coldcopy_env.items() if k != "BACKUP_ENCRYPTION_KEY"}
    r = run_cli(env, "backup", "--json")
    assert r.rc == 0 and "UNENCRYPTED" in r.err
    name = json.loads(r.out)["name"]
    st = run_cli(env, "status")
    assert "unencrypted" in st.out.lower() and st.rc == 1
    assert run_cli(env, "verify", name).rc == 0
    # An encrypted deployment can still read it (alg none needs no key) …
    assert run_cli(coldcopy_env, "verify", name).rc == 0


def test_bad_password_reported_and_nothing_listed(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    env = {**coldcopy_env, "DB_PASSWORD": "definitely-wrong-pw"}
    r = run_cli(env, "backup")
    assert r.rc == 5
    assert "DB_PASSWORD" in r.err and "definitely-wrong-pw" not in r.err
    assert json.loads(run_cli(coldcopy_env, "list-backups", "--json").out) == []
    st = json.loads(run_cli(coldcopy_env, "status", "--json").out)
    assert st["last_failure"] and "refused the login" in st["last_failure"]["error"]
    # the name was claimed in the background meanwhile; its in-flight marker is gone again
    assert not keys(coldcopy_env, f"coldcopy/{coldcopy_env['DB_NAME']}/inflight/")


def test_a_bucket_that_fails_stops_the_dump_started_beside_it(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    """pg_dump starts while the bucket's side gets ready in the background; when that side fails
    (a bucket that does not exist), the backup says so (exit 6) and leaves no pg_dump behind."""
    env = {**coldcopy_env, "DO_SPACES_BUCKET": "no-such-bucket-here"}
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    r = run_cli(env, "backup")
    assert r.rc == 6 and "does not exist" in r.err and "DO_SPACES_BUCKET" in r.err, r.err
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.name() in ("pg_dump", "pg_dumpall")]


def test_pg_dump_failure_mid_dump_reported(pg, coldcopy_env, fresh_db) -> None:  # type: ignore[no-untyped-def]
    """pg_dump itself fails (a table it may not lock): clear error, nothing listed, nothing left."""
    env = {**coldcopy_env, "DB_NAME": fresh_db}
    c = pg.connect(fresh_db)
    c.run("CREATE ROLE limited LOGIN PASSWORD 'limited-pw'")
    c.run("CREATE TABLE secret_t (x int)")
    c.run("REVOKE ALL ON secret_t FROM PUBLIC")
    c.close()
    try:
        r = run_cli({**env, "DB_USER": "limited", "DB_PASSWORD": "limited-pw"}, "backup")
        assert r.rc == 5 and "pg_dump failed" in r.err and "permission denied" in r.err
        assert json.loads(run_cli(env, "list-backups", "--json").out) == []
        assert not [k for k in keys(env) if "/backups/" in k]
    finally:
        c = pg.connect(fresh_db)
        c.run("DROP TABLE secret_t")
        c.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'limited'")
        c.run("DROP ROLE limited")
        c.close()


def test_old_pg_dump_refused(coldcopy_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.22'\n")
    fake.chmod(0o755)
    r = run_cli({**coldcopy_env, "PG_BIN_DIR": str(tmp_path)}, "backup")
    assert r.rc == 5 and "pg_dump is version 12" in r.err
    assert "postgresql-client-15" in r.err


def test_invalid_names_refused(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    for bad in (
        "../../etc/passwd",
        "full_backup_x/../y_20260101_000000",
        "full_backup_db_20260101_000000/..",
        "x y",
        "full_backup_db_2026",
    ):
        for args in (("show", bad), ("verify", bad), ("restore", "--backup-name", bad, "--target-db", "z")):
            r = run_cli(coldcopy_env, *args)
            assert r.rc == 2, (args, r.err)
            assert "invalid backup name" in r.err


def test_missing_configuration_named_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = run_cli({"PATH": os.environ["PATH"], "DB_PORT": "abc"}, "backup")
    assert r.rc == 2
    for var in (
        "DB_HOST",
        "DB_NAME",
        "DB_USER",
        "DB_PORT",
        "DO_SPACES_KEY",
        "DO_SPACES_SECRET",
        "DO_SPACES_BUCKET",
    ):
        assert var in r.err
    assert r.err.count("error:") == 1


def test_debug_output_has_no_secrets(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    r = run_cli(coldcopy_env, "backup", "--debug", "--json")
    assert r.rc == 0
    name = json.loads(r.out)["name"]
    r2 = run_cli(coldcopy_env, "verify", name, "--debug")
    for secret in (
        coldcopy_env["DB_PASSWORD"],
        coldcopy_env["DO_SPACES_SECRET"],
        coldcopy_env["BACKUP_ENCRYPTION_KEY"],
    ):
        if len(secret) >= 6:
            for text in (r.out, r.err, r2.out, r2.err):
                assert secret not in text


def test_stale_catalog_never_hides_a_backup(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    first = backup(coldcopy_env)["name"]
    s3 = s3_client(coldcopy_env)
    bucket = coldcopy_env["DO_SPACES_BUCKET"]
    cat_key = f"coldcopy/{coldcopy_env['DB_NAME']}/catalog.json"
    stale = s3.get_object(Bucket=bucket, Key=cat_key)["Body"].read()
    second = backup(coldcopy_env)["name"] if first else ""
    s3.put_object(Bucket=bucket, Key=cat_key, Body=stale)  # a writer lost its update
    names = [b["name"] for b in json.loads(run_cli(coldcopy_env, "list-backups", "--json").out)]
    assert set(names) == {first, second}
    s3.delete_object(Bucket=bucket, Key=cat_key)  # the catalog is lost entirely
    names = [b["name"] for b in json.loads(run_cli(coldcopy_env, "list-backups", "--json").out)]
    assert set(names) == {first, second}
    r = run_cli(coldcopy_env, "catalog", "rebuild", "--json")
    assert r.rc == 0 and json.loads(r.out)["backups"] == 2


def test_killed_backup_leaves_nothing(coldcopy_env, big_db) -> None:  # type: ignore[no-untyped-def]
    env = {
        **coldcopy_env,
        "DB_NAME": big_db,
        "COLDCOPY_VOLUME_SIZE_MB": "1",
        "COLDCOPY_UPLOAD_CONCURRENCY": "1",
    }
    prefix = f"coldcopy/{big_db}/backups/"
    proc = spawn_cli(env, "backup")
    # Wait (bounded) until the upload has at least one volume in the bucket, then kill -9.
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if [k for k in keys(env, prefix) if "/data.0" in k]:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.wait()
    assert killed, "the backup finished before it could be interrupted; make big_db bigger"
    assert json.loads(run_cli(env, "list-backups", "--json").out) == []
    half = keys(env, prefix)
    assert half and not [k for k in half if k.endswith("manifest.json")]  # half-written now …
    info = backup(env)  # … and the next run cleans up after it
    left = {k.split("/")[3] for k in keys(env, prefix)}
    assert left == {info["name"]}
    assert not keys(env, f"coldcopy/{big_db}/inflight/")
    assert [b["name"] for b in json.loads(run_cli(env, "list-backups", "--json").out)] == [info["name"]]


def test_a_backup_stored_as_one_object_still_restores(pg, coldcopy_env, big_db) -> None:  # type: ignore[no-untyped-def]
    """Backups written before volumes existed: the stream is one object ``data``, the manifest has
    no ``volumes``.  They verify and restore as before."""
    env = {**coldcopy_env, "DB_NAME": big_db}
    name = backup(env)["name"]
    s3, bucket = s3_client(env), env["DO_SPACES_BUCKET"]
    vols = volumes(env, name)
    stream = b"".join(s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in vols)
    s3.put_object(Bucket=bucket, Key=data_key(env, name), Body=stream)
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in vols]})
    mkey = f"coldcopy/{big_db}/backups/{name}/manifest.json"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    assert sum(manifest["data"].pop("volumes")) == len(stream) == manifest["data"]["stored_size"]
    assert manifest["format"] == "coldcopy-manifest/2"
    manifest["format"] = "coldcopy-manifest/1"
    s3.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(manifest).encode())
    assert run_cli(env, "verify", name).rc == 0
    r = run_cli(env, "restore", "--backup-name", name, "--target-db", "legacy_layout")
    assert r.rc == 0, r.err
    c = pg.connect("legacy_layout")
    assert c.run("SELECT count(*) FROM big")[0][0] == 150000
    c.close()
    pg.drop_database("legacy_layout")
    # Damage still shows: the one object cut short.
    s3.put_object(Bucket=bucket, Key=data_key(env, name), Body=stream[:-10])
    v = run_cli(env, "verify", name)
    assert v.rc == 4 and "bytes but the manifest says" in v.out


def test_in_place_refused_while_a_session_it_cannot_end_is_connected(pg, coldcopy_env, fresh_db) -> None:  # type: ignore[no-untyped-def]
    """A non-superuser owner of the database (as on a managed server) with a superuser's session in
    it: the restore refuses before it writes anything, and nobody is disconnected."""
    role, password = f"owner_{fresh_db}", secrets.token_urlsafe(12)
    admin = pg.connect()
    admin.run(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'")
    admin.run(f"ALTER DATABASE {fresh_db} OWNER TO {role}")
    admin.close()
    env = {**coldcopy_env, "DB_NAME": fresh_db, "DB_USER": role, "DB_PASSWORD": password}
    own = pg.connect(fresh_db)
    own.run(f"SET ROLE {role}")
    own.run("CREATE TABLE marker (v text)")
    own.run("INSERT INTO marker VALUES ('before')")
    own.close()
    name = backup(env)["name"]
    superuser = pg.connect(fresh_db)  # e.g. the provider's monitoring, which this role may not end
    try:
        superuser.run("UPDATE marker SET v = 'after'")
        pid = superuser.run("SELECT pg_backend_pid()")[0][0]
        r = run_cli(env, "restore", "--backup-name", name)
        assert r.rc == 7, r.err
        assert "sessions this role may not end" in r.err and f"pid {pid} (postgres" in r.err
        assert superuser.run("SELECT pg_backend_pid(), v FROM marker") == [[pid, "after"]]  # still connected
        leftovers = superuser.run("SELECT datname FROM pg_database WHERE datname LIKE :p", p=f"{fresh_db}_%")
        assert leftovers == []  # no staging database was made
    finally:
        superuser.close()
    r = run_cli(env, "restore", "--backup-name", name, "--json")  # once it is gone, the restore runs
    assert r.rc == 0, r.err
    c = pg.connect(fresh_db)
    assert c.run("SELECT v FROM marker") == [["before"]]
    c.close()
    pg.drop_database(json.loads(r.out)["previous_kept_as"])
    c = pg.connect(fresh_db)
    c.run(f"REASSIGN OWNED BY {role} TO postgres")
    c.run(f"DROP ROLE {role}")
    c.close()
