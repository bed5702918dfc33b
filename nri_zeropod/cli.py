"""The ``nri-zeropod`` command line (filled in by later modules)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("nri-zeropod: not implemented yet", file=sys.stderr)
    return 2
