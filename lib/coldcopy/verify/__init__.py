"""Proving backups restore: checksums, test restores into a scratch database, base-backup drills."""
