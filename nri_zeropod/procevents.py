"""New processes in watched pid namespaces, from the kernel's process-events connector.

``kubectl exec`` into a scaled-down container must find the app there, so the
agent watches for processes appearing in such a container: :class:`ProcEvents`
listens on a ``NETLINK_CONNECTOR`` socket bound to the ``CN_IDX_PROC`` group
(stdlib sockets, read with ``loop.add_reader``) and hands FORK, EXEC and EXIT
events to its subscribers synchronously, in the reader callback, so that a
subscriber can SIGSTOP a new process before it gets far.
:class:`ExecWatch` is that subscriber: for each new process that lives in one
of the pid namespaces its caller registered, and that does not descend from an
excluded pid (the keeper, the agent and so its CRIU helpers), it calls the
namespace's ``on_new(pid)``.

What the kernel reports for ``nsenter -t T -p -m sh -c 'cmd'`` (seen on
6.18; runc exec forks its last init stage into the namespace the same way):
FORK parent=nsenter (host pid namespace)
child=C, where C is already in T's pid namespace when the event is queued and
has not run yet; then EXEC C (sh); then FORK/EXEC/EXIT of C's children; EXIT
C; EXIT nsenter. A process can only enter a pid namespace by being forked
into it, so the FORK of the child is the earliest point and the one the watch
acts on; an EXEC of a pid it has not reported is a fallback for a FORK whose
/proc entry could not be read. Threads (child pid != tgid) are skipped.

Events carry host pids (the connector only serves listeners in the initial
pid and user namespaces, so the agent needs hostPID). The kernel drops events
when the socket's buffer is full; recv then fails with ENOBUFS and
subscribers get :data:`OVERRUN`, on which the watch rescans /proc
(:func:`processes_in_pidns`). Parsing (:func:`iter_events`) is pure and
tested on built and recorded bytes.

How far a new process gets before the stop lands is decided by the
scheduler, not by this code: on a busy 2-CPU host the freshly forked process
kept the CPU for 2-4 ms before the agent ran, and at nice -10 the stop landed
0.1-0.4 ms after the FORK, before the program's main() in 60 of 60 runs. The
agent should run its event loop at a raised priority.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import random
import signal
import socket
import struct
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .netns import NLMSG_DONE, NLMSG_HDR, iter_messages

log = logging.getLogger("nri_zeropod.procevents")

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
# The connector's messages are NLMSG_DONE (from netns), both ways.
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

PROC_EVENT_NONE = 0x00000000  # an answer to a LISTEN/IGNORE request
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000
WANTED = PROC_EVENT_FORK | PROC_EVENT_EXEC | PROC_EVENT_EXIT

SO_RCVBUFFORCE = 33  # not in the socket module; lets root go past rmem_max
DEFAULT_RCVBUF = 8 << 20  # the kernel doubles it: about 20,000 queued events at ~830 bytes each
_RECV_SIZE = 32 << 10  # CONNECTOR_MAX_MSG_SIZE is 16 KiB; one event is 76 bytes

_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (8-aligned inside proc_event)
_FORK = struct.Struct("=iiii")  # parent pid, parent tgid, child pid, child tgid
_EXEC = struct.Struct("=ii")  # pid, tgid
_EXIT = struct.Struct("=iiIIii")  # pid, tgid, exit_code, exit_signal, parent pid, parent tgid
_ACK = struct.Struct("=I")  # err
_OP = struct.Struct("=I")  # enum proc_cn_mcast_op
_OP_FILTERED = struct.Struct("=II")  # struct proc_input (kernel >= 6.6): op, event mask


class ProcEventsError(Exception):
    """The process-events connector failed or sent something unreadable."""


class ProcEventsUnavailable(ProcEventsError):
    """Process events cannot be had on this host or by this process."""


class ParseError(ProcEventsError, ValueError):
    """A connector datagram is truncated or malformed."""


@dataclass(frozen=True, slots=True)
class Fork:
    """A new task: a process when ``child_pid == child_tgid``, else a thread."""

    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int
    timestamp_ns: int  # CLOCK_MONOTONIC, like time.monotonic_ns()


@dataclass(frozen=True, slots=True)
class Exec:
    pid: int
    tgid: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class Exit:
    """A task ended. ``exit_code`` is a wait status (``os.waitstatus_to_exitcode``);
    ``exit_signal`` is the signal its parent gets (SIGCHLD), not a killing signal."""

    pid: int
    tgid: int
    exit_code: int
    exit_signal: int
    parent_pid: int
    parent_tgid: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class Ack:
    """The kernel's answer to a LISTEN/IGNORE request (``ack`` is ours plus one)."""

    err: int
    ack: int


class Overrun:
    """Events were lost (the socket's buffer overflowed): rescan /proc."""

    def __repr__(self) -> str:
        return "OVERRUN"


OVERRUN = Overrun()
Event = Fork | Exec | Exit | Overrun
Listener = Callable[[Event], None]


# -- the wire (pure) ----------------------------------------------------------


def control_message(op: int, *, ack: int, events: int | None = None) -> bytes:
    """A LISTEN/IGNORE request; ``events`` adds the kernel-side event filter (>= 6.6)."""
    data = _OP.pack(op) if events is None else _OP_FILTERED.pack(op, events)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(data), 0) + data
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def iter_events(data: bytes) -> Iterator[Fork | Exec | Exit | Ack]:
    """The events of one datagram, in order; other connector users and event kinds are skipped.

    Raises :class:`ParseError` at the first truncated message, after yielding
    the ones before it.
    """
    try:
        for mtype, payload in iter_messages(data):
            if mtype != NLMSG_DONE:
                continue
            event = _parse_cn_msg(payload)
            if event is not None:
                yield event
    except ValueError as e:
        if isinstance(e, ParseError):
            raise
        raise ParseError(str(e)) from None


def _parse_cn_msg(payload: bytes) -> Fork | Exec | Exit | Ack | None:
    if len(payload) < _CN_MSG.size:
        raise ParseError(f"cn_msg truncated: {len(payload)} bytes")
    idx, val, _seq, ack, length, _flags = _CN_MSG.unpack_from(payload)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return None
    body = payload[_CN_MSG.size : _CN_MSG.size + length]
    if len(body) < length or length < _EVENT_HEAD.size:
        raise ParseError(f"proc_event truncated: {len(body)} of {length} bytes")
    what, _cpu, ts = _EVENT_HEAD.unpack_from(body)
    off = _EVENT_HEAD.size
    shape = _SHAPES.get(what)
    if shape is None:
        return None
    if len(body) < off + shape.size:
        raise ParseError(f"proc_event {what:#x} truncated: {len(body)} bytes")
    f = shape.unpack_from(body, off)
    if what == PROC_EVENT_FORK:
        return Fork(f[0], f[1], f[2], f[3], ts)
    if what == PROC_EVENT_EXEC:
        return Exec(f[0], f[1], ts)
    if what == PROC_EVENT_EXIT:
        return Exit(f[0], f[1], f[2], f[3], f[4], f[5], ts)
    return Ack(f[0], ack)


_SHAPES = {PROC_EVENT_NONE: _ACK, PROC_EVENT_FORK: _FORK, PROC_EVENT_EXEC: _EXEC, PROC_EVENT_EXIT: _EXIT}


# -- the listener ---------------------------------------------------------------


class ProcEvents:
    """The connector socket; subscribers are called in the event loop's reader callback.

    A subscriber must be quick and must not raise (exceptions are logged);
    anything slow belongs in a task it starts.
    """

    def __init__(self, *, rcvbuf: int = DEFAULT_RCVBUF, ack_timeout: float = 2.0, batch: int = 256) -> None:
        # ack_timeout: the kernel answers a LISTEN at once; silence means it
        # ignored us (no CONFIG_PROC_EVENTS, or not in the initial namespaces).
        # batch: datagrams read per wakeup, so a fork storm cannot starve the loop.
        self._rcvbuf = rcvbuf
        self._ack_timeout = ack_timeout
        self._batch = batch
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Listener] = []
        self._ack_wanted = 0
        self._acked: asyncio.Future[int] | None = None
        self._buf = bytearray(_RECV_SIZE)
        self.overruns = 0

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every event; returns the function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    async def start(self) -> None:
        """Open the socket and subscribe; :class:`ProcEventsUnavailable` says why not."""
        if self._sock is not None:
            raise RuntimeError("ProcEvents already started")
        self._loop = asyncio.get_running_loop()
        self._sock = _open_socket(self._rcvbuf)
        self._acked = self._loop.create_future()
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        self._ack_wanted = random.randrange(1, 1 << 30)  # tells our answer from other listeners'
        try:
            # The plain request is the one whose answer we wait for. The filtered
            # one (>= 6.6; older kernels ignore it) then narrows the stream to
            # FORK/EXEC/EXIT, which also filters out its own answer.
            self._sock.send(control_message(PROC_CN_MCAST_LISTEN, ack=self._ack_wanted - 1))
            self._sock.send(control_message(PROC_CN_MCAST_LISTEN, ack=self._ack_wanted + 7, events=WANTED))
            err = await asyncio.wait_for(self._acked, self._ack_timeout)
        except TimeoutError:
            self.close()
            raise ProcEventsUnavailable(
                "no answer from the process-events connector: the kernel lacks CONFIG_PROC_EVENTS, "
                "or this process is not in the initial pid and user namespaces (the agent needs hostPID)"
            ) from None
        except BaseException:
            self.close()
            raise
        if err:
            self.close()
            hint = " (kernels before 6.6 want CAP_NET_ADMIN)" if err == errno.EPERM else ""
            raise ProcEventsUnavailable(f"process-events LISTEN refused: {os.strerror(err)}{hint}")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        try:
            # Kernels before 6.6 only count listeners down on an explicit IGNORE.
            sock.send(control_message(PROC_CN_MCAST_IGNORE, ack=0))
        except OSError:
            pass
        sock.close()

    async def __aenter__(self) -> ProcEvents:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _on_readable(self) -> None:
        sock = self._sock
        for _ in range(self._batch):
            if sock is None or sock.fileno() < 0:
                return
            try:
                n, (sender, _groups) = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    log.error("process-events socket: %s", e)
                    return
                self._overrun("the socket's receive buffer overflowed")
                continue
            if sender == 0:  # only the kernel speaks on this group
                self.feed(bytes(self._buf[:n]))
            sock = self._sock

    def feed(self, data: bytes) -> None:
        """Dispatch the events of one datagram (the reader calls this; tests may too)."""
        try:
            for event in iter_events(data):
                if isinstance(event, Ack):
                    if event.ack == self._ack_wanted and self._acked is not None and not self._acked.done():
                        self._acked.set_result(event.err)
                else:
                    self._emit(event)
        except ParseError as e:
            self._overrun(f"unreadable datagram: {e}")

    def _overrun(self, why: str) -> None:
        self.overruns += 1
        log.warning("process events lost (%s); watchers rescan /proc", why)
        self._emit(OVERRUN)

    def _emit(self, event: Event) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("process-event subscriber failed on %r", event)


def _open_socket(rcvbuf: int) -> socket.socket:
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR
        )
    except OSError as e:
        raise ProcEventsUnavailable(f"no netlink connector (CONFIG_CONNECTOR): {e.strerror}") from None
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # capped at rmem_max
        sock.bind((0, CN_IDX_PROC))
    except PermissionError:
        sock.close()
        # Since 6.6 anyone may listen; before, only CAP_NET_ADMIN.
        raise ProcEventsUnavailable("process events need CAP_NET_ADMIN on this kernel (run as root)") from None
    except BaseException:
        sock.close()
        raise
    return sock


# -- /proc helpers ----------------------------------------------------------------


def pid_ns_of(pid: int) -> int | None:
    """Inode of the pid namespace of ``pid``, or None if it is gone.

    Not cached: a cache would need the start time to survive pid reuse, and
    reading that costs as much as this stat (a few microseconds).
    """
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [0] is the state
    (field 3), [19] the start time (field 22). OSError if ``pid`` is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # comm may hold spaces and parentheses; the fields after the last ')' do not.
    return stat.rsplit(")", 1)[1].split()


def parent_of(pid: int) -> int | None:
    """The parent pid (0 for the host's init and kthreadd), or None if ``pid`` is gone."""
    # os.open/os.read: a third cheaper than open() (8 vs 11 us), and an
    # exclusion check reads one of these per ancestor.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm may hold spaces and parentheses; the fields after the last ')' do not.
    fields = stat[stat.rfind(b")") + 2 :].split(b" ", 2)
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


_MAX_DEPTH = 64  # deeper process trees are not worth walking


def in_tree_of(
    pid: int, roots: Collection[int], *, parent: int | None = None, cache: dict[int, int | None] | None = None
) -> bool:
    """Whether ``pid`` is one of ``roots`` or descends from one.

    ``parent`` (a FORK event's parent) is tried first and saves a /proc read.
    By the time the event is read, that parent may be gone; its children
    were then re-parented (to a subreaper or their pid namespace's init) and
    the walk starts again from ``pid``'s present parent. That is how a
    process CRIU restored is seen: CRIU forks it and exits, and the keeper
    (a root) inherits it. A chain broken again counts as not in the tree.
    """
    if not roots:
        return False
    if pid in roots:
        return True
    if parent is not None:
        found = _walk_up(parent, roots, cache)
        if found is not None:
            return found
    return _walk_up(pid, roots, cache) is True


def _walk_up(pid: int, roots: Collection[int], cache: dict[int, int | None] | None) -> bool | None:
    """True at a root, False at the top (or too deep), None where an ancestor vanished."""
    cur: int | None = pid
    for _ in range(_MAX_DEPTH):
        if cur is None:
            return None
        if cur <= 0:
            return False
        if cur in roots:
            return True
        if cache is not None:
            if cur not in cache:
                cache[cur] = parent_of(cur)
            cur = cache[cur]
        else:
            cur = parent_of(cur)
    return False


def _all_pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def _roots(exclude_tree_of: int | Collection[int] | None) -> Collection[int]:
    if exclude_tree_of is None:
        return ()
    return (exclude_tree_of,) if isinstance(exclude_tree_of, int) else exclude_tree_of


def processes_in_pidns(ns_inode: int, *, exclude_tree_of: int | Collection[int] | None) -> list[int]:
    """Host pids of the processes in pid namespace ``ns_inode``, leaving out those that
    are (or descend from) ``exclude_tree_of``: what is left are exec sessions."""
    return scan_pidns([ns_inode], exclude_tree_of=exclude_tree_of).get(ns_inode, [])


def scan_pidns(ns_inodes: Collection[int], *, exclude_tree_of: int | Collection[int] | None) -> dict[int, list[int]]:
    """:func:`processes_in_pidns` for several namespaces in one pass over /proc."""
    roots = _roots(exclude_tree_of)
    cache: dict[int, int | None] = {}
    out: dict[int, list[int]] = {}
    for pid in _all_pids():
        ns = pid_ns_of(pid)
        if ns is not None and ns in ns_inodes and not in_tree_of(pid, roots, cache=cache):
            out.setdefault(ns, []).append(pid)
    for pids in out.values():
        pids.sort()
    return out


def stop_process(pid: int) -> bool:
    """SIGSTOP ``pid``; False if it is gone. The stop lands when it next leaves the kernel."""
    return _signal(pid, signal.SIGSTOP)


def continue_process(pid: int) -> bool:
    """SIGCONT ``pid``; False if it is gone."""
    return _signal(pid, signal.SIGCONT)


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


# -- the watch ---------------------------------------------------------------------

OnNew = Callable[[int], Awaitable[object] | None]


class ExecWatch:
    """Calls ``watched[ns](pid)`` for each new process in a watched pid namespace.

    ``watched`` (pid-namespace inode -> callback) and ``exclude`` (pids whose
    trees are ignored: keepers, the agent itself so that its CRIU helpers are
    ignored) are the caller's live collections, read at each event. A plain
    callback runs inside the reader callback, the right place for
    :func:`stop_process`; an awaitable one is run as a task. Each process is
    reported once (at its FORK, or its first EXEC if the FORK was missed);
    after an overrun, watched namespaces are rescanned and processes not yet
    reported are.
    """

    def __init__(self, events: ProcEvents, watched: Mapping[int, OnNew], *, exclude: Collection[int] = ()) -> None:
        self.watched = watched
        self.exclude = exclude
        self._reported: set[int] = set()  # live pids already reported; EXIT removes them
        self._tasks: set[asyncio.Task[object]] = set()
        self._unsubscribe = events.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()
        for task in self._tasks:
            task.cancel()

    def _on_event(self, event: Event) -> None:
        # A reported pid is skipped even at a FORK: a rescan after an overrun
        # may have reported it before its queued FORK is read.
        if isinstance(event, Fork):
            if event.child_pid == event.child_tgid and event.child_tgid not in self._reported and self.watched:
                self._consider(event.child_tgid, parent=event.parent_tgid)
        elif isinstance(event, Exec):
            if event.tgid not in self._reported and self.watched:
                self._consider(event.tgid, parent=None)
        elif isinstance(event, Exit):
            if event.pid == event.tgid:
                self._reported.discard(event.tgid)
        else:
            self._rescan()

    def _consider(self, pid: int, *, parent: int | None) -> None:
        ns = pid_ns_of(pid)
        if ns is None:
            return
        callback = self.watched.get(ns)
        if callback is None or in_tree_of(pid, self.exclude, parent=parent):
            return
        # Gone before the walk ended (so its ancestry could not be read): a
        # process that has ended needs no stopping, and nobody waits on it.
        if parent_of(pid) is None:
            return
        self._report(pid, callback)

    def _rescan(self) -> None:
        found = scan_pidns(set(self.watched), exclude_tree_of=self.exclude)
        live = {pid for pids in found.values() for pid in pids}
        self._reported &= live
        for ns, pids in found.items():
            callback = self.watched.get(ns)
            for pid in pids:
                if callback is not None and pid not in self._reported:
                    self._report(pid, callback)

    def _report(self, pid: int, callback: OnNew) -> None:
        self._reported.add(pid)
        try:
            result = callback(pid)
        except Exception:
            log.exception("exec watch callback failed for pid %d", pid)
            return
        if inspect.isawaitable(result):
            task: asyncio.Task[object] = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("exec watch callback failed", exc_info=task.exception())
