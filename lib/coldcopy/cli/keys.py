"""`coldcopy key rotate|status`: key rotation (docs/key-rotation.md)."""

from __future__ import annotations

import argparse
import getpass
import sys

from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.config import Settings
from coldcopy.context import open_context, settings_key
from coldcopy.core.keys import stale_key_ids
from coldcopy.errors import ColdCopyError
from coldcopy.ops.rotate import census_state, rotate
from coldcopy.stream.crypto import MasterKey


def _target(s: Settings) -> MasterKey:
    """BACKUP_ENCRYPTION_KEY_NEW, else a passphrase typed twice at a terminal."""
    if s.encryption_key_new:
        return MasterKey.from_passphrase(s.encryption_key_new.reveal())
    if not sys.stdin.isatty():
        raise ColdCopyError(
            "no new key: BACKUP_ENCRYPTION_KEY_NEW is not set and there is no terminal to ask on",
            "set BACKUP_ENCRYPTION_KEY_NEW to the new passphrase (e.g. `openssl rand -base64 32`)",
        )
    first = getpass.getpass("new passphrase: ").strip()
    if first != getpass.getpass("again: ").strip():
        raise ColdCopyError("the two passphrases differ", "run `coldcopy key rotate` again")
    return MasterKey.from_passphrase(first)


def cmd_key_rotate(args: argparse.Namespace) -> int:
    s = settings_for(args)
    sources = settings_key(s)
    if sources is None:
        raise ColdCopyError(
            "BACKUP_ENCRYPTION_KEY is not set: there is no old key to rotate from",
            "set BACKUP_ENCRYPTION_KEY to the current passphrase",
        )
    target = _target(s)
    r = rotate(open_context(s), sources, target, now=now(), dry_run=args.dry_run)
    d = r.to_dict()
    verb = "would re-wrap" if r.dry_run else "re-wrapped"
    lines = [
        f"{verb} {len(r.rewrapped)} of {r.streams} streams under key id {r.target_key_id} "
        f"({r.already} already under it, {r.unencrypted} unencrypted)",
        "before: " + ", ".join(f"{k}: {n}" for k, n in sorted(r.by_key_id.items())),
    ]
    if r.dry_run:
        lines += [f"  {k}" for k in r.rewrapped]
    else:
        lines.append(f"proved: all {r.proved} encrypted streams open under key id {r.target_key_id} alone")
        lines.append(
            "now set BACKUP_ENCRYPTION_KEY to the new passphrase and remove the old one from "
            "BACKUP_ENCRYPTION_KEY_PREVIOUS (and BACKUP_ENCRYPTION_KEY_NEW)"
        )
    present(args, d, "\n".join(lines))
    return 0


def cmd_key_status(args: argparse.Namespace) -> int:
    s = settings_for(args)
    ctx = open_context(s)
    held = ctx.key.key_ids() if ctx.key else ()
    state = census_state(ctx, now())
    stale = stale_key_ids(state["census"], held)
    data = {**state, "held_key_ids": list(held), "unheld": stale}
    lines = [f"{k}: " + ", ".join(f"{n} {kind}" for kind, n in v.items()) for k, v in state["census"].items()]
    lines.append("keys held by the settings: " + (", ".join(held) or "none"))
    if stale:
        lines.append(
            "NO SETTING HOLDS key id "
            + ", ".join(f"{k} ({n} streams)" for k, n in stale.items())
            + ": put that passphrase in BACKUP_ENCRYPTION_KEY_PREVIOUS, or those backups cannot be read"
        )
    present(args, data, "\n".join(lines))
    return 3 if stale else 0
