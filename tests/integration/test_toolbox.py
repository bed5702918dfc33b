"""The CRIU toolbox works on the host and from inside a foreign root filesystem, read-only at /.zeropod.

The second case is what the agent does in a managed container: the toolbox is
bind-mounted read-only and CRIU runs through the toolbox's own ld.so, so it
needs nothing from the container's libc. Here the "container" is a mount and
pid namespace with a busybox-only root, pivot_root'ed into, with /dev set up
the way runc sets it up (no /dev/net/tun, so CRIU's harmless tun error shows).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nri_zeropod import paths
from nri_zeropod.agent.criu import RLIMITS_SHIM, CriuSettings
from nri_zeropod.proc import run
from tests.helpers import need, need_root


@pytest.fixture(scope="module")
def toolbox() -> Path:
    need_root()
    tb = paths.toolbox_dir()
    need((tb / "bin/criu").exists(), f"no CRIU toolbox at {tb}: run hack/setup.sh")
    return tb


def _criu(tb: str) -> list[str]:
    """CRIU as the agent runs it (its ld.so, its libraries, the rlimits shim preloaded)."""
    return CriuSettings(toolbox_mount=tb).criu()


def test_toolbox_layout_and_version(toolbox: Path) -> None:
    assert (toolbox / "bin/zeropod-init").exists(), "the keeper belongs in the toolbox"
    assert (toolbox / "state").is_dir(), "the state mountpoint must exist in the read-only toolbox"
    assert (toolbox / "lib" / RLIMITS_SHIM).is_file(), "CRIU's rlimits shim belongs in the toolbox"
    out = run([*_criu(str(toolbox)), "--version"], timeout=10).stdout
    version = out.split("Version:")[1].split()[0]
    major, minor = (int(x) for x in version.split(".")[:2])
    assert (major, minor) >= (4, 2), version


def test_criu_check_on_host(toolbox: Path) -> None:
    res = run([*_criu(str(toolbox)), "check"], timeout=60)
    assert "Looks good" in res.stdout + res.stderr
    assert "cannot be preloaded" not in res.stderr


def test_criu_check_from_readonly_mount_in_foreign_root(toolbox: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("proc", "sys", "dev", "tmp", ".zeropod", "bin", "oldroot"):
        (root / d).mkdir(parents=True)
    shutil.copy2(paths.host_root() / "usr/bin/busybox", root / "bin/busybox")
    criu = " ".join(_criu("/.zeropod"))
    script = f"""set -e
R={root}
mount --bind $R $R
mount --bind {toolbox} $R/.zeropod
mount -o remount,bind,ro $R/.zeropod
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t tmpfs dev $R/dev
for d in null zero urandom; do touch $R/dev/$d; mount --bind /dev/$d $R/dev/$d; done
mkdir $R/dev/pts
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
ln -s pts/ptmx $R/dev/ptmx
cd $R
pivot_root . oldroot
/bin/busybox umount -l /oldroot
/bin/busybox touch /.zeropod/probe 2>/dev/null && echo WRITABLE || echo READONLY
exec {criu} check
"""
    res = run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", script], timeout=60)
    assert "READONLY" in res.stdout, "the toolbox must be mounted read-only"
    assert "Looks good" in res.stdout + res.stderr, res.stderr
    assert "cannot be preloaded" not in res.stderr, "the shim is found at its path inside the container"
