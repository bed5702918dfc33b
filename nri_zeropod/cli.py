"""The ``nri-zeropod`` command line.

Sub-commands are registered by the modules that implement them (each exposes
``register(subparsers)``, whose parsers set ``func``). Errors that a user can
act on are printed as one line, ``nri-zeropod: error: ...``, with exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from nri_zeropod import __version__


class UserError(Exception):
    """An error caused by input or environment, reported as one line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from nri_zeropod.agent.admin import AdminError
    from nri_zeropod.cri import CRIError
    from nri_zeropod.node.hostcheck import MissingFeature
    from nri_zeropod.node.node import NodeError
    from nri_zeropod.node.pods import PodError
    from nri_zeropod.proc import CommandError

    return (
        UserError, AdminError, CRIError, MissingFeature, NodeError, PodError, CommandError, ValueError,
        RuntimeError, OSError,
    )


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming what was wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="nri-zeropod",
        description="Scale idle containers to zero with CRIU and wake them on the first TCP connection.",
    )
    ap.add_argument("--version", action="version", version=f"nri-zeropod {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    from nri_zeropod.agent import cli as agent_cli
    from nri_zeropod.node import cli as node_cli
    from nri_zeropod.node import demo

    node_cli.register(sub)
    agent_cli.register(sub)
    demo.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after a bare "--" is a container command, not options of ours.
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.rest = rest
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if rest and not getattr(args, "takes_command", False):
        parser.error(f"'{args.command}' takes no command after '--'")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except _user_errors() as e:
        print(f"nri-zeropod: error: {e}", file=sys.stderr)
        return 1
