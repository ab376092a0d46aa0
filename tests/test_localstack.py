"""The local stack itself: the throwaway cluster, moto's server, the demo data and the comparison."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pg8000.native
import pytest
import zstandard
from botocore.exceptions import ClientError

from coldcopy.errors import DatabaseError
from coldcopy.localstack.demodata import (
    DEMO_TABLES,
    compare_databases,
    load_demo_data,
    row_plan,
    table_row_counts,
)
from coldcopy.localstack.s3server import S3Server
from coldcopy.loopback import wait_until
from coldcopy.postgres.cluster import PgCluster

# -- the cluster -------------------------------------------------------------------------------


def test_cluster_accepts_its_password_and_refuses_a_wrong_one(pg: PgCluster) -> None:
    with closing(pg.connect()) as conn:
        assert conn.run("SELECT current_user, inet_server_addr()::text") == [["postgres", "127.0.0.1/32"]]
        assert conn.run("SELECT current_setting('server_encoding'), current_setting('fsync')") == [
            ["UTF8", "off"]
        ]
    with pytest.raises(pg8000.native.DatabaseError) as refused:
        pg8000.native.Connection(pg.user, host=pg.host, port=pg.port, password="wrong", database="postgres")
    assert refused.value.args[0]["C"] == "28P01"  # invalid_password


def test_client_tools_connect_with_env_including_replication(pg: PgCluster) -> None:
    env = {"PATH": os.environ["PATH"], **pg.env()}
    psql = str(pg.bin_dir / "psql")
    query = "SELECT current_setting('wal_level'), current_setting('max_wal_senders')"
    out = subprocess.run(
        [psql, "-XAtc", query, "postgres"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "replica|10"
    # pg_basebackup and pg_receivewal log in like this: the replication line of pg_hba.conf, over TCP.
    ident = subprocess.run(
        [psql, "-XAtc", "IDENTIFY_SYSTEM", "dbname=postgres replication=true"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ident.returncode == 0, ident.stderr


def test_database_helpers(pg: PgCluster) -> None:
    pg.create_database('Odd "name" ü')
    with closing(pg.connect('Odd "name" ü')) as conn:
        assert conn.run("SELECT current_database()") == [['Odd "name" ü']]
        pg.drop_database('Odd "name" ü')  # disconnects conn (WITH FORCE)
    pg.drop_database('Odd "name" ü')  # already gone: no error
    assert pg.server_version_num() >= 130000


def test_cluster_lifecycle_restart_and_idempotent_destroy() -> None:
    cluster = PgCluster(settings={"work_mem": "8MB", "application_name": "it's a \\ test"}, password="p'w\"x")
    with cluster:
        with closing(cluster.connect()) as conn:
            assert conn.run("SHOW work_mem") == [["8MB"]]
            assert conn.run("SHOW application_name") == [["it's a \\ test"]]
            conn.run("CREATE TABLE kept (x int)")
        cluster.stop()
        assert not cluster.is_running()
        cluster.stop()  # stopping a stopped cluster is fine
        cluster.start()
        with closing(cluster.connect()) as conn:
            assert conn.run("SELECT to_regclass('kept') IS NOT NULL") == [[True]]
    assert not cluster.base_dir.exists()
    cluster.destroy()
    with pytest.raises(DatabaseError, match="destroyed"):
        cluster.start()


def test_a_base_backup_made_by_root_starts_as_a_second_cluster(pg: PgCluster, demo_db: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="coldcopy-test-"))
    base.chmod(0o755)
    try:
        backup = subprocess.run(
            [str(pg.bin_dir / "pg_basebackup"), "-D", str(base / "data"), "-X", "stream", "-c", "fast"],
            env={"PATH": os.environ["PATH"], **pg.env()},
            capture_output=True,
            text=True,
        )
        assert backup.returncode == 0, backup.stderr
        (base / "data" / "marker").write_text("root made me")  # like a recovery.signal written by root
        with PgCluster(base_dir=base) as copy:
            assert copy.port != pg.port
            with closing(pg.connect(demo_db)) as a, closing(copy.connect(demo_db)) as b:
                assert compare_databases(a, b) == []
        assert not (base / "data").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_destroy_after_the_server_was_killed_leaves_nothing() -> None:
    cluster = PgCluster().start()
    with closing(cluster.connect()):
        pass
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    assert wait_until(lambda: not cluster.is_running(), timeout=10)
    cluster.destroy()
    cluster.destroy()
    assert not cluster.base_dir.exists()
    assert not _postgres_processes_in(str(cluster.data_dir))


def test_failed_start_reports_the_server_log_without_the_password() -> None:
    cluster = PgCluster(settings={"shared_buffers": "plenty"}, password="hunter2-secret")
    with pytest.raises(DatabaseError) as failed:
        cluster.start()
    assert "shared_buffers" in str(failed.value)
    assert "hunter2-secret" not in str(failed.value)
    cluster.destroy()
    assert not cluster.base_dir.exists()


def test_base_dir_the_postgres_user_cannot_enter_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the cluster to another OS user")
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    cluster = PgCluster(base_dir=hidden / "cluster")
    try:
        with pytest.raises(DatabaseError, match="cannot enter"):
            cluster.start()
    finally:
        cluster.destroy()


def test_settings_must_be_single_lines() -> None:
    with pytest.raises(ValueError):
        PgCluster(settings={"work_mem": "1MB\nfsync = on"})
    with pytest.raises(ValueError):
        PgCluster(settings={"bad name": "1"})


# -- demo data -------------------------------------------------------------------------------


def test_demo_data_has_every_table_nulls_and_a_table_without_key(pg: PgCluster, demo_db: str) -> None:
    with closing(pg.connect(demo_db)) as conn:
        counts = table_row_counts(conn)
        assert set(DEMO_TABLES) <= set(counts)
        assert all(counts[t] > 0 for t in DEMO_TABLES)
        keyless = conn.run(
            "SELECT c.relname FROM pg_class c"
            " WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace AND NOT EXISTS"
            " (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)"
        )
        assert keyless == [["audit_log"]]
        # Exact duplicate rows, which only a multiset comparison tells apart.
        assert conn.run("SELECT count(*) - count(DISTINCT a::text) FROM audit_log a")[0][0] >= 1
        nulls = conn.run(
            "SELECT (SELECT count(*) FROM users WHERE last_login_at IS NULL),"
            " (SELECT count(*) FROM leads WHERE phone IS NULL),"
            " (SELECT count(*) FROM attachments WHERE data IS NULL)"
        )[0]
        assert all(n > 0 for n in nulls)
        kinds = dict(
            conn.run(
                "SELECT relname, relkind::text FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " AND relname IN ('campaign_stats', 'invoice_number_seq', 'email_events_lead_idx')"
            )
        )
        assert kinds == {"campaign_stats": "v", "invoice_number_seq": "S", "email_events_lead_idx": "i"}
        assert conn.run("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")[0][0] >= 5
        assert conn.run("SELECT count(*) FROM campaign_stats")[0][0] == counts["public.campaigns"]


def test_demo_data_round_trips_non_ascii_text(pg: PgCluster, demo_db: str) -> None:
    with closing(pg.connect(demo_db)) as conn:
        for needle in ("Grüße", "日本語", "🚀"):
            rows = conn.run(
                "SELECT signature, length(signature), octet_length(signature) FROM users"
                " WHERE signature LIKE '%' || :n || '%' LIMIT 1",
                n=needle,
            ) or conn.run(
                "SELECT body, length(body), octet_length(body) FROM campaigns"
                " WHERE body LIKE '%' || :n || '%' LIMIT 1",
                n=needle,
            )
            assert rows, f"no demo text contains {needle!r}"
            text, chars, octets = rows[0]
            assert needle in text
            assert (len(text), len(text.encode())) == (chars, octets)  # characters, not mojibake


def test_demo_data_large_values(pg: PgCluster, demo_db: str) -> None:
    with closing(pg.connect(demo_db)) as conn:
        (blob_size,) = conn.run(
            "SELECT octet_length(lo_get(d.blob)) FROM documents d WHERE d.blob IS NOT NULL"
        )[0]
        assert 200_000 < blob_size < 1_000_000
        assert conn.run("SELECT max(octet_length(body)) FROM documents")[0][0] > 2_000_000
        assert conn.run("SELECT count(*) FROM attachments WHERE octet_length(data) > 1000")[0][0] > 0


def test_demo_data_loads_the_planned_rows_and_is_deterministic(pg: PgCluster, fresh_db: str) -> None:
    other = fresh_db + "b"
    pg.create_database(other)
    try:
        with closing(pg.connect(fresh_db)) as a, closing(pg.connect(other)) as b:
            loaded = load_demo_data(a, scale=0.001)
            assert loaded == table_row_counts(a)
            assert loaded == {f"public.{t}": n for t, n in row_plan(0.001).items()}
            load_demo_data(b, scale=0.001)
            assert compare_databases(a, b) == []
            with pytest.raises(DatabaseError, match="already holds"):
                load_demo_data(a, scale=0.001)
    finally:
        pg.drop_database(other)


def test_demo_text_compresses_like_text_not_like_padding(pg: PgCluster, demo_db: str) -> None:
    with closing(pg.connect(demo_db)) as conn:
        sample = "\n".join(
            r[0] for r in conn.run("SELECT e::text FROM email_events e ORDER BY id LIMIT 3000")
        ) + "\n".join(r[0] for r in conn.run("SELECT body FROM campaigns ORDER BY id"))
    raw = sample.encode()
    ratio = len(raw) / len(zstandard.ZstdCompressor(level=3).compress(raw))
    assert 1.8 < ratio < 5, ratio


# -- compare_databases -------------------------------------------------------------------------


@pytest.fixture
def demo_copy(pg: PgCluster, demo_db: str) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def copy() -> str:
        name = f"democopy{len(made)}{os.getpid()}"
        with closing(pg.connect()) as conn:
            conn.run(f"CREATE DATABASE {name} TEMPLATE {demo_db}")
        made.append(name)
        return name

    yield copy
    for name in made:
        pg.drop_database(name)


def test_compare_finds_nothing_in_an_identical_copy(
    pg: PgCluster, demo_db: str, demo_copy: Callable[[], str]
) -> None:
    copy = demo_copy()
    with closing(pg.connect(demo_db)) as a, closing(pg.connect(copy)) as b:
        assert compare_databases(a, b) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("UPDATE leads SET notes = 'changed' WHERE id = 1", "table public.leads: contents differ"),
        ("DELETE FROM email_events WHERE id = 2", "table public.email_events: "),
        # Same row count: one duplicate row removed, another row doubled.
        (
            "DELETE FROM audit_log WHERE ctid = (SELECT ctid FROM audit_log a WHERE a::text IN"
            " (SELECT d::text FROM audit_log d GROUP BY 1 HAVING count(*) > 1) LIMIT 1);"
            " INSERT INTO audit_log SELECT * FROM audit_log a WHERE a::text IN"
            " (SELECT u::text FROM audit_log u GROUP BY 1 HAVING count(*) = 1) LIMIT 1",
            "table public.audit_log: contents differ",
        ),
        ("SELECT lo_put(4242420, 10, '\\x00')", "large object 4242420: contents differ"),
        ("SELECT lo_unlink(4242420)", "large object"),
        ("SELECT nextval('invoice_number_seq')", "sequence public.invoice_number_seq: last value"),
        ("DROP VIEW campaign_stats", "view public.campaign_stats: only in the first database"),
        ("ALTER TABLE users ADD COLUMN extra int", "table public.users: columns differ"),
    ],
)
def test_compare_reports_each_kind_of_change(
    pg: PgCluster, demo_db: str, demo_copy: Callable[[], str], change: str, expected: str
) -> None:
    copy = demo_copy()
    with closing(pg.connect(copy)) as b:
        b.run(change)
    with closing(pg.connect(demo_db)) as a, closing(pg.connect(copy)) as b:
        diffs = compare_databases(a, b)
    assert diffs, "the change went unnoticed"
    assert any(d.startswith(expected) for d in diffs), diffs


# -- the S3 server -------------------------------------------------------------------------------


def test_s3_server_put_get_and_conditional_write(s3_server: S3Server, bucket: str) -> None:
    client = s3_server.client()
    body = "Grüße 日本語 🚀".encode()
    client.put_object(Bucket=bucket, Key="a/b.txt", Body=body)
    assert client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == body
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"again", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"


def test_buckets_are_separate_per_test(s3_server: S3Server, bucket: str) -> None:
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_own_s3_server_reset_logs_and_stop() -> None:
    server = S3Server()
    with server:
        server.create_bucket("reset-me")
        assert [b["Name"] for b in server.client().list_buckets()["Buckets"]] == ["reset-me"]
        server.reset()
        assert server.client().list_buckets()["Buckets"] == []
        assert '"PUT /reset-me' in server.log_path.read_text()  # moto's output goes to the log file
        pid = server.pid
        assert pid is not None
    assert server.pid is None
    assert not _alive(pid)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.endpoint_url, timeout=2)
    server.stop()  # twice is fine
    with server:  # and it starts again
        assert server.client().list_buckets()["Buckets"] == []


# -- helpers ---------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _postgres_processes_in(data_dir: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(data_dir):
                    found.append(int(entry))
            except OSError:
                continue
    return found
