"""Operator and scripting subcommands over the REST API (operations.md §2).

`add_operator_commands(subparsers)` registers them on the `allq` parser.
"""

from __future__ import annotations

import argparse


def add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register put, reserve, done, peek, kick, pause, throttle, clear, stats, work."""
