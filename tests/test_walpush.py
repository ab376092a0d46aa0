"""The WAL push fast path: one-shot packing keeps the stored format; the stdlib client's protocol.

Real components: moto's S3 server over HTTP, the daemon on a real unix socket, the client as the
separate ``python3 -S`` process that archive_command runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from coldcopy.config import load_settings
from coldcopy.context import Context, open_context
from coldcopy.core.lsn import wal_key
from coldcopy.errors import ConflictError, IntegrityError
from coldcopy.localstack.s3server import S3Server
from coldcopy.stream.crypto import MasterKey
from coldcopy.stream.pipeline import Unpacker, pack_bytes, pack_frame
from coldcopy.wal.archive import WAL_LEVEL, fetch, push
from coldcopy.wal.pushd import WalPushServer, archive_command, run_pushd

REPO = Path(__file__).resolve().parents[1]
SEG = "000000010000000000000003"


def segment_bytes() -> bytes:
    """16 MiB that look like WAL: compressible records with some random pages among them."""
    rng = os.urandom(1 << 20)
    records = b"".join(i.to_bytes(8, "little") + b"pgbench_accounts row update " for i in range(200_000))
    return (records + rng + records)[: 16 << 20].ljust(16 << 20, b"\0")


@pytest.fixture
def ctx(s3_server: S3Server, bucket: str) -> Context:
    env = {
        "COLDCOPY_CLUSTER": "walpush",
        **s3_server.spaces_env(bucket),
        "BACKUP_ENCRYPTION_KEY": "walpush-test-key",
    }
    return open_context(load_settings(env, env_file=Path(os.devnull)))


def test_pack_frame_reads_back_like_any_stored_object() -> None:
    key = MasterKey.from_passphrase("k")
    data = segment_bytes()
    blob = pack_frame(data, key, zstandard.ZstdCompressor(level=WAL_LEVEL, write_checksum=True))
    unpacker = Unpacker(key)
    assert unpacker.feed(blob) == data
    stats = unpacker.finish(None)
    assert stats.raw_size == len(data) and stats.stored_size == len(blob)
    # the same container and compression as the stream packer: sizes within a few per cent
    streamed, _ = pack_bytes(data, key, WAL_LEVEL)
    assert abs(len(blob) - len(streamed)) < 0.05 * len(streamed)
    assert len(blob) < len(data) // 2
    # a wrong key, or one flipped byte, is refused
    with pytest.raises(IntegrityError):
        Unpacker(MasterKey.from_passphrase("other")).feed(blob)
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 1
    with pytest.raises(IntegrityError):
        bad = Unpacker(key)
        bad.feed(bytes(damaged))
        bad.finish(None)


def test_pack_frame_is_readable_without_coldcopy(tmp_path: Path) -> None:
    data = segment_bytes()
    stored = tmp_path / "seg.enc"
    stored.write_bytes(
        pack_frame(
            data, MasterKey.from_passphrase("standalone-key"), zstandard.ZstdCompressor(write_checksum=True)
        )
    )
    out = tmp_path / "seg.raw"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "decrypt_standalone.py"), str(stored), str(out)],
        env={**os.environ, "BACKUP_ENCRYPTION_KEY": "standalone-key"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data
    raw = tmp_path / "seg.zst"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "decrypt_standalone.py"), "--raw", str(stored), str(raw)],
        env={**os.environ, "BACKUP_ENCRYPTION_KEY": "standalone-key"},
        capture_output=True,
    )
    assert proc.returncode == 0
    frame = zstandard.get_frame_parameters(raw.read_bytes())
    assert frame.has_checksum and frame.content_size == len(data)


def test_push_then_fetch_and_conflicts(ctx: Context, tmp_path: Path) -> None:
    seg = tmp_path / SEG
    seg.write_bytes(segment_bytes())
    first = push(ctx, seg)
    assert (first.key, first.raw_size, first.already_archived) == (wal_key(SEG), 16 << 20, False)
    assert first.stored_size == len(ctx.storage.get_bytes(wal_key(SEG)))
    assert push(ctx, seg).already_archived  # identical content again: fine
    dest = tmp_path / "restored"
    assert fetch(ctx, SEG, dest) == 16 << 20
    assert dest.read_bytes() == seg.read_bytes()
    # the read buffer is reused: a short file after a full one, and a file larger than the buffer
    hist = tmp_path / "00000002.history"
    hist.write_bytes(b"1\t0/3000000\tno recovery target specified\n")
    big = tmp_path / "000000010000000000000009"
    big.write_bytes(os.urandom(1 << 20) * 20)  # as with a 32 MiB wal_segment_size
    for path in (hist, big, hist):
        push(ctx, path)
        assert fetch(ctx, path.name, dest) == path.stat().st_size
        assert dest.read_bytes() == path.read_bytes()
    other = bytearray(seg.read_bytes())
    other[100] ^= 0xFF
    seg.write_bytes(bytes(other))
    with pytest.raises(ConflictError, match="DIFFERENT content"):
        push(ctx, seg)
    fetch(ctx, SEG, dest)
    assert dest.read_bytes() != bytes(other), "the stored segment was not overwritten"


@pytest.fixture
def daemon(ctx: Context, tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "run" / "wal.sock"
    ready = threading.Event()
    servers: list[WalPushServer] = []

    def on_ready(server: WalPushServer) -> None:
        servers.append(server)
        ready.set()

    thread = threading.Thread(target=run_pushd, args=(ctx, sock, on_ready), daemon=True)
    thread.start()
    assert ready.wait(30), "wal-pushd did not start"
    yield sock
    servers[0].shutdown()
    thread.join(30)


def test_client_process_pushes_through_the_daemon(ctx: Context, daemon: Path, tmp_path: Path) -> None:
    seg = tmp_path / SEG
    seg.write_bytes(segment_bytes())
    client = [sys.executable, "-S", "-m", "coldcopy.walclient", "--socket", str(daemon)]
    env = {"PYTHONPATH": str(REPO / "lib"), "PATH": os.defpath}
    proc = subprocess.run([*client, str(seg)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    raw = Unpacker(ctx.key).feed(ctx.storage.get_bytes(wal_key(SEG)))
    assert raw == seg.read_bytes()
    seg.write_bytes(b"\1" * (16 << 20))  # a different segment under the same name: refused, non-zero
    proc = subprocess.run([*client, str(seg)], env=env, capture_output=True, text=True)
    assert proc.returncode == 7 and "DIFFERENT content" in proc.stderr
    # the archive_command the daemon recommends (a file, -I -S, no PYTHONPATH), through a shell
    other = tmp_path / "000000010000000000000004"
    other.write_bytes(segment_bytes())
    line = archive_command(daemon)
    assert " -I -S " in line and line.endswith(" %p")
    proc = subprocess.run(
        ["sh", "-c", line.replace("%p", str(other))], env={"PATH": os.defpath}, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    assert Unpacker(ctx.key).feed(ctx.storage.get_bytes(wal_key(other.name))) == other.read_bytes()
    gone = subprocess.run(
        [*client[:-1], str(tmp_path / "absent.sock"), str(seg)], env=env, capture_output=True, text=True
    )
    assert gone.returncode == 3 and "not reachable" in gone.stderr
