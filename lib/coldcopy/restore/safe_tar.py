"""Extracting a tar by the rules of tarfile's "data" filter, on every Python from 3.11.0.

The extraction filters (PEP 706) arrived in Python 3.11.4, and Debian 12's ``/usr/bin/python3``,
which the postgres OS user runs, is 3.11.2.  :func:`extract_all` uses ``filter="data"`` where the
standard library has it; otherwise every member goes through :func:`data_filter`, which applies
the same rules as 3.11.4's ``tarfile.data_filter`` (tests/test_safe_tar.py compares the two).
"""

from __future__ import annotations

import copy
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

STDLIB_FILTER = hasattr(tarfile, "data_filter")  # Python 3.11.4+, 3.12+


class UnsafeMemberError(tarfile.TarError):
    """A member the "data" filter refuses; the message is the standard library's."""

    def __init__(self, member: tarfile.TarInfo, message: str) -> None:
        super().__init__(message)
        self.tarinfo = member


def extract_all(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract every member of ``tar`` (stream mode is fine) into ``dest``, by the "data" rules.

    Refused with a :class:`tarfile.TarError` (the members before it stay extracted): a name that is
    absolute once leading slashes are stripped, a name or a link that resolves outside ``dest``, a
    link to an absolute path, device files and FIFOs.  Sanitised: leading slashes, setuid/setgid/
    sticky and group/other write bits; owners and the modes of directories are not restored.
    """
    if STDLIB_FILTER:
        tar.extractall(dest, filter="data")
    else:
        tar.extractall(dest, members=_checked(tar, str(dest)))


def _checked(tar: tarfile.TarFile, dest: str) -> Iterator[tarfile.TarInfo]:
    for member in tar:  # one at a time, as extracted: links made by earlier members count
        yield data_filter(member, dest)


def data_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
    """``tarfile.data_filter`` for Pythons without it: the same checks, a result they can extract.

    Where the standard library's filter sets the mode, owner and group to None ("leave them as
    created"), which 3.11.0-3.11.3 cannot extract, this gives what 3.11.4+ ends up with on disk: a
    new directory keeps the default mode (0o777 less the umask), an existing one its mode; owner and
    group -1 and '' (chown changes nothing); a symbolic link's mode, never applied, is left as is.
    """
    new = copy.copy(member)
    name = member.name
    dest_path = os.path.realpath(dest_path)
    if name.startswith(("/", os.sep)):  # strip leading slashes (tar's and the OS's separator)
        name = new.name = member.path.lstrip("/" + os.sep)
    if os.path.isabs(name):
        raise UnsafeMemberError(member, f"member {member.name!r} has an absolute path")
    target_path = os.path.realpath(os.path.join(dest_path, name))
    if os.path.commonpath([target_path, dest_path]) != dest_path:
        raise UnsafeMemberError(
            member, f"{member.name!r} would be extracted to {target_path!r}, which is outside the destination"
        )
    mode = member.mode & 0o755  # no setuid, setgid, sticky; no group/other write
    if member.isreg() or member.islnk():
        if not mode & 0o100:
            mode &= ~0o111  # executable by nobody unless by the owner
        new.mode = mode | 0o600  # the owner can read and write
    elif member.isdir():
        new.mode = os.stat(target_path).st_mode & 0o7777 if os.path.isdir(target_path) else 0o777 & ~_umask()
    elif not member.issym():
        raise UnsafeMemberError(member, f"{member.name!r} is a special file")
    new.uid = new.gid = -1
    new.uname = new.gname = ""
    if member.islnk() or member.issym():
        if os.path.isabs(member.linkname):
            raise UnsafeMemberError(member, f"{member.name!r} is a link to an absolute path")
        if member.issym():
            target_path = os.path.join(dest_path, os.path.dirname(name), member.linkname)
        else:
            target_path = os.path.join(dest_path, member.linkname)
        target_path = os.path.realpath(target_path)
        if os.path.commonpath([target_path, dest_path]) != dest_path:
            raise UnsafeMemberError(
                member, f"{member.name!r} would link to {target_path!r}, which is outside the destination"
            )
    return new


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # read by setting it: the strictest value meanwhile
    os.umask(mask)
    return mask
