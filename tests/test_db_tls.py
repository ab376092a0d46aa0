"""TLS to the database: every sslmode with the right CA, a wrong CA and none, against local servers
whose certificates a test CA (made with openssl) signed: one for this host, one for another host
name, one expired.  ColdCopy's own connections (pg8000) and the client programs (psql here, which
gets the very environment pg_dump, pg_restore, pg_basebackup and pg_receivewal get) must connect,
encrypted or not, exactly where the other does, and the outcome must be what libpq's rules say.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_helpers import run_cli
from coldcopy.config import SSL_MODES, load_settings, normalise_pem
from coldcopy.errors import ConfigError, DatabaseError
from coldcopy.localstack.dbcompare import compare_databases
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.cluster import PgCluster
from coldcopy.postgres.server import chown_to_owner
from coldcopy.postgres.tls import NO_FILE, libpq_tls_env, libpq_tls_hint
from coldcopy.postgres.tools import tool_path

IS_SSL = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
OTHER_HOST = "db.other.example"


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@dataclass(frozen=True)
class Certs:
    folder: Path

    def ca(self, name: str) -> Path:
        return self.folder / f"{name}.crt"


def make_ca(folder: Path, name: str) -> None:
    openssl(
        *(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ),
        *("-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN=ColdCopy {name}"),
        cwd=folder,
    )


def make_server_cert(folder: Path, name: str, ca: str, sans: str, days: str) -> None:
    (folder / f"{name}.ext").write_text(f"subjectAltName={sans}\n")
    openssl(
        *(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        ),
        *("-subj", f"/CN={name}"),
        cwd=folder,
    )
    openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-out", f"{name}.crt", "-days", days, "-extfile", f"{name}.ext"),
        cwd=folder,
    )
    for part in ("crt", "key"):
        path = folder / f"{name}.{part}"
        path.chmod(0o600)
        chown_to_owner(path)  # the server reads them; it refuses a key others may read


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    folder = Path(tempfile.mkdtemp(prefix="coldcopy-tls-test-"))
    folder.chmod(0o755)  # the postgres OS user reads the server's certificates here
    make_ca(folder, "ca")
    make_ca(folder, "wrong-ca")  # the same subject form, another key: a CA the server never used
    here = "DNS:localhost,IP:127.0.0.1"
    make_server_cert(folder, "good", "ca", here, "2")
    make_server_cert(folder, "other", "ca", f"DNS:{OTHER_HOST}", "2")
    make_server_cert(folder, "expired", "ca", here, "-1")  # not after = a day before not before
    yield Certs(folder)
    shutil.rmtree(folder, ignore_errors=True)


def tls_cluster(certs: Certs, cert: str, ssl_only: bool) -> PgCluster:
    cluster = PgCluster(
        settings={
            "ssl": "on",
            "ssl_cert_file": str(certs.folder / f"{cert}.crt"),
            "ssl_key_file": str(certs.folder / f"{cert}.key"),
        }
    )
    cluster.start()
    if ssl_only:
        hba = cluster.data_dir / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        hba.write_text("".join(("hostssl" + ln[4:] if ln.startswith("host ") else ln) + "\n" for ln in lines))
        cluster.stop()  # a restart, not a reload: start() returns once the server runs with it
        cluster.start()
    return cluster


@pytest.fixture(scope="module")
def servers(certs: Certs) -> Iterator[dict[str, PgCluster]]:
    made: dict[str, PgCluster] = {}
    try:
        for key, cert, ssl_only in (
            ("good", "good", True),
            ("other", "other", True),
            ("expired", "expired", True),
            ("good-or-plain", "good", False),
        ):
            made[key] = tls_cluster(certs, cert, ssl_only)
        yield made
    finally:
        for cluster in made.values():
            cluster.destroy()


def env_for(cluster: PgCluster, mode: str, root: str) -> dict[str, str]:
    return {
        "DB_HOST": cluster.host,
        "DB_PORT": str(cluster.port),
        "DB_NAME": "postgres",
        "DB_USER": cluster.user,
        "DB_PASSWORD": cluster.password,
        "DB_SSLMODE": mode,
        "DB_SSLROOTCERT": root,
        "COLDCOPY_ENV_FILE": "/dev/null",
    }


def roots(certs: Certs) -> dict[str, str]:
    # The right CA as a value (PEM text, as a function gets it), the wrong one as a file's path.
    return {"none": "", "right": certs.ca("ca").read_text(), "wrong": str(certs.ca("wrong-ca"))}


def expected(server: str, mode: str, root: str) -> str:
    """What libpq does: "ssl" (connects encrypted), "plain" (connects unencrypted) or "refused"."""
    if mode == "disable":
        return "plain" if server == "good-or-plain" else "refused"
    tls_ok = not (
        root == "wrong"
        or (root == "right" and server == "expired")
        or (mode == "verify-full" and server == "other")
    )
    if server == "good-or-plain" and mode == "allow":
        return "plain"  # allow tries without TLS first, and this server takes that
    if tls_ok:
        return "ssl"
    if server == "good-or-plain" and mode == "prefer":
        return "plain"  # the TLS attempt failed; prefer then tries without TLS
    return "refused"


def pg8000_outcome(env: dict[str, str]) -> tuple[str, str]:
    pg = Postgres(load_settings(env))
    try:
        with pg.session() as conn:
            return ("ssl" if conn.run(IS_SSL)[0][0] else "plain"), ""
    except DatabaseError as exc:
        return "refused", f"{exc.message} | {exc.hint}"


def psql_outcome(env: dict[str, str]) -> tuple[str, str]:
    pg = Postgres(load_settings(env))
    proc = subprocess.run(
        [tool_path("psql", pg.s), "--no-password", "-X", "-At", "-c", IS_SSL],
        env=pg.libpq_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return "refused", proc.stderr
    return ("ssl" if proc.stdout.strip() == "t" else "plain"), ""


CASES = [
    (server, mode, root)
    for server in ("good", "other", "expired", "good-or-plain")
    for mode in SSL_MODES
    for root in ("none", "right", "wrong")
    if not (mode in ("verify-ca", "verify-full") and root == "none")  # refused up front, tested below
]


@pytest.mark.parametrize(("server", "mode", "root"), CASES, ids=["-".join(c) for c in CASES])
def test_pg8000_and_libpq_agree_with_libpq_rules(
    servers: dict[str, PgCluster], certs: Certs, server: str, mode: str, root: str
) -> None:
    env = env_for(servers[server], mode, roots(certs)[root])
    want = expected(server, mode, root)
    ours, why = pg8000_outcome(env)
    theirs, their_why = psql_outcome(env)
    assert theirs == want, f"psql: {their_why}"
    assert ours == want, f"pg8000: {why}"
    if want == "refused":
        message = why.split(" | ")[0]
        assert not re.search(r":\s*\d+\s*$", message), message  # never a bare number


def refusal(cluster: PgCluster, mode: str, root: str) -> DatabaseError:
    """The error ColdCopy's own connection raises."""
    with pytest.raises(DatabaseError) as caught:
        Postgres(load_settings(env_for(cluster, mode, root))).connect()
    return caught.value


def test_unknown_ca_says_so_and_where_to_get_the_right_one(
    servers: dict[str, PgCluster], certs: Certs
) -> None:
    err = refusal(servers["good"], "verify-full", str(certs.ca("wrong-ca")))
    assert "not signed by the CA in DB_SSLROOTCERT" in err.message
    assert "issued by CN=ColdCopy ca" in err.message
    assert (
        err.hint
        and "DB_SSLROOTCERT" in err.hint
        and "Supabase" in err.hint
        and "Download certificate" in err.hint
    )


def test_host_name_mismatch_names_what_the_certificate_is_for(
    servers: dict[str, PgCluster], certs: Certs
) -> None:
    err = refusal(servers["other"], "verify-full", str(certs.ca("ca")))
    assert f"issued for {OTHER_HOST}" in err.message and "not valid for '127.0.0.1'" in err.message
    assert err.hint and "DB_HOST" in err.hint and "verify-ca" in err.hint


def test_expired_certificate_says_when(servers: dict[str, PgCluster], certs: Certs) -> None:
    err = refusal(servers["expired"], "verify-ca", str(certs.ca("ca")))
    assert "expired on 20" in err.message and "UTC" in err.message


def test_disable_against_a_tls_only_server_says_it_needs_encryption(servers: dict[str, PgCluster]) -> None:
    err = refusal(servers["good"], "disable", "")
    assert "accepts only encrypted connections" in err.message and err.hint and "DB_SSLROOTCERT" in err.hint


def test_require_against_a_server_without_tls_is_refused_and_prefer_connects(pg: PgCluster) -> None:
    # The session's cluster has ssl off: require refuses (like libpq), prefer and allow go plain.
    assert "does not accept TLS" in refusal(pg, "require", "").message
    assert psql_outcome(env_for(pg, "require", ""))[0] == "refused"
    for mode in ("prefer", "allow", "disable"):
        assert pg8000_outcome(env_for(pg, mode, "")) == ("plain", "")
        assert psql_outcome(env_for(pg, mode, "")) == ("plain", "")


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_a_verify_mode_without_a_root_certificate_is_refused_up_front(mode: str) -> None:
    for prefix in ("DB", "VERIFY_DB"):
        with pytest.raises(ConfigError) as caught:
            load_settings({f"{prefix}_SSLMODE": mode, "COLDCOPY_ENV_FILE": "/dev/null"})
        assert any(f"{prefix}_SSLMODE={mode} needs {prefix}_SSLROOTCERT" in p for p in caught.value.problems)
        assert caught.value.exit_code == 2


def test_the_cli_exits_2_naming_the_setting(coldcopy_env: dict[str, str]) -> None:
    r = run_cli({**coldcopy_env, "DB_SSLMODE": "verify-full"}, "backup")
    assert r.rc == 2 and "DB_SSLROOTCERT" in r.err


def test_a_root_certificate_that_is_not_one_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    for value, said in (
        (str(junk), "holds none"),
        (str(tmp_path / "absent.crt"), "nor a file that can be read"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "holds none"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings({"DB_SSLROOTCERT": value, "COLDCOPY_ENV_FILE": "/dev/null"})
        assert any(p.startswith("DB_SSLROOTCERT") and said in p for p in caught.value.problems), value


def test_a_pem_value_that_lost_its_line_breaks_still_reads(certs: Certs) -> None:
    pem = certs.ca("ca").read_text()
    body = pem.strip().splitlines()
    flattened = " ".join(body)  # how some dashboards keep a multi-line value
    escaped = "\\n".join(body)  # how JSON and some .env writers keep it
    for value in (pem, flattened, escaped):
        got = load_settings({"DB_SSLROOTCERT": value, "COLDCOPY_ENV_FILE": "/dev/null"}).db_sslrootcert
        assert got is not None and got.pem == normalise_pem(pem) and got.path == ""
    from_file = load_settings({"DB_SSLROOTCERT": str(certs.ca("ca")), "COLDCOPY_ENV_FILE": "/dev/null"})
    assert from_file.db_sslrootcert is not None and from_file.db_sslrootcert.path == str(certs.ca("ca"))


def test_client_programs_get_the_root_certificate_as_a_private_file(certs: Certs) -> None:
    pem = certs.ca("ca").read_text()
    settings = load_settings(
        {"DB_SSLMODE": "verify-full", "DB_SSLROOTCERT": pem, "COLDCOPY_ENV_FILE": "/dev/null"}
    )
    env = Postgres(settings).libpq_env()
    path = Path(env["PGSSLROOTCERT"])
    assert env["PGSSLMODE"] == "verify-full" and path.read_text() == normalise_pem(pem)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    # Without one, libpq must not fall back to ~/.postgresql/root.crt, which pg8000 would not read.
    assert libpq_tls_env("require", None)["PGSSLROOTCERT"] == NO_FILE
    assert not Path(NO_FILE).exists()


# -- backup and restore over TLS ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_source(servers: dict[str, PgCluster]) -> str:
    cluster = servers["good"]
    cluster.create_database("tlsapp")
    conn = cluster.connect("tlsapp")  # PgCluster's own connection: pg8000 with TLS, unverified
    try:
        conn.run("CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL)")
        conn.run("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g")
    finally:
        conn.close()
    return "tlsapp"


def tls_env(base: dict[str, str], cluster: PgCluster, db: str, mode: str, root: str) -> dict[str, str]:
    return {**base, **env_for(cluster, mode, root), "DB_NAME": db, "COLDCOPY_ENV_FILE": "/dev/null"}


def test_backup_and_restore_with_verify_full_and_the_ca_as_a_value(
    coldcopy_env: dict[str, str], servers: dict[str, PgCluster], certs: Certs, tls_source: str
) -> None:
    cluster = servers["good"]
    env = tls_env(coldcopy_env, cluster, tls_source, "verify-full", certs.ca("ca").read_text())
    b = run_cli(env, "backup", "--json")
    assert b.rc == 0, b.err
    name = json.loads(b.out)["name"]
    r = run_cli(env, "restore", "--backup-name", name, "--target-db", "tls_copy", "--json")
    assert r.rc == 0, r.err
    a, c = cluster.connect(tls_source), cluster.connect("tls_copy")
    try:
        assert compare_databases(a, c) == []
        assert c.run("SELECT count(*) FROM items")[0][0] == 500
    finally:
        a.close()
        c.close()
        cluster.drop_database("tls_copy")


@pytest.mark.parametrize(
    ("server", "root", "said"),
    [
        ("good", "wrong", "not signed by the CA in DB_SSLROOTCERT"),
        ("other", "right", f"issued for {OTHER_HOST}"),
        ("expired", "right", "expired on"),
    ],
)
def test_backup_and_restore_refuse_where_libpq_would(
    coldcopy_env: dict[str, str],
    servers: dict[str, PgCluster],
    certs: Certs,
    tls_source: str,
    server: str,
    root: str,
    said: str,
) -> None:
    env = tls_env(coldcopy_env, servers[server], "postgres", "verify-full", roots(certs)[root])
    b = run_cli(env, "backup")
    assert b.rc == 5 and said in b.err, b.err
    assert coldcopy_env["DB_PASSWORD"] not in b.err
    # A restore of a good backup into that server is refused the same way, before writing anything.
    good = tls_env(coldcopy_env, servers["good"], tls_source, "verify-full", roots(certs)["right"])
    made = run_cli(good, "backup", "--json")
    assert made.rc == 0, made.err
    name = json.loads(made.out)["name"]
    r = run_cli({**env, "DB_NAME": tls_source}, "restore", "--backup-name", name, "--target-db", "never")
    assert r.rc == 5 and said in r.err, r.err


@pytest.mark.parametrize("root", ["right", "wrong"])
def test_the_replication_programs_get_the_same_tls(
    servers: dict[str, PgCluster], certs: Certs, root: str
) -> None:
    """pg_receivewal and pg_basebackup (the WAL sweep, base backups) over a replication connection."""
    pg = Postgres(load_settings(env_for(servers["good"], "verify-full", roots(certs)[root])))
    slot = f"tls_{root}"
    runs = [
        [tool_path("pg_receivewal", pg.s), "--no-password", "--slot", slot, "--create-slot"],
        [tool_path("pg_receivewal", pg.s), "--no-password", "--slot", slot, "--drop-slot"],
        [tool_path("pg_basebackup", pg.s), "--no-password", "-D", "-", "-Ft", "-X", "none", "--no-manifest"],
    ]
    for args in runs:
        proc = subprocess.run(args, env=pg.libpq_env(), capture_output=True, check=False)
        if root == "right":
            assert proc.returncode == 0, proc.stderr
        else:
            assert proc.returncode != 0 and b"certificate verify failed" in proc.stderr, proc.stderr


def test_test_restores_on_a_scratch_server_with_its_own_ca(
    coldcopy_env: dict[str, str], servers: dict[str, PgCluster], certs: Certs, tls_source: str
) -> None:
    scratch = servers["good"]
    base = tls_env(coldcopy_env, scratch, tls_source, "verify-full", roots(certs)["right"])
    env = {
        **base,
        "VERIFY_DB_HOST": scratch.host,
        "VERIFY_DB_PORT": str(scratch.port),
        "VERIFY_DB_USER": scratch.user,
        "VERIFY_DB_PASSWORD": scratch.password,
        "VERIFY_DB_SSLMODE": "verify-full",
        "VERIFY_DB_SSLROOTCERT": str(certs.ca("ca")),
    }
    made = run_cli(env, "backup", "--json")
    assert made.rc == 0, made.err
    name = json.loads(made.out)["name"]
    ok = run_cli(env, "verify", name, "--level", "full", "--json")
    assert ok.rc == 0 and json.loads(ok.out)["ok"] is True, ok.out + ok.err
    wrong = run_cli(
        {**env, "VERIFY_DB_SSLROOTCERT": str(certs.ca("wrong-ca"))}, "verify", name, "--level", "full"
    )
    assert wrong.rc != 0 and "not signed by the CA in VERIFY_DB_SSLROOTCERT" in wrong.out + wrong.err


def test_a_client_programs_tls_failure_gets_a_hint_from_libpqs_words(
    servers: dict[str, PgCluster], certs: Certs
) -> None:
    wrong_ca = psql_outcome(env_for(servers["good"], "verify-full", roots(certs)["wrong"]))[1]
    other_host = psql_outcome(env_for(servers["other"], "verify-full", roots(certs)["right"]))[1]
    expired = psql_outcome(env_for(servers["expired"], "verify-ca", roots(certs)["right"]))[1]
    assert "VERIFY_DB_SSLROOTCERT" in (libpq_tls_hint(wrong_ca, "VERIFY_DB_") or "")
    assert "expired" in (libpq_tls_hint(expired) or "")
    assert "DB_HOST" in (libpq_tls_hint(other_host) or "") and OTHER_HOST in other_host
    assert libpq_tls_hint('FATAL:  password authentication failed for user "postgres"') is None
