"""safe_tar: hostile archives are refused or sanitised as by tarfile's "data" filter, on any Python 3.11.

On Pythons with the filter (3.11.4+) our fallback is compared with ``tarfile.data_filter`` directly;
on those without it (Debian 12's 3.11.2: scripts/test.sh runs this file there too) the same
expectations hold for the fallback alone.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from coldcopy.restore import safe_tar


def member(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = ""
) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.mode, m.linkname = kind, mode, linkname
    m.uid, m.gid, m.uname, m.gname = 1234, 5678, "mallory", "evil"
    return m


def archive(*members: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            data = f"content of {m.name}\n".encode() if m.isreg() else b""
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return buf.getvalue()


# (member, the start of the refusal message; the rest names the resolved path, the same in both)
REFUSED = {
    "../ escape": (member("../escape"), "'../escape' would be extracted to "),
    "escape through a folder": (member("sub/../../escape"), "'sub/../../escape' would be extracted to "),
    "symlink to /etc": (
        member("etc", tarfile.SYMTYPE, linkname="/etc"),
        "'etc' is a link to an absolute path",
    ),
    "symlink outside": (member("up", tarfile.SYMTYPE, linkname="../../etc"), "'up' would link to "),
    "hard link to /etc/passwd": (
        member("pw", tarfile.LNKTYPE, linkname="/etc/passwd"),
        "'pw' is a link to an absolute path",
    ),
    "hard link outside": (member("pw", tarfile.LNKTYPE, linkname="../x"), "'pw' would link to "),
    "character device": (member("dev/null", tarfile.CHRTYPE, 0o666), "'dev/null' is a special file"),
    "block device": (member("sda", tarfile.BLKTYPE, 0o660), "'sda' is a special file"),
    "fifo": (member("pipe", tarfile.FIFOTYPE), "'pipe' is a special file"),
}

# (member, its name and mode after the filter; None: the mode is not applied)
SANITISED = {
    "setuid file": (member("bin/su", mode=0o4755), "bin/su", 0o755),
    "setgid, sticky, world-writable": (member("f", mode=0o7777), "f", 0o755),
    "group/other writable": (member("g", mode=0o666), "g", 0o644),
    "no permissions": (member("none", mode=0o000), "none", 0o600),
    "group-executable only": (member("gx", mode=0o070), "gx", 0o640),
    "absolute path": (member("/etc/cron.d/x", mode=0o644), "etc/cron.d/x", 0o644),
    "setuid hard link inside": (member("hl", tarfile.LNKTYPE, 0o4755, "bin/su"), "hl", 0o755),
    "folder with every bit": (member("d", tarfile.DIRTYPE, 0o7777), "d", None),
    "symlink inside": (member("s", tarfile.SYMTYPE, 0o777, "sub/../f"), "s", None),
}

FILTERS: list[Callable[[tarfile.TarInfo, str], tarfile.TarInfo]] = [safe_tar.data_filter]
if safe_tar.STDLIB_FILTER:
    FILTERS.append(tarfile.data_filter)


@pytest.mark.parametrize("case", REFUSED)
def test_hostile_members_are_refused_with_the_standard_librarys_message(case: str, tmp_path: Path) -> None:
    m, message = REFUSED[case]
    errors = []
    for data_filter in FILTERS:
        with pytest.raises(tarfile.TarError) as exc:
            data_filter(m, str(tmp_path))
        assert str(exc.value).startswith(message)
        assert exc.value.tarinfo is m  # type: ignore[attr-defined]
        errors.append(str(exc.value))
    assert len(set(errors)) == 1  # ours and the stdlib's word for word


@pytest.mark.parametrize("case", SANITISED)
def test_members_are_sanitised_as_by_the_data_filter(case: str, tmp_path: Path) -> None:
    m, name, mode = SANITISED[case]
    ours = safe_tar.data_filter(m, str(tmp_path))
    assert (ours.name, ours.linkname, ours.type) == (name, m.linkname, m.type)
    assert (ours.uid, ours.gid, ours.uname, ours.gname) == (-1, -1, "", "")  # chown changes nothing
    if mode is not None:
        assert ours.mode == mode
    elif m.isdir():
        assert ours.mode == 0o777 & ~_umask()  # what mkdir makes: the folder's own mode is dropped
    if safe_tar.STDLIB_FILTER:
        std = tarfile.data_filter(m, str(tmp_path))
        assert (std.name, std.linkname, std.type, std.mode) == (name, m.linkname, m.type, mode)
        assert (std.uid, std.gid, std.uname, std.gname) == (None, None, None, None)
    assert (m.uid, m.uname) == (1234, "mallory")  # the member itself is left as it was


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every path under root: its kind, its mode (a link's own), its content or link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = ("link", 0, os.readlink(path))
        elif path.is_dir():
            what = ("dir", stat.S_IMODE(st.st_mode), "")
        else:
            what = (f"file x{st.st_nlink}", stat.S_IMODE(st.st_mode), path.read_text())
        out[str(path.relative_to(root))] = what
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())  # the tar's owners are ignored
    return out


BENIGN = archive(
    member("data", tarfile.DIRTYPE, 0o700),
    member("data/base", tarfile.DIRTYPE, 0o1777),
    member("data/base/1", mode=0o4755),
    member("data/base/2", mode=0o666),
    member("data/PG_VERSION", mode=0o600),
    member("data/hard", tarfile.LNKTYPE, 0o4755, "data/base/1"),
    member("data/soft", tarfile.SYMTYPE, 0o777, "base/2"),
    member("/data/global/abs", mode=0o640),  # its folder is made on the way
)


def extract(data: bytes, dest: Path, *, stdlib: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    dest.mkdir()
    with monkeypatch.context() as mp:
        mp.setattr(safe_tar, "STDLIB_FILTER", stdlib)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:  # stream mode, as pitr reads
            safe_tar.extract_all(tar, dest)


def test_the_fallback_extracts_what_the_stdlib_filter_extracts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extract(BENIGN, tmp_path / "ours", stdlib=False, monkeypatch=monkeypatch)
    got = tree(tmp_path / "ours")
    dirs = 0o777 & ~_umask()
    assert got == {
        "data": ("dir", dirs, ""),
        "data/PG_VERSION": ("file x1", 0o600, "content of data/PG_VERSION\n"),
        "data/base": ("dir", dirs, ""),
        "data/base/1": ("file x2", 0o755, "content of data/base/1\n"),
        "data/base/2": ("file x1", 0o644, "content of data/base/2\n"),
        "data/global": ("dir", dirs, ""),
        "data/global/abs": ("file x1", 0o640, "content of /data/global/abs\n"),
        "data/hard": ("file x2", 0o755, "content of data/base/1\n"),
        "data/soft": ("link", 0, "base/2"),
    }
    if safe_tar.STDLIB_FILTER:
        extract(BENIGN, tmp_path / "stdlib", stdlib=True, monkeypatch=monkeypatch)
        assert tree(tmp_path / "stdlib") == got


@pytest.mark.parametrize("case", REFUSED)
@pytest.mark.parametrize("stdlib", [False, True] if safe_tar.STDLIB_FILTER else [False])
def test_a_hostile_archive_stops_at_the_hostile_member(
    case: str, stdlib: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m, message = REFUSED[case]
    data = archive(member("before"), m, member("after"))
    with pytest.raises(tarfile.TarError, match="^" + re.escape(message)):
        extract(data, tmp_path / "dest", stdlib=stdlib, monkeypatch=monkeypatch)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["before", "dest"]  # nothing else, anywhere
