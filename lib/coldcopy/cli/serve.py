"""`coldcopy serve`: the project's web functions (the monitor API) on this machine."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from coldcopy.cli.common import AddCommand
from coldcopy.config import STORAGE, load_settings
from coldcopy.errors import ConfigError

log = logging.getLogger(__name__)


def add_serve_command(add: AddCommand) -> None:
    sp = add(
        "serve",
        cmd_serve,
        "host every web function of project.yml locally, called exactly as DigitalOcean calls them, "
        "at /api/v1/web/<namespace>/<package>/<function> and at the short paths (/health, /status, …)",
    )
    sp.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090; 0 picks one)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sp.add_argument(
        "--project",
        type=Path,
        help="folder holding project.yml and packages/ (default: this checkout, else the current folder)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from coldcopy.localstack.functions_host import serve

    if args.env_file:  # the functions read their settings the deployed way: from the environment
        os.environ["COLDCOPY_ENV_FILE"] = args.env_file
    try:
        s = load_settings(need=(STORAGE,))
        if not s.monitor_token:
            log.warning("MONITOR_TOKEN is not set: every endpoint but /health answers 503 until it is")
    except ConfigError as exc:
        log.warning("the functions will answer 503 'misconfigured' until this is fixed: %s", exc)
    serve(None, args.port, args.host, project_dir=args.project)
    return 0
