"""The WAL archive: push (archive_command), fetch and its spool (restore_command), the warm pusher,
the sweep over a replication slot, the feeder of a recovery, and the archive's health.

Import-free on purpose: ``wal-fetch``'s fast path imports ``coldcopy.wal.spool`` with only the
standard library.
"""
