"""``node up`` on a machine that lacks a kernel feature names the feature in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nri_zeropod import cli
from nri_zeropod.node import hostcheck


def test_missing_overlay_and_bpf_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostcheck, "_filesystems", lambda: {"ext4", "proc", "tmpfs"})
    missing = hostcheck.missing_node_features()
    assert any("overlayfs" in m for m in missing)
    assert any("bpf" in m for m in missing)


def test_node_up_reports_the_missing_feature(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("NRI_ZEROPOD_RUN", str(tmp_path / "run"))
    monkeypatch.setattr(hostcheck, "missing_node_features", lambda: ["overlayfs (modprobe overlay)"])
    rc = cli.main(["node", "up", "--prefix", str(tmp_path / "node")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == ["nri-zeropod: error: this machine lacks: overlayfs (modprobe overlay)"]
    assert not (tmp_path / "node").exists(), "nothing is created when the check fails"
