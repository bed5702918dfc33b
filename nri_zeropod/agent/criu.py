"""Checkpoint and restore a container's app with CRIU run inside the container's namespaces.

CRIU comes from the toolbox bind-mounted read-only at ``/.zeropod`` and runs
through the toolbox's own ``ld.so``, entered with ``nsenter`` into the keeper's
pid, mount, network, ipc and uts namespaces, root and working directory. It
dumps and restores the app subtree only (the keeper's child), never the
keeper, so the container stays RUNNING for containerd and kubelet.

Entering the container is the toolbox's ``zeropod-criu`` helper's job (an
nsenter that also joins cgroups, see ``init/zeropod-criu.c``). The image
directory stays on the host: it is opened here and handed down as a file
descriptor (``-D /proc/self/fd/N``), so it never has to be visible inside the
container. A restore joins the keeper's cgroups (so the restored app lands in
the container's cgroups, ``--manage-cgroups=ignore``) and passes the keeper's
stdout and stderr pipes with ``--inherit-fd`` (so the app's output keeps
reaching the container log). CRIU's log stays next to the image and its last
error line and path go into :class:`CriuError`.

A restore is prepared ahead of time (:class:`Restorer`): right after a dump
the helper is started, joins the container's namespaces and cgroups, sets up
a private ``/run`` holding CRIU's kernel-feature cache, and waits for one byte
on a pipe; a wake only writes that byte. This takes process start-up, the
cgroup move (several ms on cgroup v1) and CRIU's kernel probing (15-25 ms) off
the wake path.

The network lock is taken only when the app holds TCP connections (CRIU's
nftables lock costs about 15 ms at restore); an idle app has none.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nri_zeropod import pidfd, ports, procevents
from nri_zeropod.proc import CommandError, arun

# Options for both directions; each was needed on the reference machine (DESIGN.md §3).
RLIMITS_SHIM = "libzeropod-rlimits.so"  # init/zeropod-rlimits.c
COMMON = ("--tcp-established", "--file-locks", "--manage-cgroups=ignore")


@dataclass(frozen=True)
class CriuSettings:
    """How CRIU is run.

    The timeouts are generous because dump and restore are bound by memory
    size: about 1 GB/s on the reference machine, so 5 minutes covers tens of
    GB while still ending a CRIU that hangs.
    """

    toolbox_mount: str = "/.zeropod"
    # The node-wide copy of CRIU's kernel-feature cache ("" = none), per boot.
    kdat_dir: str = ""
    dump_timeout: float = 300.0
    restore_timeout: float = 300.0
    log_level: int = 4

    def criu(self) -> list[str]:
        tb = self.toolbox_mount
        # The shim answers CRIU's reads of a non-root app's rlimits where CAP_SYS_RESOURCE is missing.
        return [f"{tb}/lib/ld-linux-x86-64.so.2", "--library-path", f"{tb}/lib",
                "--preload", f"{tb}/lib/{RLIMITS_SHIM}", f"{tb}/bin/criu"]

    def helper(self, keeper_pid: int) -> str:
        """The helper from the toolbox this container has mounted (an upgrade may have replaced the host's)."""
        return f"/proc/{keeper_pid}/root{self.toolbox_mount}/bin/zeropod-criu"

    def kdat_path(self) -> Path | None:
        if not self.kdat_dir:
            return None
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return None
        return Path(self.kdat_dir) / f"criu-{boot}.kdat"


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
            fields = procevents.stat_fields(pid)
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


def in_pid_ns(keeper_pid: int) -> list[int]:
    """Host pids of every process in ``keeper_pid``'s pid namespace but the keeper."""
    ns = procevents.pid_ns_of(keeper_pid)
    if ns is None:
        return []
    return [pid for pid in procevents.processes_in_pidns(ns, exclude_tree_of=None) if pid != keeper_pid]


def kill_all_but_keeper(keeper_pid: int) -> int:
    """SIGKILL what a failed restore left half-made (and anything else in the container): the keeper then
    sees no app in a state that allows none and ends the container."""
    killed = 0
    for pid in in_pid_ns(keeper_pid):
        try:
            os.kill(pid, 9)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def running_in(keeper_pid: int) -> bool:
    """Whether a toolbox CRIU runs in the pid namespace of ``keeper_pid``."""
    for pid in in_pid_ns(keeper_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
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


def log_tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _criu_error(*, op: str, label: str, log: Path, err: CommandError | None, reason: str = "") -> CriuError:
    if err is not None:
        reason = err.reason or f"exit code {err.returncode}"
    tail = log_tail(log) or ([err.last_line] if err is not None and err.last_line else [])
    return CriuError(op=op, label=label, reason=reason, log=log, tail=tail)


async def dump(*, keeper_pid: int, app: AppProcess, images: Path, label: str, settings: CriuSettings) -> float:
    """Dump the app subtree into ``images``; CRIU kills the app on success and resumes it on failure."""
    log = images / "dump.log"
    log.unlink(missing_ok=True)
    lock = "nftables" if ports.connections(app.host_pid) else "skip"
    dfd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    argv = [
        settings.helper(keeper_pid), "--target", str(keeper_pid), "--",
        *settings.criu(), "dump", "-t", str(app.ns_pid), "-D", f"/proc/self/fd/{dfd}", "-o", "dump.log",
        f"-v{settings.log_level}", *COMMON, "--network-lock", lock, "--skip-in-flight",
    ]
    start = time.monotonic()
    try:
        await arun(argv, timeout=settings.dump_timeout, pass_fds=(dfd,))
    except CommandError as e:
        raise _criu_error(op="dump", label=label, log=log, err=e) from None
    finally:
        os.close(dfd)
    return time.monotonic() - start


class Restorer:
    """A restore made ready inside the container, started by :meth:`fire`.

    Holds the helper process and the write end of its go-pipe; closing that
    (``cancel``, or this process dying) makes the helper exit without
    restoring.
    """

    def __init__(self, *, proc: asyncio.subprocess.Process, go: int, log: Path, label: str,
                 kdat_new: Path | None, kdat: Path | None, settings: CriuSettings) -> None:
        self.proc, self._go, self.log, self.label = proc, go, log, label
        self._kdat_new, self._kdat = kdat_new, kdat
        self.settings = settings

    @classmethod
    async def spawn(cls, *, keeper_pid: int, images: Path, label: str, settings: CriuSettings) -> Restorer:
        log = images / "restore.log"
        cgroups = cgroup_procs_files(keeper_pid)
        kdat = settings.kdat_path()
        kdat_new = kdat.with_name(kdat.name + f".{os.getpid()}.new") if kdat is not None else None
        fds: list[int] = []
        try:
            dfd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
            fds.append(dfd)
            inherit: list[str] = []
            for n in (1, 2):
                try:
                    # The very open file description the app inherited from the keeper.
                    fd = pidfd.getfd(keeper_pid, n)
                except OSError:
                    continue  # e.g. a closed stdout: nothing to hand over
                fds.append(fd)
                st = os.fstat(fd)
                if (st.st_mode & 0o170000) == 0o010000:  # a FIFO: the shim's pipe
                    inherit += ["--inherit-fd", f"fd[{fd}]:pipe:[{st.st_ino}]"]
            helper_args: list[str] = ["--target", str(keeper_pid), "--private-run"]
            for f in cgroups:
                helper_args += ["--cgroup", f]
            if kdat is not None and kdat.exists():
                kfd = os.open(kdat, os.O_RDONLY)
                fds.append(kfd)
                helper_args += ["--kdat-in", str(kfd)]
                kdat_new = None
            elif kdat_new is not None:
                kfd = os.open(kdat_new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                fds.append(kfd)
                helper_args += ["--kdat-out", str(kfd)]
            go_r, go_w = os.pipe()
            fds.append(go_r)
            helper_args += ["--go-fd", str(go_r)]
            argv = [
                settings.helper(keeper_pid), *helper_args, "--",
                *settings.criu(), "restore", "-d", "-D", f"/proc/self/fd/{dfd}", "-o", "restore.log",
                f"-v{settings.log_level}", *COMMON, "--join-ns", "mnt:/proc/1/ns/mnt", *inherit,
            ]
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, pass_fds=tuple(fds),
            )
        except OSError as e:
            raise CriuError(op="restore", label=label, reason=f"cannot prepare: {e}", log=log, tail=[]) from None
        finally:
            for fd in fds:
                os.close(fd)
        return cls(proc=proc, go=go_w, log=log, label=label, kdat_new=kdat_new, kdat=kdat, settings=settings)

    @property
    def ready(self) -> bool:
        return self.proc.returncode is None and self._go >= 0

    async def fire(self, *, timeout: float | None = None) -> float:
        """Start the restore now and wait at most ``timeout`` for it; returns how long it took."""
        timeout = self.settings.restore_timeout if timeout is None else min(timeout, self.settings.restore_timeout)
        if not self.ready:
            raise CriuError(op="restore", label=self.label, reason="the prepared restorer is gone", log=self.log,
                            tail=[])
        start = time.monotonic()
        try:
            os.write(self._go, b"g")
        finally:
            self._close_go()
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise _criu_error(op="restore", label=self.label, log=self.log, err=None,
                              reason=f"timed out after {timeout:g}s") from None
        took = time.monotonic() - start
        if self.proc.returncode != 0:
            text = (err or out).decode(errors="replace")
            raise _criu_error(op="restore", label=self.label, log=self.log, err=CommandError(
                argv=["zeropod-criu", "restore"], returncode=self.proc.returncode, stderr=text))
        self._keep_kdat()
        return took

    def _keep_kdat(self) -> None:
        if self._kdat_new is None or self._kdat is None:
            return
        try:
            if self._kdat_new.stat().st_size > 0:
                os.replace(self._kdat_new, self._kdat)
            else:
                self._kdat_new.unlink()
        except OSError:
            pass

    def _close_go(self) -> None:
        if self._go >= 0:
            os.close(self._go)
            self._go = -1

    async def cancel(self) -> None:
        """Let the helper go without restoring."""
        self._close_go()
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.communicate(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._kdat_new is not None:
            self._kdat_new.unlink(missing_ok=True)


def restore_budget(image_bytes: int) -> float:
    """How long a restore of that many bytes may take before it counts as hung.

    Restores run at 1-2 GB/s here; 20 MB/s plus 10 s of slack is ample, and
    still ends a CRIU stuck on a broken image while the client waits.
    """
    return 10.0 + image_bytes / 20e6
