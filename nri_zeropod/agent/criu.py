"""Checkpoint and restore a container's app with CRIU run inside the container's namespaces.

CRIU comes from the toolbox bind-mounted read-only at ``/.zeropod`` and runs
through the toolbox's own ``ld.so``, entered with ``nsenter`` into the keeper's
pid, mount, network, ipc and uts namespaces, root and working directory. It
dumps and restores the app subtree only (the keeper's child), never the
keeper, so the container stays RUNNING for containerd and kubelet.

The image directory stays on the host: it is opened here and handed down as a
file descriptor (``-D /proc/self/fd/N``), so it never has to be visible inside
the container. A restore first joins the keeper's cgroups (so the restored app
lands in the container's cgroups, ``--manage-cgroups=ignore``) and passes the
keeper's stdout and stderr pipes with ``--inherit-fd`` (so the app's output
keeps reaching the container log). CRIU's log stays next to the image and its
last error line and path go into :class:`CriuError`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from nri_zeropod import pidfd
from nri_zeropod.proc import CommandError, arun

# Options for both directions; each was needed on the reference machine (DESIGN.md §3).
COMMON = ("--tcp-established", "--file-locks", "--network-lock", "nftables", "--manage-cgroups=ignore")
NSENTER = ("nsenter", "-p", "-m", "-n", "-i", "-u", "-r", "-w")


@dataclass(frozen=True)
class CriuSettings:
    """How CRIU is run.

    The timeouts are generous because dump and restore are bound by memory
    size: about 1 GB/s on the reference machine, so 5 minutes covers tens of
    GB while still ending a CRIU that hangs.
    """

    toolbox_mount: str = "/.zeropod"
    dump_timeout: float = 300.0
    restore_timeout: float = 300.0
    log_level: int = 4

    def criu(self) -> list[str]:
        tb = self.toolbox_mount
        return [f"{tb}/lib/ld-linux-x86-64.so.2", "--library-path", f"{tb}/lib", f"{tb}/bin/criu"]


class CriuError(Exception):
    """A CRIU run failed; ``log`` is the log file on the host, ``tail`` its last lines."""

    def __init__(self, *, op: str, label: str, reason: str, log: Path, tail: list[str]) -> None:
        self.op, self.label, self.reason, self.log, self.tail = op, label, reason, log, tail
        first_error = next((line for line in reversed(tail) if "Error" in line), tail[-1] if tail else "")
        detail = f": {first_error.strip()}" if first_error else ""
        super().__init__(f"criu {op} of {label} failed ({reason}){detail}; log: {log}")


@dataclass(frozen=True)
class AppProcess:
    host_pid: int
    ns_pid: int


def find_app(keeper_pid: int) -> AppProcess | None:
    """The keeper's app: its child that leads its own session (the keeper calls setsid())."""
    try:
        children = Path(f"/proc/{keeper_pid}/task/{keeper_pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        pid = int(child)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            state, sid = fields[0], int(fields[3])
            if state == "Z" or sid != pid:
                continue
            nspid = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("NSpid:")]
            return AppProcess(host_pid=pid, ns_pid=int(nspid[0].split()[-1]))
        except (OSError, IndexError, ValueError):
            continue
    return None


def dump_complete(images: Path) -> bool:
    """Whether ``images`` holds a finished dump (CRIU writes this line last)."""
    tail = log_tail(images / "dump.log", lines=5)
    return any("Dumping finished successfully" in line for line in tail) and (images / "inventory.img").exists()


def running_in(keeper_pid: int) -> bool:
    """Whether a toolbox CRIU runs in the pid namespace of ``keeper_pid``."""
    try:
        ns = os.readlink(f"/proc/{keeper_pid}/ns/pid")
    except OSError:
        return False
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == keeper_pid:
            continue
        try:
            if os.readlink(d / "ns/pid") != ns:
                continue
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"/bin/criu") for a in argv[:4]):
            return True
    return False


def _cgroup_mounts() -> dict[str, str]:
    """Map a /proc/PID/cgroup controller field ("cpu", "name=systemd", "" for v2) to its mountpoint."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _src, opts = (post.split() + ["", "", ""])[:3]
        mountpoint = pre.split()[4]
        if fstype == "cgroup2":
            out.setdefault("", mountpoint)
        elif fstype == "cgroup":
            ctrls = [o for o in opts.split(",") if o not in ("rw", "ro") and "=" not in o or o.startswith("name=")]
            out.setdefault(",".join(sorted(ctrls)), mountpoint)
    return out


def cgroup_procs_files(pid: int) -> list[str]:
    """The cgroup.procs files of every cgroup ``pid`` is in, one per hierarchy."""
    mounts = _cgroup_mounts()
    files = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, ctrls, path = line.split(":", 2)
        key = ",".join(sorted(ctrls.split(","))) if ctrls else ""
        mount = mounts.get(key)
        if mount:
            files.append(f"{mount}{path.rstrip('/')}/cgroup.procs")
    return files


def _join_cgroups(files: list[str]) -> None:
    # Runs in the forked child before exec: only plain syscalls here.
    for f in files:
        fd = os.open(f, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def log_tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


async def _run_criu(
    *, op: str, label: str, keeper_pid: int, images: Path, args: list[str], settings: CriuSettings,
    timeout: float, extra_fds: tuple[int, ...] = (), preexec=None,
) -> float:
    log = images / f"{op}.log"
    log.unlink(missing_ok=True)
    dfd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    argv = [
        *NSENTER, "-t", str(keeper_pid), "--",
        *settings.criu(), op, "-D", f"/proc/self/fd/{dfd}", "-o", f"{op}.log", f"-v{settings.log_level}",
        *COMMON, *args,
    ]
    start = time.monotonic()
    try:
        await arun(argv, timeout=timeout, pass_fds=(dfd, *extra_fds), preexec_fn=preexec)
    except CommandError as e:
        reason = e.reason or f"exit code {e.returncode}"
        tail = log_tail(log) or ([e.last_line] if e.last_line else [])
        raise CriuError(op=op, label=label, reason=reason, log=log, tail=tail) from None
    finally:
        os.close(dfd)
    return time.monotonic() - start


async def dump(*, keeper_pid: int, app: AppProcess, images: Path, label: str, settings: CriuSettings) -> float:
    """Dump the app subtree into ``images``; CRIU kills the app on success and resumes it on failure."""
    return await _run_criu(
        op="dump", label=label, keeper_pid=keeper_pid, images=images, settings=settings,
        timeout=settings.dump_timeout, args=["-t", str(app.ns_pid), "--skip-in-flight"],
    )


async def restore(*, keeper_pid: int, images: Path, label: str, settings: CriuSettings) -> float:
    """Restore the app from ``images``; it comes back as the keeper's child with its old pid."""
    cgroups = cgroup_procs_files(keeper_pid)
    out_fds: list[int] = []
    inherit: list[str] = []
    try:
        for n in (1, 2):
            try:
                # The very open file description the app inherited from the keeper.
                fd = pidfd.getfd(keeper_pid, n)
            except OSError:
                continue  # e.g. a closed stdout: nothing to hand over
            os.set_inheritable(fd, True)
            out_fds.append(fd)
            st = os.fstat(fd)
            if (st.st_mode & 0o170000) == 0o010000:  # a FIFO: the shim's pipe
                inherit += ["--inherit-fd", f"fd[{fd}]:pipe:[{st.st_ino}]"]
        return await _run_criu(
            op="restore", label=label, keeper_pid=keeper_pid, images=images, settings=settings,
            timeout=settings.restore_timeout, args=["-d", *inherit], extra_fds=tuple(out_fds),
            preexec=lambda: _join_cgroups(cgroups),
        )
    finally:
        for fd in out_fds:
            os.close(fd)
