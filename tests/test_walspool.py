"""wal-fetch's spool: what a take leaves behind, and pruning whatever the WAL segment size."""

from __future__ import annotations

from pathlib import Path

from coldcopy.wal import spool as walspool


def _spool(tmp_path: Path, names: list[str], managed: bool) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir(parents=True)
    for name in names:
        (spool / name).write_bytes(name.encode())
    if managed:
        (spool / walspool.MANAGED).touch()
    return spool


def test_pruning_keeps_the_segment_before_whatever_the_segment_size(tmp_path: Path) -> None:
    # 1 MiB segments (initdb --wal-segsize=1): segment 0x100 of log 0 exists, which 16 MiB arithmetic
    # would reject, after the file was already handed to PostgreSQL.
    names = ["0000000100000000000000FF", "000000010000000000000100", "000000010000000000000101"]
    spool = _spool(tmp_path, names, managed=True)
    dest = tmp_path / "RECOVERYXLOG"
    assert walspool.take(spool, names[2], dest) is True
    assert dest.read_bytes() == names[2].encode()
    left = sorted(p.name for p in spool.iterdir() if walspool.is_segment(p.name))
    assert left == names[1:], "the one just before stays (asked again at the end of recovery), older go"


def test_a_managed_spool_links_any_other_moves(tmp_path: Path) -> None:
    name = "000000010000000000000003"
    managed = _spool(tmp_path / "a", [name], managed=True)
    dest = tmp_path / "a" / "RECOVERYXLOG"
    assert walspool.take(managed, name, dest) is True
    assert (managed / name).exists() and (managed / name).stat().st_ino == dest.stat().st_ino
    # A standby's own spool: PostgreSQL may recycle the file and write into it; the spool lets go.
    other = _spool(tmp_path / "b", [name], managed=False)
    dest = tmp_path / "b" / "RECOVERYXLOG"
    assert walspool.take(other, name, dest) is True
    assert not (other / name).exists() and dest.read_bytes() == name.encode()
