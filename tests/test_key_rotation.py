"""`coldcopy key rotate` (issue 17): a bucket with a logical backup and WAL files, rotated to a new
passphrase; a bucket with every object kind (a change batch, a files snapshot, an erasure record
too) rotated in runs that crash at random writes, each kind read back by its own reader;
interrupted by SIGKILL at its pause points and resumed; a wrong old key refused before
anything is written; restore and wal-fetch afterwards with the new key alone; `key status` names a
key id no setting holds."""

from __future__ import annotations

import json
import os
import random
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from cli_helpers import killed_at_point, run_cli
from coldcopy.backup.files import take_snapshot
from coldcopy.backup.logical import run_backup
from coldcopy.backup.reader import BackupReader
from coldcopy.changes.drain import drain
from coldcopy.changes.monitor import archive_slot
from coldcopy.changes.slot import setup
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.core.erasure import ErasureKind, new_erasure
from coldcopy.errors import ColdCopyError
from coldcopy.localstack.s3server import S3Server
from coldcopy.ops.rotate import key_census, rotate, streams
from coldcopy.postgres.cluster import PgCluster
from coldcopy.restore.erasures import read_ledger, record_erasure
from coldcopy.restore.files import verify_files
from coldcopy.restore.replay import batch_lines, batch_records
from coldcopy.storage.project_files import open_project_storage
from coldcopy.storage.s3 import open_store
from coldcopy.stream.crypto import MasterKey
from coldcopy.wal.archive import push

HISTORY = ("00000002.history", "00000003.history")
NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def bucket_state(env: dict[str, str]) -> dict[str, str]:
    """Every object under the cluster prefix and its ETag."""
    old = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update({**env, "COLDCOPY_ENV_FILE": os.devnull})
        storage = open_store(load_settings())
    finally:
        os.environ.clear()
        os.environ.update(old)
    return {o.key: o.etag for o in storage.list("")}


@pytest.fixture
def stocked(pg, coldcopy_env, fresh_db, tmp_path):  # type: ignore[no-untyped-def]
    """A backup of a one-row table and two WAL history files, all under the old key."""
    env = {**coldcopy_env, "DB_NAME": fresh_db}
    c = pg.connect(fresh_db)
    c.run("CREATE TABLE marker (v text)")
    c.run("INSERT INTO marker VALUES ('backed up')")
    c.close()
    r = run_cli(env, "--json", "backup")
    assert r.rc == 0, r.err
    for name in HISTORY:
        (tmp_path / name).write_text(f"1\t0/3000000\tno recovery target specified ({name})\n")
        r2 = run_cli(env, "wal-push", str(tmp_path / name))
        assert r2.rc == 0, r2.err
    return env, json.loads(r.out)["name"]


def rotate_env(env: dict[str, str], new: str) -> dict[str, str]:
    return {**env, "BACKUP_ENCRYPTION_KEY_NEW": new}


def test_a_wrong_old_key_is_refused_before_anything_is_written(stocked) -> None:  # type: ignore[no-untyped-def]
    env, _ = stocked
    before = bucket_state(env)
    wrong, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    r = run_cli({**env, "BACKUP_ENCRYPTION_KEY": wrong, "BACKUP_ENCRYPTION_KEY_NEW": new}, "key", "rotate")
    assert r.rc != 0
    assert "nothing was written" in r.err
    assert bucket_state(env) == before
    for secret in (wrong, new, env["BACKUP_ENCRYPTION_KEY"]):
        assert secret not in r.out + r.err


def test_dry_run_names_what_it_would_touch_and_writes_nothing(stocked) -> None:  # type: ignore[no-untyped-def]
    env, name = stocked
    before = bucket_state(env)
    r = run_cli(rotate_env(env, secrets.token_urlsafe(32)), "--json", "key", "rotate", "--dry-run")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["dry_run"] and out["rewrapped"] == 4  # data, globals, two WAL files
    assert f"backups/{name}/data" in out["rewrapped_streams"]
    wal = [k for k in out["rewrapped_streams"] if k.startswith("wal/")]
    assert sorted(k.rsplit("/", 1)[-1] for k in wal) == sorted(HISTORY)
    assert bucket_state(env) == before


@pytest.mark.parametrize("point", ["rotate:after-record", "rotate:after-put"])
def test_rotation_killed_and_resumed_then_restore_with_the_new_key_alone(  # type: ignore[no-untyped-def]
    pg, stocked, tmp_path, point
) -> None:
    env, name = stocked
    old, new = env["BACKUP_ENCRYPTION_KEY"], secrets.token_urlsafe(32)
    killed_at_point(rotate_env(env, new), point, tmp_path, "key", "rotate")
    records = {k: e for k, e in bucket_state(env).items() if k.startswith("keys/rewrapped/")}
    assert len(records) == 1  # killed after the first stream's record

    # Mid-rotation: with the new key writing and the old one in PREVIOUS, the backup reads.
    mid = {**env, "BACKUP_ENCRYPTION_KEY": new, "BACKUP_ENCRYPTION_KEY_PREVIOUS": old}
    v = run_cli(mid, "verify", name)
    assert v.rc == 0, v.err
    # …and `key status` with the new key alone names the old key id as held by no setting.
    st = run_cli({**env, "BACKUP_ENCRYPTION_KEY": new}, "--json", "key", "status")
    assert st.rc == 3, st.err
    assert json.loads(st.out)["unheld"]
    status = run_cli({**env, "BACKUP_ENCRYPTION_KEY": new}, "--json", "status")
    assert status.rc == 1
    assert any("which no setting holds" in p for p in json.loads(status.out)["problems"])

    r = run_cli(rotate_env(env, new), "--json", "key", "rotate")  # resumes
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["proved"] == 4 and out["rewrapped"] + out["already_under_target"] == 4
    # The interrupted run's work stands: its record is reused as it was; after the PUT, that stream
    # is already under the new key.
    assert out["rewrapped"] == (4 if point == "rotate:after-record" else 3)
    after = bucket_state(env)
    assert all(after[k] == e for k, e in records.items())
    assert sum(k.startswith("keys/rewrapped/") for k in after) == 2  # the backup's data and globals
    for secret in (old, new):
        assert secret not in r.out + r.err

    only_new = {**env, "BACKUP_ENCRYPTION_KEY": new}
    st = run_cli(only_new, "--json", "key", "status")
    assert st.rc == 0 and json.loads(st.out)["unheld"] == {}, st.out
    # The old key alone no longer opens anything.
    assert run_cli(env, "verify", name).rc != 0
    c = pg.connect(env["DB_NAME"])
    c.run("UPDATE marker SET v = 'live'")
    c.close()
    rr = run_cli(only_new, "restore", "--backup-name", name)
    assert rr.rc == 0, rr.err
    c = pg.connect(env["DB_NAME"])
    assert c.run("SELECT v FROM marker") == [["backed up"]]
    c.close()
    dest = tmp_path / "fetched"
    f = run_cli(only_new, "wal-fetch", HISTORY[0], str(dest))
    assert f.rc == 0, f.err
    assert "(00000002.history)" in dest.read_text()


# -- every object kind: backups, WAL, change batches, files snapshots, erasure records ---------------
class Crash(Exception):
    """The rotation process dying between two writes."""


class CrashAt:
    """Counts the writes of a store; the ``n``-th and every later one raises :class:`Crash`."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            self.seen += 1
            if self.seen >= self.n:
                raise Crash()
            return real(*args, **kwargs)

        return write


@pytest.fixture(scope="module")
def lpg() -> Iterator[PgCluster]:
    with PgCluster(settings={"wal_level": "logical", "max_replication_slots": "5"}) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def project_server() -> Iterator[S3Server]:
    """The Supabase Storage stand-in the files snapshot copies from."""
    with S3Server() as server:
        yield server


@pytest.fixture
def every_kind(  # type: ignore[no-untyped-def]
    lpg: PgCluster, project_server: S3Server, s3_server: S3Server, bucket: str, tmp_path
) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """A bucket holding a logical backup, a WAL file, a change batch, a files snapshot (its index
    and contents) and an erasure record, all under the old key; what each should read back as."""
    db = "cc" + secrets.token_hex(4)
    lpg.create_database(db)
    project_server.reset()
    env = {
        "DB_HOST": lpg.host,
        "DB_PORT": str(lpg.port),
        "DB_NAME": db,
        "DB_USER": lpg.user,
        "DB_PASSWORD": lpg.password,
        "DB_SSLMODE": "disable",
        "COLDCOPY_CLUSTER": db,
        **s3_server.spaces_env(bucket),
        "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "SUPABASE_STORAGE_ENDPOINT": project_server.endpoint_url,
        "SUPABASE_STORAGE_REGION": project_server.region,
        "SUPABASE_STORAGE_KEY": "project-key",
        "SUPABASE_STORAGE_SECRET": "project-storage-secret-xyz",
        "COLDCOPY_ENV_FILE": os.devnull,
    }
    settings = load_settings(env)
    ctx = open_context(settings)
    conn = lpg.connect(db)
    try:
        conn.run("CREATE TABLE lead (id int PRIMARY KEY, email text)")
        setup(conn, archive_slot(settings))
        conn.run("INSERT INTO lead VALUES (1, 'before@example.com')")
        manifest = run_backup(settings, ctx=ctx)
        conn.run("INSERT INTO lead VALUES (2, 'changed@example.com')")
        drained = drain(ctx, conn, archive_slot(settings))
        assert drained.batches, "the change archive drained nothing"
        client = project_server.client()
        client.create_bucket(Bucket="docs")
        client.put_object(Bucket="docs", Key="a.txt", Body=b"alpha" * 100)
        client.put_object(Bucket="docs", Key="b.txt", Body=b"beta")
        snap = take_snapshot(ctx, open_project_storage(settings), now=NOW, backup=manifest.name)
        (tmp_path / HISTORY[0]).write_text("1\t0/3000000\tno recovery target specified\n")
        push(ctx, tmp_path / HISTORY[0])
        subject = "gone@example.com"
        kind = ErasureKind(
            "lead", ("DELETE FROM public.lead WHERE email = :subject",), "SELECT 0 WHERE :subject = ''"
        )
        erasure = record_erasure(ctx, new_erasure(kind, subject, db, NOW))
        yield env, {"backup": manifest.name, "snapshot": snap.snapshot, "erasure": erasure.id}
    finally:
        conn.run(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = :d", d=db
        )
        conn.close()
        lpg.drop_database(db)


def read_every_kind(env: dict[str, str], want: dict[str, Any]) -> None:
    """Each kind read back in full through its own reader with the keys of ``env``."""
    ctx = open_context(load_settings(env))
    reader = BackupReader(ctx, want["backup"])
    reader.confirm()
    assert b"before@example.com" in reader.read_small(reader.manifest.data)
    lines = [line for _, record in batch_records(ctx) for line in batch_lines(ctx, record)]
    assert any("changed@example.com" in line for line in lines)
    check = verify_files(ctx, want["snapshot"])
    assert check["ok"] and check["contents"] == 2, check
    assert [e.id for e in read_ledger(ctx)] == [want["erasure"]]


def test_rotation_covers_every_object_kind_interrupted_at_random_and_resumed(  # type: ignore[no-untyped-def]
    every_kind, monkeypatch
) -> None:
    env, want = every_kind
    old, new = env["BACKUP_ENCRYPTION_KEY"], secrets.token_urlsafe(32)
    old_key, new_key = MasterKey.from_passphrase(old), MasterKey.from_passphrase(new)
    ctx = open_context(load_settings(env))
    kinds = {s.kind for s in streams(ctx)}
    assert kinds == {"backup", "wal", "change", "files-index", "files-content", "erasure"}
    dry = rotate(ctx, old_key, new_key, now=NOW, dry_run=True)
    total = dry.streams
    checksummed = sum(1 for s in streams(ctx) if s.checksummed)
    writes = 2 * checksummed + (total - checksummed)  # a record and a PUT, or a PUT alone
    assert len(dry.rewrapped) == total

    rng = random.Random(17)
    for crash_at in sorted(rng.sample(range(1, writes), 3)):  # three interrupted runs, then the last
        crashing = open_context(load_settings(env))
        crash = CrashAt(crash_at)
        monkeypatch.setattr(crashing.storage, "put_bytes", crash.wrap(crashing.storage.put_bytes))
        monkeypatch.setattr(crashing.storage, "put_json", crash.wrap(crashing.storage.put_json))
        ring = MasterKey.from_passphrase(old).with_previous((new_key,))
        with pytest.raises(Crash):
            rotate(crashing, ring, new_key, now=NOW)
        # Mid-rotation, every kind reads with the new key writing and the old one in PREVIOUS.
        read_every_kind({**env, "BACKUP_ENCRYPTION_KEY": new, "BACKUP_ENCRYPTION_KEY_PREVIOUS": old}, want)

    ring = MasterKey.from_passphrase(old).with_previous((new_key,))
    report = rotate(open_context(load_settings(env)), ring, new_key, now=NOW)
    assert report.proved == total and report.already + len(report.rewrapped) == total
    assert report.already > 0  # the interrupted runs' work stands
    census = key_census(ctx)
    assert list(census) == [new_key.key_id], census
    assert sum(census[new_key.key_id].values()) == total
    records = [o.key for o in ctx.storage.list("keys/rewrapped/")]
    assert len(records) == checksummed

    only_new = {**env, "BACKUP_ENCRYPTION_KEY": new}
    read_every_kind(only_new, want)
    with pytest.raises(ColdCopyError):  # the old key alone opens none of it any more
        read_every_kind(env, want)
