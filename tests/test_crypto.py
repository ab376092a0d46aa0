"""The encryption layer: round trips, and every kind of damage is a clear error before bad plaintext."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldcopy.errors import IntegrityError, WrongKeyError
from coldcopy.stream import crypto
from coldcopy.stream.crypto import (
    HEADER_MAX,
    Decryptor,
    Encryptor,
    MasterKey,
    check_key,
    read_header,
    rewrap_header,
)
from coldcopy.stream.pipeline import Unpacker, pack_stream

PASSPHRASE = "correct horse battery staple"
KEY = MasterKey.from_passphrase(PASSPHRASE)
OTHER = MasterKey.from_passphrase("another passphrase entirely")
REPO = Path(__file__).resolve().parents[1]


def encrypt(data: bytes, key: MasterKey | None = KEY, frame_size: int = 32, step: int = 7) -> bytes:
    enc = Encryptor(key, frame_size=frame_size)
    parts = [enc.header()]
    parts += [enc.update(data[i : i + step]) for i in range(0, len(data), step)]
    parts.append(enc.finalize())
    return b"".join(parts)


def decrypt(stream: bytes, key: MasterKey | None = KEY, step: int = 5) -> bytes:
    dec = Decryptor(key)
    out = b"".join(dec.update(stream[i : i + step]) for i in range(0, len(stream), step))
    dec.finalize()
    return out


def split(stream: bytes) -> tuple[bytes, list[bytes]]:
    """The header and the frames (each with its 4-byte length) of a well-formed stream."""
    pos = read_header(stream).size
    header, frames = stream[:pos], []
    while pos < len(stream):
        end = pos + 4 + int.from_bytes(stream[pos : pos + 4], "big")
        frames.append(stream[pos:end])
        pos = end
    return header, frames


def decrypt_partial(stream: bytes, key: MasterKey | None = KEY) -> tuple[bytes, Exception | None]:
    """Plaintext released before the first error, and that error (None when the stream is accepted)."""
    dec, out = Decryptor(key), bytearray()
    try:
        for i in range(0, len(stream), 11):
            out += dec.update(stream[i : i + 11])
        dec.finalize()
    except IntegrityError as exc:
        return bytes(out), exc
    return bytes(out), None


DATA = os.urandom(100)  # 4 frames of 32 bytes: 32, 32, 32, 4 (final)


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=600),
    frame_size=st.integers(1, 70),
    encrypted=st.booleans(),
    write_cuts=st.lists(st.integers(0, 600), max_size=8),
    read_cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_round_trip_any_sizes_and_split_points(
    data: bytes, frame_size: int, encrypted: bool, write_cuts: list[int], read_cuts: list[int]
) -> None:
    key = KEY if encrypted else None
    enc = Encryptor(key, frame_size=frame_size)
    stored = bytearray(enc.header())
    bounds = [0, *sorted(c for c in write_cuts if c <= len(data)), len(data)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        stored += enc.update(data[a:b])
    stored += enc.finalize()
    dec = Decryptor(KEY)  # a configured key also opens unencrypted streams
    bounds = [0, *sorted(c for c in read_cuts if c <= len(stored)), len(stored)]
    out = b"".join(dec.update(bytes(stored[a:b])) for a, b in zip(bounds, bounds[1:], strict=False))
    dec.finalize()
    assert out == data
    assert dec.header_info is not None and dec.header_info.frame_size == frame_size
    assert dec.header_info.key_id == (KEY.key_id if encrypted else None)


def test_frames_are_full_except_the_last_and_the_default_frame_size_is_one_mebibyte() -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    stream = encrypt(data, step=300_000, frame_size=1 << 20)
    header, frames = split(stream)
    assert [len(f) for f in frames] == [4 + (1 << 20) + 16] * 3 + [4 + 5 + 16]
    assert decrypt(stream, step=1 << 18) == data
    assert Encryptor(KEY).header().startswith(b"CCENC\x01")
    assert read_header(Encryptor(KEY).header()).frame_size == 1 << 20


@pytest.mark.parametrize("key", [KEY, None])
def test_empty_stream_is_one_empty_final_frame(key: MasterKey | None) -> None:
    stream = encrypt(b"", key)
    header, frames = split(stream)
    assert frames == ([(16).to_bytes(4, "big") + frames[0][4:]] if key else [b"\x00\x00\x00\x01\x01"])
    assert decrypt(stream) == b""
    assert decrypt_partial(header)[1] is not None  # header alone: the final frame is missing


def test_exact_multiple_of_frame_size_ends_with_an_empty_final_frame() -> None:
    stream = encrypt(os.urandom(64), frame_size=32)
    assert [len(f) for f in split(stream)[1]] == [52, 52, 20]
    assert decrypt(stream) == decrypt(stream, step=1000)


def test_wrong_key_fails_as_soon_as_the_header_is_complete_with_both_key_ids() -> None:
    stream = encrypt(DATA)
    size = read_header(stream).size
    dec = Decryptor(OTHER)
    for i in range(size - 1):
        assert dec.update(stream[i : i + 1]) == b""
    with pytest.raises(WrongKeyError) as err:
        dec.update(stream[size - 1 :])  # the last header byte together with all the frames
    text = str(err.value)
    assert KEY.key_id in text and OTHER.key_id in text and "written with key id" in text
    assert PASSPHRASE not in text and err.value.hint
    with pytest.raises(WrongKeyError):
        check_key(read_header(stream), OTHER)


def test_encrypted_stream_without_a_key() -> None:
    stream = encrypt(DATA)
    with pytest.raises(WrongKeyError, match="no BACKUP_ENCRYPTION_KEY"):
        check_key(read_header(stream), None)
    with pytest.raises(WrongKeyError):
        Decryptor(None).update(stream)
    check_key(read_header(stream), KEY)


def test_unencrypted_stream_opens_with_or_without_a_key() -> None:
    stream = encrypt(DATA, key=None)
    info = read_header(stream)
    assert (info.alg, info.key_id) == ("none", None)
    check_key(info, None)
    check_key(info, KEY)
    assert decrypt(stream, None) == decrypt(stream, KEY) == DATA
    assert DATA[:32] in stream  # really not encrypted


def test_read_header_says_how_many_bytes_it_needs() -> None:
    stream = encrypt(DATA)
    size = read_header(stream).size
    assert read_header(stream[:HEADER_MAX]) == read_header(stream[:size])
    for cut in (0, 3, 9, 20, size - 1):
        with pytest.raises(IntegrityError, match="needs at least") as err:
            read_header(stream[:cut])
        assert "HEADER_MAX" in (err.value.hint or "")
    with pytest.raises(IntegrityError, match="not a ColdCopy"):
        read_header(b"PGDMP\x01\x0e\x00" + bytes(100))
    with pytest.raises(IntegrityError, match="not a ColdCopy"):
        Decryptor(KEY).update(b"\x28\xb5\x2f\xfd")  # a bare zstd frame is refused at its first byte


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_a_flipped_bit_anywhere_is_an_error_and_no_altered_plaintext_is_released(mask: int) -> None:
    stream = encrypt(DATA)
    for pos in range(len(stream)):
        damaged = bytearray(stream)
        damaged[pos] ^= mask
        released, error = decrypt_partial(bytes(damaged))
        assert error is not None, f"flip at byte {pos} went unnoticed"
        assert DATA.startswith(released), f"flip at byte {pos} released altered plaintext"


def test_frame_errors_name_the_frame() -> None:
    stream = bytearray(encrypt(DATA))
    header, frames = split(bytes(stream))
    stream[len(header) + 2 * 52 + 10] ^= 1  # inside frame 2
    released, error = decrypt_partial(bytes(stream))
    assert released == DATA[:64]
    assert "frame 2 failed authentication" in str(error) and "another backup" in str(error)


def test_truncation_anywhere_is_an_error() -> None:
    for key in (KEY, None):
        stream = encrypt(DATA, key)
        for cut in range(len(stream)):
            released, error = decrypt_partial(stream[:cut], key)
            assert isinstance(error, IntegrityError), f"cut at {cut} accepted"
            assert DATA.startswith(released)
        header, frames = split(stream)
        for n in range(len(frames)):  # at every frame boundary the message says what is missing
            with pytest.raises(IntegrityError, match="truncated after .* final frame is missing"):
                decrypt(header + b"".join(frames[:n]), key)


def test_unencrypted_final_flag_is_checked() -> None:
    header, frames = split(encrypt(DATA, key=None))
    bad_last = frames[-1][:4] + b"\x00" + frames[-1][5:]
    assert decrypt_partial(header + b"".join(frames[:-1]) + bad_last, None)[1] is not None


def reassemble(header: bytes, frames: list[bytes]) -> bytes:
    return header + b"".join(frames)


def test_swapped_duplicated_dropped_and_extra_frames() -> None:
    header, f = split(encrypt(DATA))
    cases = {
        "swapped": [f[1], f[0], f[2], f[3]],
        "duplicated": [f[0], f[0], f[1], f[2], f[3]],
        "dropped": [f[0], f[2], f[3]],
        "final twice": [*f, f[3]],
        "final moved up": [f[0], f[3]],
    }
    for name, frames in cases.items():
        released, error = decrypt_partial(reassemble(header, frames))
        assert isinstance(error, IntegrityError), name
        assert DATA.startswith(released), name


def test_frames_from_another_stream_with_the_same_key_are_refused() -> None:
    header_a, a = split(encrypt(DATA))
    header_b, b = split(encrypt(DATA))
    assert header_a != header_b  # a fresh data key per stream, even with one MasterKey
    for i in range(len(a)):
        mixed = [*a[:i], b[i], *a[i + 1 :]]
        released, error = decrypt_partial(reassemble(header_a, mixed))
        assert error is not None and f"frame {i} failed authentication" in str(error)
    assert decrypt_partial(reassemble(header_b, a))[1] is not None


def test_trailing_bytes_after_the_final_frame() -> None:
    stream = encrypt(DATA)
    for extra in (b"\x00", b"garbage", stream[-20:]):
        with pytest.raises(IntegrityError, match="after the final frame"):
            decrypt(stream + extra, step=len(stream) + 10)
        dec = Decryptor(KEY)
        assert dec.update(stream) == DATA
        with pytest.raises(IntegrityError, match="after the final frame"):
            dec.update(extra)


def test_a_huge_length_field_is_refused_before_buffering() -> None:
    stream = encrypt(DATA)
    header = stream[: read_header(stream).size]
    dec = Decryptor(KEY)
    dec.update(header)
    with pytest.raises(IntegrityError, match="impossible length"):
        dec.update(b"\x7f\xff\xff\xff")
    big = bytearray(header)
    big[7] = 0xFF  # a params section of 16 MiB: refused without waiting for the bytes
    with pytest.raises(IntegrityError, match="section length"):
        Decryptor(KEY).update(bytes(big[:12]))


def test_header_parameters_are_authenticated() -> None:
    stream = encrypt(DATA)
    header, frames = split(stream)
    params = header[10 : 10 + int.from_bytes(header[6:10], "big")]
    forged = json.dumps({"alg": "AES-256-GCM", "frame_size": 33}, separators=(",", ":")).encode()
    assert len(forged) == len(params)
    released, error = decrypt_partial(stream.replace(params, forged))
    assert released == b"" and error is not None


def with_envelope(stream: bytes, envelope: bytes) -> bytes:
    header, frames = split(stream)
    p_end = 10 + int.from_bytes(header[6:10], "big")
    return header[:p_end] + len(envelope).to_bytes(4, "big") + envelope + b"".join(frames)


def test_header_must_be_canonical_so_no_byte_of_it_is_unchecked() -> None:
    stream = encrypt(DATA)
    header, _ = split(stream)
    envelope = header[14 + int.from_bytes(header[6:10], "big") :]
    assert decrypt(with_envelope(stream, envelope)) == DATA
    env = json.loads(envelope)
    salt = env["kdf"]["salt"]  # 16 bytes: 22 base64 digits, the last carrying 2 bits, then "=="
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    env["kdf"]["salt"] = salt[:21] + alphabet[alphabet.index(salt[21]) | 1] + "=="  # same bytes decoded
    variants = [
        json.dumps(json.loads(envelope), sort_keys=True).encode(),  # spaces
        json.dumps(env, sort_keys=True, separators=(",", ":")).encode(),
        envelope.replace(b'"key_id"', b'"key_id":"x","key_id"'),  # a duplicated key
    ]
    for variant in variants:
        with pytest.raises(IntegrityError, match="header is damaged"):
            decrypt(with_envelope(stream, variant))


def test_decryptor_memory_stays_within_one_frame() -> None:
    stream = encrypt(os.urandom(5 * 4096 + 7), frame_size=4096)
    for step in (1000, 5000, len(stream)):
        dec, out = Decryptor(KEY), bytearray()
        for i in range(0, len(stream), step):
            out += dec.update(stream[i : i + step])
            assert len(dec._buf) == 4 + 4096 + 16 and len(dec._head) < HEADER_MAX
        dec.finalize()
        assert len(out) == 5 * 4096 + 7


def test_one_scrypt_per_master_key_not_per_stream() -> None:
    key = MasterKey.from_passphrase("daemon key for the scrypt count test")
    decrypt(encrypt(DATA, key), key)
    misses = crypto._scrypt.cache_info().misses
    for _ in range(20):
        assert decrypt(encrypt(DATA, key), key) == DATA
    assert crypto._scrypt.cache_info().misses == misses
    assert MasterKey.from_passphrase("daemon key for the scrypt count test") is key


def test_key_id_is_stable_across_processes_and_distinct_per_passphrase() -> None:
    code = (
        "from coldcopy.stream.crypto import MasterKey; "
        f"print(MasterKey.from_passphrase({PASSPHRASE!r}).key_id)"
    )
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other_process.stdout.strip() == KEY.key_id
    assert KEY.key_id == "86fd53ef89b92ebb"  # test vector, also in docs/encryption-format.md
    assert len({KEY.key_id, OTHER.key_id, MasterKey.from_passphrase(PASSPHRASE + " ").key_id}) == 3
    assert len(KEY.key_id) == 16 and int(KEY.key_id, 16) >= 0


def test_no_secret_in_repr_str_or_errors() -> None:
    for text in (repr(KEY), str(KEY), repr(Encryptor(KEY)), repr(read_header(encrypt(DATA)))):
        assert PASSPHRASE not in text
    assert repr(KEY) == f"MasterKey(key_id='{KEY.key_id}')"
    with pytest.raises(Exception) as err:
        MasterKey.from_passphrase("")
    assert "empty" in str(err.value)


def test_key_rotation_rewraps_the_header_without_touching_frames() -> None:
    stream = encrypt(DATA)
    header, frames = split(stream)
    new_header = rewrap_header(header, KEY, OTHER)
    assert read_header(new_header).key_id == OTHER.key_id
    assert decrypt(reassemble(new_header, frames), OTHER) == DATA
    with pytest.raises(WrongKeyError):
        decrypt(reassemble(new_header, frames), KEY)
    with pytest.raises(WrongKeyError):
        rewrap_header(header, OTHER, KEY)


def test_encryptor_refuses_use_after_finalize() -> None:
    enc = Encryptor(KEY)
    enc.finalize()
    with pytest.raises(RuntimeError):
        enc.update(b"x")
    with pytest.raises(ValueError):
        Encryptor(KEY, frame_size=0)


@pytest.mark.parametrize("key", [KEY, None])
def test_standalone_script_decrypts_what_coldcopy_wrote(tmp_path: Path, key: MasterKey | None) -> None:
    zstandard = pytest.importorskip("zstandard")
    script = REPO / "scripts" / "decrypt_standalone.py"
    assert "coldcopy" not in "".join(
        line for line in script.read_text().splitlines() if line.startswith(("import", "from"))
    )
    raw = b"PGDMP" + os.urandom(50_000) + b"row data " * 20_000
    stored = tmp_path / "data.ccenc"
    stored.write_bytes(encrypt(zstandard.ZstdCompressor().compress(raw), key, frame_size=4096, step=3000))
    env = {**os.environ, "BACKUP_ENCRYPTION_KEY": PASSPHRASE}
    out = tmp_path / "dump.pgdump"
    run = [sys.executable, "-I", str(script), str(stored), str(out)]
    subprocess.run(run, env=env, check=True)
    assert out.read_bytes() == raw
    out.unlink()
    # Stored as volumes: cut anywhere (inside the header, inside frames), read in the order given.
    blob = stored.read_bytes()
    cuts = [0, 7, 5000, len(blob) // 2, len(blob)]
    parts = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        parts.append(tmp_path / f"data.{i:06d}")
        parts[-1].write_bytes(blob[a:b])
    subprocess.run([sys.executable, "-I", str(script), *map(str, parts), str(out)], env=env, check=True)
    assert out.read_bytes() == raw
    out.unlink()
    swapped = [parts[0], parts[2], parts[1], parts[3]]
    failed = subprocess.run([sys.executable, "-I", str(script), *map(str, swapped), str(out)], env=env)
    assert failed.returncode == 1 and not out.exists()
    stored.write_bytes(stored.read_bytes()[:-1])
    failed = subprocess.run(run, env=env, capture_output=True)
    assert failed.returncode == 1 and b"truncated" in failed.stderr
    assert not out.exists() and not (tmp_path / "dump.pgdump.partial").exists()
    if key is not None:
        failed = subprocess.run(run, env={**env, "BACKUP_ENCRYPTION_KEY": "wrong"}, capture_output=True)
        assert failed.returncode == 1 and b"key id" in failed.stderr


DOC = REPO / "docs" / "encryption-format.md"


def test_the_documented_example_stream_decrypts() -> None:
    zstandard = pytest.importorskip("zstandard")
    text = DOC.read_text()
    block = text.split("<!-- example-stream -->\n```text\n", 1)[1].split("```", 1)[0]
    stream = bytes.fromhex("".join(block.split()))
    assert len(stream) == 342 and read_header(stream).key_id == KEY.key_id
    assert f"`{PASSPHRASE}` → key id `{KEY.key_id}`" in text
    payload = decrypt(stream)
    assert zstandard.ZstdDecompressor().decompress(payload) == b"hello, ColdCopy\n"


def test_the_documented_python_recipe_decrypts_what_coldcopy_writes() -> None:
    import io

    code = DOC.read_text().split("```python\n", 1)[1].split("\nwith open(", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "encryption-format.md", "exec"), namespace)
    recipe = namespace["coldcopy_decrypt"]
    data = os.urandom(3 * 4096 + 5)
    stream = encrypt(data, frame_size=4096, step=1000)
    assert b"".join(recipe(io.BytesIO(stream), PASSPHRASE.encode())) == data  # type: ignore[operator]
    assert b"".join(recipe(io.BytesIO(encrypt(b"")), PASSPHRASE.encode())) == b""  # type: ignore[operator]


def test_a_key_made_ready_derives_its_kek_up_front_and_streams_derive_nothing() -> None:
    """A backup derives this process's key-encryption key in the background, before its stream
    (``ready()``); the stream then runs no scrypt, and reads as any other with the key."""
    passphrase = "a backup's key, made ready in the background"
    key = MasterKey.from_passphrase(passphrase)
    misses = crypto._scrypt.cache_info().misses
    assert key.ready() is key
    assert crypto._scrypt.cache_info().misses == misses + 1  # the KEK, once
    stream = encrypt(DATA, key)
    assert crypto._scrypt.cache_info().misses == misses + 1  # none at the stream's start
    assert decrypt(stream, MasterKey.from_passphrase(passphrase)) == DATA


def test_a_packer_without_a_sink_holds_what_it_compressed_until_the_target_is_ready(tmp_path: Path) -> None:
    """pack_stream with a ``target``: nothing reaches a sink before the target answers; while it
    is not ready the compressed bytes are held, and it is asked to block once ``hold`` is reached.
    The stored stream then opens like any other."""
    raw = os.urandom(3 << 20)  # incompressible: every 1 MiB chunk adds about 1 MiB held
    src = tmp_path / "dump"
    src.write_bytes(raw)
    out = bytearray()
    asked: list[bool] = []

    class Sink:
        def write(self, data: bytes | bytearray | memoryview) -> None:
            out.extend(data)

    def target(block: bool) -> tuple[Sink, MasterKey, str] | None:
        asked.append(block)
        assert not out  # nothing was written anywhere before the target answered
        return (Sink(), KEY, "backups/x/data") if block else None

    with src.open("rb") as f:
        stats = pack_stream(f, None, None, 1, target=target, hold=3 << 19)  # 1.5 MiB
    assert asked == [False, True]  # held 1 MiB, then 2 MiB ≥ 1.5 MiB: blocked for the target
    unpacker = Unpacker(KEY, expect_object="backups/x/data")
    assert unpacker.feed(bytes(out)) == raw
    assert unpacker.finish(stats).raw_sha256 == stats.raw_sha256


def test_a_packer_without_a_sink_or_target_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "dump"
    src.write_bytes(b"x" * 10)
    with src.open("rb") as f, pytest.raises(ValueError, match="a sink or a target"):
        pack_stream(f, None, None, 1)
