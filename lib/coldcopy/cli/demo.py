"""`coldcopy demo`: the whole product on this machine (:mod:`coldcopy.localstack.demo`)."""

from __future__ import annotations

import argparse

from coldcopy.localstack.demo import run_demo


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(scale=args.scale, as_json=args.json, serve=args.serve, port=args.port)
