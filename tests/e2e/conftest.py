"""The e2e ring: a real local node (containerd + CRI + NRI + CNI + agent) for the whole session.

The node runs under its own prefix, bridge, subnet and cgroup parent, so that
it never touches a node a developer brought up with ``make demo``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_zeropod import paths
from tests.e2e import kit
from tests.helpers import need, need_root


@pytest.fixture(scope="session", autouse=True)
def e2e_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in kit.TEST_ENV}
    os.environ.update(kit.TEST_ENV)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def node(e2e_env: None) -> Iterator[kit.Node]:
    need_root()
    need(paths.containerd_binary().exists(), "containerd is not installed: run hack/setup.sh")
    need(any(paths.images_dir().glob("*.tar")), "the local images are not built: run hack/setup.sh")
    n = kit.Node.start(Path(kit.TEST_ENV["NRI_ZEROPOD_NODE_PREFIX"]))
    try:
        yield n
    finally:
        n.stop()
