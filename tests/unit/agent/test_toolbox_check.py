"""The agent refuses to manage containers with a missing or too old toolbox, and says why in one line."""

from __future__ import annotations

import os
from pathlib import Path

from nri_zeropod.agent.daemon import check_toolbox


def fake_toolbox(root: Path, version: str | None) -> Path:
    for d in ("bin", "lib", "state"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # A stand-in ld.so that runs the "criu" script it is given after --library-path DIR.
    ld = root / "lib/ld-linux-x86-64.so.2"
    ld.write_text('#!/bin/sh\nshift 2\nexec "$@"\n')
    os.chmod(ld, 0o755)
    (root / "bin/zeropod-init").write_text("")
    (root / "bin/zeropod-criu").write_text("")
    if version is not None:
        criu = root / "bin/criu"
        criu.write_text(f"#!/bin/sh\necho 'Version: {version}'\n")
        os.chmod(criu, 0o755)
    return root


def test_good_toolbox(tmp_path: Path) -> None:
    assert check_toolbox(fake_toolbox(tmp_path, "4.2.1")) is None


def test_old_criu(tmp_path: Path) -> None:
    why = check_toolbox(fake_toolbox(tmp_path, "3.17.1"))
    assert why is not None and "3.17.1" in why and ">= 4.2" in why


def test_missing_criu(tmp_path: Path) -> None:
    why = check_toolbox(fake_toolbox(tmp_path, None))
    assert why is not None and "bin/criu" in why


def test_missing_toolbox(tmp_path: Path) -> None:
    why = check_toolbox(tmp_path / "nowhere")
    assert why is not None and "nowhere" in why
