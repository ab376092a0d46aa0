"""`coldcopy key rotate` (issue 17): a bucket with a logical backup and WAL files, rotated to a new
passphrase; interrupted by SIGKILL at its pause points and resumed; a wrong old key refused before
anything is written; restore and wal-fetch afterwards with the new key alone; `key status` names a
key id no setting holds."""

from __future__ import annotations

import json
import os
import secrets

import pytest

from cli_helpers import killed_at_point, run_cli
from coldcopy.config import load_settings
from coldcopy.storage.s3 import open_store

HISTORY = ("00000002.history", "00000003.history")


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
