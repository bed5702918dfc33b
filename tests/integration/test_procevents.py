"""Process events on the real kernel: an `nsenter` exec into a pid namespace is seen, stopped and continued.

The namespace is made like a container's: `unshare --pid --fork --mount-proc`
with a long-running init (a shell that keeps forking `sleep`, as an app would),
and the exec goes in the way `runc exec` does, with `nsenter -t <init> -p -m`.
The loop runs in a thread so that the test body can poll with `eventually`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nri_zeropod import procevents as pe
from tests.helpers import eventually, need_binary, need_root

pytestmark = pytest.mark.root

T = TypeVar("T")

# The namespace's init forks a child every 50 ms: the keeper/app tree whose
# processes must never be reported while it is excluded.
INIT_SCRIPT = "while :; do sleep 0.05; done"


def state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2]


class Procs:
    """Every process a test starts, killed by pid at the end."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, **kw)
        self.popens.append(p)
        return p

    def kill_all(self) -> None:
        for pid in self.pids + [p.pid for p in self.popens]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.popens:
            p.wait(timeout=10)


@pytest.fixture
def procs() -> Iterator[Procs]:
    need_root()
    need_binary("unshare")
    need_binary("nsenter")
    procs = Procs()
    try:
        yield procs
    finally:
        procs.kill_all()


@dataclass
class PidNs:
    init: int  # host pid of the namespace's pid 1
    inode: int

    def enter(self, procs: Procs, script: str, **kw: Any) -> subprocess.Popen[bytes]:
        """`nsenter` into the namespace running ``sh -c script`` (nsenter forks the child that joins)."""
        return procs.start(["nsenter", "-t", str(self.init), "-p", "-m", "sh", "-c", script], **kw)


def make_pidns(procs: Procs) -> PidNs:
    outer = procs.start(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", INIT_SCRIPT])

    def init_started() -> int:
        [kid] = Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()
        assert Path(f"/proc/{kid}/comm").read_text().strip() == "sh"
        return int(kid)

    init = eventually(init_started, what="namespace init running")
    procs.pids.append(init)
    inode = pe.pid_ns_of(init)
    assert inode is not None and inode != pe.pid_ns_of(os.getpid())
    return PidNs(init, inode)


@pytest.fixture
def pidns(procs: Procs) -> PidNs:
    return make_pidns(procs)


class Watcher:
    """ProcEvents and ExecWatch on a loop in a thread; reported pids are SIGSTOPped and recorded."""

    def __init__(self, *, rcvbuf: int = pe.DEFAULT_RCVBUF) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.watched: dict[int, pe.OnNew] = {}
        self.exclude: set[int] = set()
        self.seen: list[int] = []
        self.forks: list[pe.Fork] = []
        self.events = pe.ProcEvents(rcvbuf=rcvbuf)
        self.run(self.events.start())
        self.call(lambda: self.events.subscribe(self._record_fork))
        self.watch = self.call(lambda: pe.ExecWatch(self.events, self.watched, exclude=self.exclude))

    def _record_fork(self, event: pe.Event) -> None:
        if isinstance(event, pe.Fork):
            self.forks.append(event)

    def forks_by(self, parent: int) -> int:
        return sum(1 for f in self.forks if f.parent_tgid == parent)

    def reported(self, index: int) -> int:
        """The pid reported ``index``-th (IndexError until then, which `eventually` retries)."""
        return self.seen[index]

    def on_new(self, pid: int) -> None:
        pe.stop_process(pid)
        self.seen.append(pid)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the loop's thread (the watch reads its collections there)."""

        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())

    def close(self) -> None:
        self.call(self.watch.close)
        self.call(self.events.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def watcher(procs: Procs) -> Iterator[Watcher]:
    w = Watcher()
    try:
        yield w
    finally:
        w.close()


def watch_ns(watcher: Watcher, ns: PidNs) -> None:
    def register() -> None:
        watcher.watched[ns.inode] = watcher.on_new
        watcher.exclude.add(ns.init)

    watcher.call(register)


def test_nsenter_exec_is_reported_stopped_and_continued(
    procs: Procs, pidns: PidNs, watcher: Watcher, tmp_path: Path
) -> None:
    watch_ns(watcher, pidns)
    marker = tmp_path / "ran"
    nsenter = pidns.enter(procs, f"echo $$ > {marker}; exec sleep 30")

    pid = eventually(lambda: watcher.reported(0), what="exec reported")
    procs.pids.append(pid)
    assert pe.pid_ns_of(pid) == pidns.inode
    assert pe.parent_of(pid) == nsenter.pid  # nsenter forked it after joining the namespace
    eventually(lambda: state(pid) == "T", what="exec stopped")

    assert pe.continue_process(pid)
    # nsenter stops itself when its child stops, and stays stopped when only
    # the child is continued (util-linux continue_as_child); runc exec does not.
    pe.continue_process(nsenter.pid)
    eventually(lambda: marker.exists() and marker.read_text().strip().isdigit(), what="exec ran after SIGCONT")
    assert eventually(lambda: state(pid) == "S", what="sleeping, not stopped")
    assert watcher.seen == [pid]  # its EXECs (sh, then sleep) are the same process


def test_other_namespaces_and_excluded_trees_are_not_reported(
    procs: Procs, pidns: PidNs, watcher: Watcher, tmp_path: Path
) -> None:
    watch_ns(watcher, pidns)
    other = make_pidns(procs)  # not watched
    launcher = procs.start(
        ["sh", "-c", f"read go; nsenter -t {pidns.init} -p -m sh -c 'sleep 30; true'"], stdin=subprocess.PIPE
    )
    watcher.call(lambda: watcher.exclude.add(launcher.pid))
    assert launcher.stdin is not None
    launcher.stdin.write(b"go\n")
    launcher.stdin.close()

    procs.start(["sh", "-c", "sleep 0.1; true"]).wait(timeout=10)  # host namespace
    other.enter(procs, "sleep 0.1; true").wait(timeout=10)
    eventually(lambda: pe.processes_in_pidns(pidns.inode, exclude_tree_of=pidns.init), what="launched")
    # The namespace's init forks a sleep every 50 ms; its tree is excluded.
    eventually(lambda: watcher.forks_by(pidns.init) >= 3, what="forks by the namespace's init")

    # Events arrive in order: once this one is reported, the earlier ones were handled.
    sync = pidns.enter(procs, "exec sleep 30")
    pid = eventually(lambda: watcher.reported(-1), what="control exec reported")
    procs.pids.append(pid)
    assert pe.parent_of(pid) == sync.pid
    assert watcher.seen == [pid]


def test_processes_in_pidns_lists_exec_sessions_only(procs: Procs, pidns: PidNs) -> None:
    assert pe.processes_in_pidns(pidns.inode, exclude_tree_of=pidns.init) == []
    nsenter = pidns.enter(procs, "exec sleep 30")
    sessions = eventually(
        lambda: pe.processes_in_pidns(pidns.inode, exclude_tree_of=pidns.init), what="exec session listed"
    )
    procs.pids.extend(sessions)
    assert len(sessions) == 1 and pe.parent_of(sessions[0]) == nsenter.pid
    everything = pe.processes_in_pidns(pidns.inode, exclude_tree_of=None)
    assert pidns.init in everything and sessions[0] in everything
    assert nsenter.pid not in everything  # nsenter itself stays in the host's namespace
    assert pe.processes_in_pidns(pidns.inode, exclude_tree_of=[pidns.init, nsenter.pid]) == []
    assert pe.processes_in_pidns(pidns.inode + 99_999, exclude_tree_of=None) == []


def test_lost_events_are_recovered_by_a_rescan(procs: Procs, pidns: PidNs, tmp_path: Path) -> None:
    # The smallest buffer the kernel allows holds a few events; block the loop
    # while a burst of forks overflows it, with the exec among them.
    watcher = Watcher(rcvbuf=1)
    try:
        watch_ns(watcher, pidns)
        stall = threading.Event()
        watcher.loop.call_soon_threadsafe(lambda: stall.wait(10))
        burst = procs.start(["sh", "-c", "for i in $(seq 50); do /bin/true; done"])
        burst.wait(timeout=10)
        nsenter = pidns.enter(procs, "exec sleep 30")
        eventually(
            lambda: pe.processes_in_pidns(pidns.inode, exclude_tree_of=pidns.init), what="exec session running"
        )
        stall.set()
        pid = eventually(lambda: watcher.reported(0), what="exec reported after the overrun")
        procs.pids.append(pid)
        assert pe.parent_of(pid) == nsenter.pid
        assert watcher.events.overruns >= 1
        eventually(lambda: state(pid) == "T", what="stopped")
        assert watcher.seen == [pid]
    finally:
        watcher.close()


def test_stop_and_continue_a_vanished_pid(procs: Procs) -> None:
    p = procs.start(["true"])
    p.wait(timeout=10)
    assert not pe.stop_process(p.pid)
    assert not pe.continue_process(p.pid)
    assert pe.pid_ns_of(p.pid) is None and pe.parent_of(p.pid) is None


CHECK = """
import asyncio, sys
from nri_zeropod import procevents as pe
async def main():
    try:
        await pe.ProcEvents(ack_timeout=0.5).start()
    except pe.ProcEventsUnavailable as e:
        print(e)
        sys.exit(3)
asyncio.run(main())
"""


def run_check(prefix: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [*prefix, sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=30, cwd=root, **kw
    )


def test_without_cap_net_admin(procs: Procs) -> None:
    res = run_check([need_binary("setpriv"), "--bounding-set=-net_admin", "--inh-caps=-net_admin"])
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    assert m is not None
    if (int(m[1]), int(m[2])) >= (6, 6):
        assert res.returncode == 0, res.stdout + res.stderr  # since 6.6 anyone may listen
    else:
        assert res.returncode == 3, res.stderr
        assert "CAP_NET_ADMIN" in res.stdout


def test_unavailable_outside_the_initial_pid_namespace(procs: Procs) -> None:
    # The kernel ignores LISTEN requests from other pid namespaces: no answer.
    res = run_check(["unshare", "--pid", "--fork"])
    assert res.returncode == 3, res.stderr
    assert "hostPID" in res.stdout


def test_start_and_close() -> None:
    need_root()

    async def main() -> list[pe.Event]:
        got: list[pe.Event] = []
        async with pe.ProcEvents() as events:
            events.subscribe(got.append)
            proc = await asyncio.create_subprocess_exec("true")
            await proc.wait()
            for _ in range(200):
                if any(isinstance(e, pe.Exit) and e.tgid == proc.pid for e in got):
                    break
                await asyncio.sleep(0.01)
        kinds = [type(e) for e in got if getattr(e, "tgid", getattr(e, "child_tgid", None)) == proc.pid]
        assert kinds == [pe.Fork, pe.Exec, pe.Exit]
        return got

    asyncio.run(main())
