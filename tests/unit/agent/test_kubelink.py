"""Without API access the agent says so once and works from annotations; with it, decisions come from the cache."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from nri_zeropod.agent.kubelink import KubeLink
from nri_zeropod.agent.manager import Manager
from nri_zeropod.agent.settings import AgentSettings, KubeOptions
from nri_zeropod.agent.store import Store


def test_no_api_access_is_said_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                    tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    link = KubeLink(KubeOptions())
    manager = Manager(AgentSettings(state_dir=tmp_path), Store(tmp_path))

    async def go() -> None:
        link.start(manager)
        assert not link.namespace_enabled("anything")
        await link.close()

    with caplog.at_level(logging.WARNING, logger="nri_zeropod.agent.kube"):
        asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records if "Kubernetes API" in r.getMessage()]
    assert lines == ["no Kubernetes API access (no kubeconfig, no service account): namespace labels are off, "
                     "pod annotations still work"]
    assert link.client is None and manager.hooks.after_checkpoint == []


def test_bad_kubeconfig_is_one_clear_line(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("this: is: not a kubeconfig\n")
    link = KubeLink(KubeOptions(kubeconfig=bad))

    async def go() -> None:
        link.start(Manager(AgentSettings(state_dir=tmp_path), Store(tmp_path)))

    with caplog.at_level(logging.ERROR, logger="nri_zeropod.agent.kube"):
        asyncio.run(go())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot use the Kubernetes API" in errors[0]
