"""The operator commands behind `dicom-forwarder`: each takes parsed args, returns an exit code."""

from __future__ import annotations

import argparse
import sys

from forwarder import config
from forwarder.errors import EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    print(f"{args.config}: ok ({len(cfg.watch)} watch folders, {len(cfg.destinations)} "
          f"destinations, {len(cfg.routes)} routes)", file=sys.stderr)
    return EXIT_OK
