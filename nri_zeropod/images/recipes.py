"""The local images: what goes into each root filesystem.

Every image is built from Debian packages unpacked with ``dpkg -x``; shared
libraries the binaries need that no listed package provides are copied from
the host (a Debian 12 system, the same release the packages come from), at the
same paths. busybox-static and catatonit come from the packages ``hack/setup.sh``
already unpacked for the node.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nri_zeropod import paths
from nri_zeropod.images.oci import ImageConfig
from nri_zeropod.proc import run

REGISTRY = "nri-zeropod.local"

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
redis:x:100:101:redis:/var/lib/redis:/bin/false
postgres:x:101:102:postgres:/var/lib/postgresql:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
www-data:x:33:
redis:x:101:
postgres:x:102:
nogroup:x:65534:
"""
INDEX_HTML = "<!doctype html><title>nri-zeropod</title><p>hello from nri-zeropod ({app})</p>\n"

# As Debian ships it: a root master with its workers running as www-data, so
# that a checkpoint covers a process tree of two users.
NGINX_CONF = """user www-data;
worker_processes 2;
daemon off;
error_log stderr notice;
pid /tmp/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    access_log /dev/stdout;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    server {
        listen 8080 reuseport;
        listen [::]:8080 reuseport;
        root /www;
    }
}
"""


@dataclass(frozen=True)
class Recipe:
    name: str
    config: ImageConfig
    debs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    busybox: bool = True
    extra: Callable[[Path], None] | None = None

    @property
    def reference(self) -> str:
        return f"{REGISTRY}/{self.name}:latest"


def _pause(root: Path) -> None:
    shutil.copy2(paths.host_root() / "usr/bin/catatonit", root / "catatonit")


def _www(app: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / "www").mkdir(exist_ok=True)
        (root / "www/index.html").write_text(INDEX_HTML.format(app=app))

    return make


def _python(root: Path) -> None:
    _www("python")(root)
    _symlink(root / "usr/bin/python3", "python3.11")


def _redis(root: Path) -> None:
    _symlink(root / "usr/bin/redis-server", "redis-check-rdb")
    (root / "data").mkdir(exist_ok=True)


def _nginx(root: Path) -> None:
    _www("nginx")(root)
    conf = root / "etc/nginx"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "nginx.conf").write_text(NGINX_CONF)
    for d in ("var/lib/nginx", "var/log/nginx"):
        (root / d).mkdir(parents=True, exist_ok=True)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("pause", ImageConfig(entrypoint=["/catatonit", "-P"]), busybox=False, extra=_pause),
        Recipe(
            "busybox",
            ImageConfig(cmd=["/bin/httpd", "-f", "-v", "-p", "8080", "-h", "/www"], exposed_ports=["8080/tcp"]),
            extra=_www("busybox"),
        ),
        Recipe(
            "python",
            ImageConfig(
                cmd=["python3", "-m", "http.server", "8080", "--directory", "/www"],
                env=["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8"],
                exposed_ports=["8080/tcp"],
            ),
            debs={"bookworm": ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib")},
            extra=_python,
        ),
        Recipe(
            "redis",
            ImageConfig(
                cmd=["redis-server", "--port", "6379", "--bind", "* -::*", "--protected-mode", "no",
                     "--save", "", "--appendonly", "no", "--dir", "/data"],
                exposed_ports=["6379/tcp"],
            ),
            debs={"bookworm": ("redis-server", "redis-tools", "libjemalloc2", "liblzf1")},
            extra=_redis,
        ),
        Recipe(
            "nginx",
            ImageConfig(
                cmd=["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"],
                exposed_ports=["8080/tcp"],
                stop_signal="SIGQUIT",
            ),
            debs={"bookworm": ("nginx", "nginx-common")},
            extra=_nginx,
        ),
    )
}


def _symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def base_layout(root: Path, *, with_busybox: bool) -> None:
    for d in ("etc", "tmp", "var/tmp", "proc", "sys", "dev", "run", "root", "usr/bin", "usr/sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "var/tmp", 0o1777)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    # Name lookups from files only: the node has no DNS server, and a stub that
    # never answers makes e.g. Python's http.server wait seconds in getfqdn().
    (root / "etc/nsswitch.conf").write_text("hosts: files\nnetworks: files\n")
    if not with_busybox:
        return
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(paths.host_root() / "usr/bin/busybox", root / "bin/busybox")
    applets = run([str(root / "bin/busybox"), "--list"], timeout=10).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")


def unpack_debs(root: Path, debs: list[Path]) -> None:
    for deb in debs:
        run(["dpkg", "-x", str(deb), str(root)], timeout=120)
    # Documentation and man pages only make the layer bigger.
    for d in ("usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/locale"):
        shutil.rmtree(root / d, ignore_errors=True)


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def copy_host_libraries(root: Path) -> list[str]:
    """Copy from the host every shared library the image's ELF files need and the image lacks.

    Returns the host paths copied. Raises RuntimeError naming the libraries
    that neither the image nor the host provides.
    """
    lib_dirs = [root / "lib/x86_64-linux-gnu", root / "usr/lib/x86_64-linux-gnu", root / "usr/lib"]
    env = {"LD_LIBRARY_PATH": ":".join(str(d) for d in lib_dirs if d.is_dir())}
    needed: set[str] = set()
    missing: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode) or not _is_elf(path):
                continue
            res = run(["ldd", str(path)], timeout=30, check=False, env=env)
            for line in res.stdout.splitlines():
                line = line.strip()
                if "=> not found" in line:
                    missing[line.split()[0]] = str(path.relative_to(root))
                elif "=>" in line:
                    target = line.split("=>", 1)[1].split("(")[0].strip()
                    if target:
                        needed.add(target)
                elif line.startswith("/"):
                    needed.add(line.split()[0])
    if missing:
        listing = ", ".join(f"{lib} (for {who})" for lib, who in sorted(missing.items()))
        raise RuntimeError(f"shared libraries not found in the image or on the host: {listing}")
    copied = []
    for lib in sorted(needed):
        if lib.startswith(str(root) + "/"):
            continue
        dest = root / lib.lstrip("/")
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)
        copied.append(lib)
    return copied
