"""``python -m coldcopy``: the CLI, with a shortcut for restore_command's ``wal-fetch``.

A ``wal-fetch`` whose file is in the spool is served with only :mod:`coldcopy.wal.spool` imported
(standard library), about an interpreter start; anything else goes to the full CLI.
"""

import sys


def main() -> int:
    if sys.argv[1:2] == ["wal-fetch"]:
        # Imported here: a spool hit is served with the standard library alone (no CLI, no boto3).
        from coldcopy.wal.spool import fast_fetch

        served = fast_fetch(sys.argv[2:])
        if served is not None:
            return served
    from coldcopy.cli.main import main as cli_main  # only after the fast path could not serve it

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
