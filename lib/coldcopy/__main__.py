"""``python -m coldcopy``: the CLI, with a shortcut for restore_command's ``wal-fetch``.

A ``wal-fetch`` whose file is in the spool is served with only :mod:`coldcopy.wal.spool` imported
(standard library), about an interpreter start; anything else goes to the full CLI.

The process's cyclic garbage collector is tuned here, where the process starts and ends (never in
code a test calls in-process): botocore's service model and the other libraries leave a few
hundred thousand long-lived objects, and every full collection walks them all.
"""

import gc
import sys

#: Collections start after this many new container objects (the default, 700, ran about 160
#: collections and a full one during a backup, ~0.05 s of CPU taken from the stream).
GC_THRESHOLD = 20_000
#: A command that lives on (the local web server) keeps the default, which frees cyclic garbage (a
#: traceback's frames holding a buffer) sooner.  The worker, which runs the deployed backups,
#: lives for one queue's jobs: it takes the higher threshold, which still collects every 20,000.
LONG_RUNNING = ("serve",)


def _command(args: list[str]) -> str:
    """The command's name: the first argument that is not an option (``--debug backup``)."""
    return next((a for a in args if not a.startswith("-")), "")


def main() -> int:
    if sys.argv[1:2] == ["wal-fetch"]:
        # Imported here: a spool hit is served with the standard library alone (no CLI, no boto3).
        from coldcopy.wal.spool import fast_fetch

        served = fast_fetch(sys.argv[2:])
        if served is not None:
            return served
    from coldcopy.cli.main import main as cli_main  # only after the fast path could not serve it

    if _command(sys.argv[1:]) not in LONG_RUNNING:
        gc.set_threshold(GC_THRESHOLD)
    try:
        return cli_main()
    finally:
        # The interpreter's last collection would walk every object to free what the exit frees
        # anyway (~0.06 s after a backup); frozen objects are skipped.
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
