"""Process-events connector: parsing of recorded and built datagrams, dispatch, the watch's bookkeeping."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nri_zeropod import procevents as pe
from nri_zeropod.procevents import OVERRUN, Ack, Event, Exec, Exit, Fork

# Recorded on kernel 6.18 (x86_64) for `sh -c 'exit 3'` started by pid 22718:
# one event per datagram, 76 bytes each (nlmsghdr 16 + cn_msg 20 + proc_event 40).
REC_FORK = bytes.fromhex(
    "4c00000003000000332d0000000000000100000001000000332d0000000000002800000001000000"
    "010000006e385f3821030000be580000be580000bf580000bf5800000000000000000000"
)
REC_EXEC = bytes.fromhex(
    "4c000000030000000d3700000000000001000000010000000d3700000000000028000000020000000"
    "000000004f6623821030000bf580000bf58000000000000000000000000000000000000"
)
REC_EXIT = bytes.fromhex(
    "4c000000030000000e3700000000000001000000010000000e370000000000002800000000000080"
    "00000000a2676c3821030000bf580000bf5800000003000011000000be580000be580000"
)


def message(what: int, fields: bytes, *, idx: int = 1, val: int = 1, ack: int = 0, nl_type: int = 3) -> bytes:
    """One connector message as the kernel builds it (proc_event padded to its 40 bytes)."""
    event = struct.pack("=IIQ", what, 0, 123_456_789) + fields.ljust(24, b"\0")
    cn = struct.pack("=IIIIHH", idx, val, 9, ack, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), nl_type, 0, 9, 0) + cn


FORK = message(pe.PROC_EVENT_FORK, struct.pack("=iiii", 10, 10, 11, 11))
EXEC = message(pe.PROC_EVENT_EXEC, struct.pack("=ii", 11, 11))
EXIT = message(pe.PROC_EVENT_EXIT, struct.pack("=iiIIii", 11, 11, 256, 17, 10, 10))
COMM = message(0x200, struct.pack("=ii", 11, 11) + b"renamed\0")


def test_recorded_datagrams() -> None:
    assert list(pe.iter_events(REC_FORK)) == [Fork(22718, 22718, 22719, 22719, 3441214568558)]
    assert list(pe.iter_events(REC_EXEC)) == [Exec(22719, 22719, 3441214813700)]
    [ex] = pe.iter_events(REC_EXIT)
    assert ex == Exit(22719, 22719, 768, 17, 22718, 22718, 3441215432610)
    assert isinstance(ex, Exit) and os.waitstatus_to_exitcode(ex.exit_code) == 3


def test_built_messages() -> None:
    assert list(pe.iter_events(FORK)) == [Fork(10, 10, 11, 11, 123_456_789)]
    assert list(pe.iter_events(EXEC)) == [Exec(11, 11, 123_456_789)]
    assert list(pe.iter_events(EXIT)) == [Exit(11, 11, 256, 17, 10, 10, 123_456_789)]


def test_ack_carries_error_and_ack_number() -> None:
    assert list(pe.iter_events(message(pe.PROC_EVENT_NONE, struct.pack("=I", 0), ack=42))) == [Ack(0, 42)]
    assert list(pe.iter_events(message(pe.PROC_EVENT_NONE, struct.pack("=I", 22), ack=7))) == [Ack(22, 7)]


def test_several_messages_in_one_datagram() -> None:
    data = FORK + COMM + EXEC + EXIT
    assert [type(e) for e in pe.iter_events(data)] == [Fork, Exec, Exit]


def test_unaligned_message_lengths_are_padded_to_four() -> None:
    # A 6-byte proc_event body is legal on the wire; the next message starts 4-aligned.
    short = struct.pack("=IIIIHH", 1, 1, 0, 0, 16 + 8, 0) + struct.pack("=IIQ", 2, 0, 5) + struct.pack("=ii", 3, 3)
    odd = struct.pack("=IHHII", 16 + len(short) + 2, 3, 0, 0, 0) + short + b"\0\0"
    data = odd + b"\0\0" + EXEC
    assert list(pe.iter_events(data)) == [Exec(3, 3, 5), Exec(11, 11, 123_456_789)]


def test_unknown_kinds_other_connectors_and_message_types_are_skipped() -> None:
    uid = message(0x4, struct.pack("=iiII", 11, 11, 0, 1000))
    future = message(0x400, b"\xff" * 24)
    cifs = message(pe.PROC_EVENT_EXEC, struct.pack("=ii", 1, 1), idx=2)
    noop = message(pe.PROC_EVENT_EXEC, struct.pack("=ii", 1, 1), nl_type=1)
    assert list(pe.iter_events(COMM + uid + future + cifs + noop + EXEC)) == [Exec(11, 11, 123_456_789)]


def test_truncated_input_raises_parse_error_after_the_good_messages() -> None:
    data = FORK + EXEC
    for cut in range(len(data)):
        got: list[object] = []
        try:
            got.extend(pe.iter_events(data[:cut]))
        except pe.ParseError:
            pass
        assert got in ([], [Fork(10, 10, 11, 11, 123_456_789)]), cut


def test_cn_msg_longer_than_its_netlink_message() -> None:
    lying = bytearray(EXEC)
    struct.pack_into("=H", lying, 16 + 16, 200)  # cn_msg.len
    with pytest.raises(pe.ParseError, match="truncated"):
        list(pe.iter_events(bytes(lying)))


def test_known_kind_with_a_short_body() -> None:
    short_fork = struct.pack("=IIIIHH", 1, 1, 0, 0, 16 + 8, 0) + struct.pack("=IIQ", 1, 0, 0) + b"\0" * 8
    data = struct.pack("=IHHII", 16 + len(short_fork), 3, 0, 0, 0) + short_fork
    with pytest.raises(pe.ParseError, match="0x1 truncated"):
        list(pe.iter_events(data))


@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        list(pe.iter_events(data))
    except pe.ParseError:
        pass


def test_control_messages() -> None:
    legacy = pe.control_message(pe.PROC_CN_MCAST_LISTEN, ack=5)
    assert len(legacy) == 16 + 20 + 4
    assert struct.unpack("=IHHII", legacy[:16]) == (40, 3, 0, 0, 0)
    assert struct.unpack("=IIIIHH", legacy[16:36]) == (1, 1, 0, 5, 4, 0)
    assert struct.unpack("=I", legacy[36:]) == (1,)
    filtered = pe.control_message(pe.PROC_CN_MCAST_LISTEN, ack=5, events=pe.WANTED)
    assert struct.unpack("=IIIIHH", filtered[16:36])[4] == 8
    assert struct.unpack("=II", filtered[36:]) == (1, 0x80000003)


# -- dispatch -------------------------------------------------------------------------


def collect(events: pe.ProcEvents) -> list[Event]:
    got: list[Event] = []
    events.subscribe(got.append)
    return got


def test_feed_dispatches_events_but_not_acks() -> None:
    events = pe.ProcEvents()
    got = collect(events)
    events.feed(FORK + message(pe.PROC_EVENT_NONE, b"", ack=3) + EXEC)
    assert got == [Fork(10, 10, 11, 11, 123_456_789), Exec(11, 11, 123_456_789)]


def test_feed_of_a_bad_datagram_signals_overrun_after_the_good_events(caplog: pytest.LogCaptureFixture) -> None:
    events = pe.ProcEvents()
    got = collect(events)
    events.feed(FORK + EXEC[:50])
    assert got == [Fork(10, 10, 11, 11, 123_456_789), OVERRUN]
    assert events.overruns == 1
    assert "process events lost" in caplog.text


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    events = pe.ProcEvents()

    def boom(_: Event) -> None:
        raise RuntimeError("boom")

    events.subscribe(boom)
    got = collect(events)
    events.feed(EXEC)
    assert got == [Exec(11, 11, 123_456_789)]
    assert "subscriber failed" in caplog.text


def test_unsubscribe() -> None:
    events = pe.ProcEvents()
    got: list[Event] = []
    unsubscribe = events.subscribe(got.append)
    unsubscribe()
    unsubscribe()  # twice is harmless
    events.feed(EXEC)
    assert got == []


# -- process trees (a prepared parent map, so no /proc reads) -------------------------


def test_in_tree_of_walks_parents() -> None:
    parents: dict[int, int | None] = {50: 40, 40: 30, 30: 1, 1: 0, 60: 1, 70: None}
    assert pe.in_tree_of(50, {30}, cache=dict(parents))
    assert pe.in_tree_of(30, {30}, cache=dict(parents))  # the root itself
    assert not pe.in_tree_of(60, {30}, cache=dict(parents))
    assert not pe.in_tree_of(70, {30}, cache=dict(parents))  # vanished mid-walk
    assert not pe.in_tree_of(50, (), cache=dict(parents))
    # A FORK event's parent is used for the first step, whatever the map says.
    assert pe.in_tree_of(99, {30}, parent=40, cache=dict(parents))


def test_in_tree_of_falls_back_to_the_present_parent_when_the_events_parent_is_gone() -> None:
    # 40 forked 99 and exited before the event was read; 99 now belongs to 30.
    parents: dict[int, int | None] = {99: 30, 40: None, 30: 1, 1: 0, 98: 1}
    assert pe.in_tree_of(99, {30}, parent=40, cache=dict(parents))
    assert not pe.in_tree_of(98, {30}, parent=40, cache=dict(parents))  # inherited by someone else
    assert not pe.in_tree_of(97, {30}, parent=40, cache=dict(parents))  # itself gone too
    # A parent that is alive decides alone, even if the process moved since.
    assert not pe.in_tree_of(99, {30}, parent=1, cache=dict(parents))


# A subreaper forks a middle process that forks a sleeper and exits at once,
# like CRIU restoring an app under the keeper. Prints: middle sleeper.
ORPHAN = r"""
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
r, w = os.pipe()
middle = os.fork()
if middle == 0:
    sleeper = os.fork()
    if sleeper == 0:
        time.sleep(60)
        os._exit(0)
    os.write(w, b"%d" % sleeper)
    os._exit(0)
os.waitpid(middle, 0)
print(middle, os.read(r, 32).decode(), flush=True)
sys.stdin.read()
"""


def test_in_tree_of_sees_a_real_orphan_inherited_by_a_root() -> None:
    p = subprocess.Popen([sys.executable, "-c", ORPHAN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    middle, sleeper = map(int, p.stdout.readline().split())
    try:
        assert pe.parent_of(middle) is None and pe.parent_of(sleeper) == p.pid
        assert pe.in_tree_of(sleeper, {p.pid}, parent=middle)
        assert not pe.in_tree_of(sleeper, {p.pid + 10**7}, parent=middle)
    finally:
        os.kill(sleeper, signal.SIGKILL)
        p.communicate("")


def test_in_tree_of_gives_up_on_a_loop() -> None:
    assert not pe.in_tree_of(5, {9}, cache={5: 6, 6: 5})


def test_parent_of_self_and_of_a_missing_pid() -> None:
    assert pe.parent_of(os.getpid()) == os.getppid()
    assert pe.parent_of(2**22 + 1) is None  # above the largest pid_max
    assert pe.pid_ns_of(2**22 + 1) is None


def test_stat_fields_past_a_command_name_with_parentheses_and_spaces(tmp_path: Path) -> None:
    prog = tmp_path / "a) S 1 (b"
    prog.write_bytes(open("/bin/sleep", "rb").read())
    prog.chmod(0o755)
    p = subprocess.Popen([str(prog), "30"])
    try:
        fields = pe.stat_fields(p.pid)
        assert fields[0] in ("R", "S")  # field 3, the state
        assert int(fields[1]) == os.getpid()  # field 4, the parent
        assert int(fields[19]) >= int(pe.stat_fields(os.getpid())[19])  # field 22, started after us
    finally:
        p.kill()
        p.wait()
    with pytest.raises(OSError):
        pe.stat_fields(2**22 + 1)


# -- the watch, fed by hand ------------------------------------------------------------


@pytest.fixture
def child() -> Iterator[int]:
    """A live process in our own pid namespace (no root needed to stat its ns link)."""
    p = subprocess.Popen(["sleep", "60"])
    yield p.pid
    p.kill()
    p.wait()


def fork(parent: int, child: int, *, thread: int | None = None) -> bytes:
    return message(pe.PROC_EVENT_FORK, struct.pack("=iiii", parent, parent, thread or child, child))


def exec_(pid: int) -> bytes:
    return message(pe.PROC_EVENT_EXEC, struct.pack("=ii", pid, pid))


def exit_(pid: int) -> bytes:
    return message(pe.PROC_EVENT_EXIT, struct.pack("=iiIIii", pid, pid, 0, 17, 1, 1))


ME = os.getpid()


def test_watch_reports_a_process_once_and_forgets_it_at_exit(child: int) -> None:
    events = pe.ProcEvents()
    seen: list[int] = []
    ns = pe.pid_ns_of(child)
    assert ns is not None
    pe.ExecWatch(events, {ns: seen.append})
    events.feed(fork(ME, child))
    events.feed(exec_(child))  # same process: already reported
    assert seen == [child]
    events.feed(exit_(child))
    events.feed(exec_(child))  # a new incarnation of the pid, FORK missed
    assert seen == [child, child]


def test_watch_ignores_threads_other_namespaces_and_excluded_trees(child: int) -> None:
    events = pe.ProcEvents()
    seen: list[int] = []
    ns = pe.pid_ns_of(child)
    assert ns is not None
    watched: dict[int, pe.OnNew] = {ns + 1: seen.append}
    exclude: set[int] = {ME}
    pe.ExecWatch(events, watched, exclude=exclude)
    events.feed(fork(ME, child))
    assert seen == []  # not a watched namespace
    watched[ns] = seen.append  # the caller's dict is read live
    events.feed(fork(ME, child))
    assert seen == []  # a child of an excluded pid
    exclude.clear()
    events.feed(fork(child, child, thread=child + 1))  # a thread
    assert seen == []
    events.feed(fork(ME, child))
    assert seen == [child]


def test_watch_skips_a_process_that_ends_while_its_ancestry_is_read(
    child: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Alive when its namespace was read, gone before its parents were: nothing
    # to stop, so nothing to report (it used to count as outside every tree).
    ns = pe.pid_ns_of(child)
    assert ns is not None
    gone = subprocess.Popen(["true"])
    gone.wait()
    monkeypatch.setattr(pe, "pid_ns_of", lambda pid: ns)
    events = pe.ProcEvents()
    seen: list[int] = []
    pe.ExecWatch(events, {ns: seen.append}, exclude={ME})
    events.feed(fork(gone.pid + 10**6, gone.pid))  # its parent is gone too
    assert seen == []
    events.feed(fork(1, child))  # a live one outside the excluded trees still counts
    assert seen == [child]


def test_watch_runs_awaitable_callbacks_as_tasks_and_logs_failures(child: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    ns = pe.pid_ns_of(child)
    assert ns is not None
    done: list[int] = []

    async def on_new(pid: int) -> None:
        await asyncio.sleep(0)
        done.append(pid)
        raise RuntimeError("restore failed")

    async def main() -> None:
        events = pe.ProcEvents()
        pe.ExecWatch(events, {ns: on_new})
        events.feed(fork(ME, child))
        assert done == []  # not awaited inside the reader callback
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert done == [child]
    assert "exec watch callback failed" in caplog.text


def test_watch_survives_a_raising_plain_callback(child: int, caplog: pytest.LogCaptureFixture) -> None:
    events = pe.ProcEvents()
    ns = pe.pid_ns_of(child)
    assert ns is not None

    def on_new(pid: int) -> None:
        raise RuntimeError("nope")

    watch = pe.ExecWatch(events, {ns: on_new})
    events.feed(fork(ME, child))
    assert "exec watch callback failed" in caplog.text
    watch.close()
    caplog.clear()
    events.feed(exec_(child + 7))
    assert caplog.text == ""
