"""The names ``coldcopy plan`` takes: the four runbooks, and the alert rules' plan names, each
mapped onto a runbook with what to do first (``core.runbooks`` builds the plans).  Data only: the
CLI's parser lists these without loading the runbooks."""

from __future__ import annotations

SCENARIOS = ("corruption", "deletion", "disaster", "compliance")
# The alert rules' plan commands (alerts.PLANS) -> (runbook, what to do first for that alert).
ALIASES: dict[str, tuple[str, str]] = {
    "missed-backup": (
        "disaster",
        "No recent backup: take one now (`coldcopy backup`), then find out why "
        "the schedule missed it (`coldcopy runs`).",
    ),
    "failed-backup": (
        "disaster",
        "The last backup failed: read its error (`coldcopy status`), fix it and run `coldcopy backup`.",
    ),
    "stale-job": ("disaster", "A job stopped reporting: check `coldcopy runs`, then run it again."),
    "restore-interrupted": (
        "disaster",
        "A restore was killed between renaming the database aside and putting the restored one in "
        "its place: run `coldcopy backup` (or the restore again) to put the original back, then "
        "`coldcopy status`.",
    ),
    "key-rotation": (
        "disaster",
        "Stored backups are under an encryption key id no setting holds: put that passphrase in "
        "BACKUP_ENCRYPTION_KEY_PREVIOUS (or finish `coldcopy key rotate`), then run `coldcopy key "
        "status` until it exits 0 (docs/key-rotation.md).",
    ),
    "backup-size": (
        "disaster",
        "The backup size changed sharply: compare `coldcopy list-backups` with "
        "the database before trusting the newest backup.",
    ),
    "failed-verification": (
        "corruption",
        "A verification failed: see why (`coldcopy list-backups`, "
        "`coldcopy runs`) and verify the backup again at level restore.",
    ),
    "corrupt-backup": (
        "corruption",
        "A backup's manifest cannot be read: keep it for inspection and rely "
        "on the newest verified backup below.",
    ),
    "wal-archive": (
        "deletion",
        "The WAL archive needs attention; until it is healthy only the dumps below can be restored.",
    ),
    "change-archive": (
        "disaster",
        "The change archive (`coldcopy changes status`) needs attention: fix the drain's error, or, "
        "when the slot was lost, run `coldcopy changes setup` again and take a logical backup "
        "(`coldcopy backup`): the change window restarts at that backup. A slot that no drain reads "
        "keeps WAL on the server until its disk fills: `coldcopy changes teardown` when you stop.",
    ),
    "files": (
        "disaster",
        "The project's Storage files are not backed up with the newest backup: read the error "
        "(`coldcopy status`, `coldcopy runs`), check the SUPABASE_STORAGE_* settings, then take a "
        "snapshot by hand (`coldcopy files backup --backup <the backup's name>`) and check it "
        "(`coldcopy files verify --snapshot <id>`). A killed snapshot resumes: the next run copies "
        "only what is still missing.",
    ),
    "recovery-window": (
        "deletion",
        "The recovery window is shorter than required: only the dumps below can be restored.",
    ),
}
