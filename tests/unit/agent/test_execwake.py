"""Which pid namespaces the exec waker watches, with real processes standing in for keepers.

No process-events socket here: only the bookkeeping of watched namespaces is under test.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from tests.helpers import eventually

from nri_zeropod import procevents
from nri_zeropod.agent.execwake import ExecWaker
from nri_zeropod.agent.lifecycle import State
from nri_zeropod.agent.manager import Hooks
from nri_zeropod.agent.store import Record


def waker() -> ExecWaker:
    return ExecWaker(SimpleNamespace(hooks=Hooks()))  # type: ignore[arg-type]


def record(pid: int, cid: str = "c1") -> Record:
    return Record(id=cid, name="web", pod_id="p1", pod_name="web", pod_namespace="default", keeper_pid=pid)


@contextmanager
def keeper() -> Iterator[int]:
    """A process in a pid namespace of its own, as a keeper is: its host pid."""
    parent = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "60"])
    try:
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
        pid = eventually(lambda: int(children.read_text().split()[0]), timeout=5)
        assert procevents.pid_ns_of(pid) != procevents.pid_ns_of(parent.pid)
        yield pid
    finally:
        parent.kill()
        parent.wait()


def test_a_container_removed_after_its_keeper_exited_is_no_longer_watched() -> None:
    # The forget hook runs when the container is removed, and by then its
    # keeper (and so /proc/PID/ns/pid) is gone.
    w = waker()
    with keeper() as pid:
        rec = record(pid)
        w.watch_container(rec)
        ns = procevents.pid_ns_of(pid)
        assert ns is not None and ns in w.watched
        assert pid in w.exclude
    eventually(lambda: procevents.pid_ns_of(pid) is None, timeout=5)
    w.unwatch_container(rec)
    assert w.watched == {}
    assert pid not in w.exclude


def test_unwatch_is_by_container_and_leaves_the_others() -> None:
    w = waker()
    with keeper() as a, keeper() as b:
        ra, rb = record(a), record(b, "c2")
        w.watch_container(ra)
        w.watch_container(rb)
        assert len(w.watched) == 2
        w.unwatch_container(ra)
        assert list(w.watched) == [procevents.pid_ns_of(b)]
        w.unwatch_container(ra)  # twice is harmless
        assert list(w.watched) == [procevents.pid_ns_of(b)]


class FakeManager:
    """Records what ensure_running's caller still wanted once it held the lock."""

    def __init__(self) -> None:
        self.hooks = Hooks()
        self.asked: list[bool] = []

    async def ensure_running(self, cid: str, *, still_wanted=None) -> None:
        self.asked.append(still_wanted() if still_wanted is not None else True)

    def get(self, cid: str) -> None:
        return None


def test_an_exec_that_ended_before_the_lock_was_had_does_not_restore() -> None:
    m = FakeManager()
    w = ExecWaker(m)  # type: ignore[arg-type]
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        with keeper() as pid:
            rec = record(pid)
            rec.state = State.SCALED_DOWN
            w.watch_container(rec)
            w.stopped[rec.id] = [gone.pid]
            asyncio.run(w._wake(rec))
            assert m.asked == [False]
            assert procevents.pid_ns_of(pid) in w.watched, "still scaled down: the next exec must be seen"
            w.stopped[rec.id] = [gone.pid, live.pid]
            asyncio.run(w._wake(rec))
            assert m.asked == [False, True]
            rec.state = State.RUNNING  # what the restore would have done
            w.stopped[rec.id] = [live.pid]
            asyncio.run(w._wake(rec))
            assert w.watched == {}
    finally:
        live.kill()
        live.wait()
