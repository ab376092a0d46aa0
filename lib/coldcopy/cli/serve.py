"""`coldcopy serve`: the project's web functions (the monitor API) on this machine."""

from __future__ import annotations

import argparse
import logging
import os

from coldcopy.config import ENV_FILE_VAR, STORAGE, read_settings
from coldcopy.errors import ConfigError
from coldcopy.localstack.functions_host import serve

log = logging.getLogger(__name__)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.env_file:  # the functions read their settings the deployed way: from the environment
        os.environ[ENV_FILE_VAR] = args.env_file
    settings, problems = read_settings(need=(STORAGE,))
    if problems:
        log.warning(
            "the functions will answer 503 'misconfigured' until this is fixed: %s", ConfigError(problems)
        )
    elif not settings.monitor_token:
        log.warning("MONITOR_TOKEN is not set: every endpoint but /health answers 503 until it is")
    serve(None, args.port, args.host, project_dir=args.project)
    return 0
