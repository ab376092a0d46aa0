"""`coldcopy wal-fetch NAME DEST`: restore_command, once per WAL file a recovery asks for.

A file already in the spool (fetched ahead by an earlier call or by ``pitr``'s feeder) is served
before the storage client is even imported; only a miss pays for boto3, the key and the GET.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from coldcopy.cli.common import settings_for
from coldcopy.config import STORAGE
from coldcopy.errors import NotFoundError
from coldcopy.wal import spool as walspool


def cmd_wal_fetch(args: argparse.Namespace) -> int:
    spool = (Path(args.spool) if args.spool else walspool.default_spool()) if args.prefetch > 0 else None
    if spool is not None:
        tried = os.environ.pop(walspool.TRIED_ENV, "") == "1"  # the fast path waited already
        served = walspool.serve_file(spool, args.name, Path(args.dest), wait=not tried)
        if served is not None:
            return served  # prefetched earlier (or known not archived): no storage client, no network
        # One line per miss in the server's log (restore_command's stderr): what the spool costs.
        print(f"wal-fetch: {args.name} is not in the spool: fetching it from the archive", file=sys.stderr)
    # Imported only on a miss: boto3 and the crypto stack are most of a miss's cost (module doc).
    from coldcopy.context import open_context
    from coldcopy.wal.archive import fetch

    try:
        ctx = open_context(settings_for(args, (STORAGE,)))
        fetch(ctx, args.name, Path(args.dest), prefetch=args.prefetch, spool=spool)
    except NotFoundError as exc:
        print(exc.message, file=sys.stderr)  # expected while recovery probes for history files
        return 1
    return 0
