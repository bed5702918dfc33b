"""Issue #6 "Bad input": fuzzed and truncated NRI traffic against the real agent plugin.

Each example runs the agent's :class:`AgentPlugin` exactly as ``daemon.Agent``
builds it (settings with every path in a fresh temporary directory, a Manager,
Scalers, the toolbox check failing because there is no toolbox) on its own
event loop, connected over a real unix socket to the fake runtime of
``tests/unit/nri``. After registration, Configure and Synchronize, the
example's bytes go out on the trunk, and then:

- an independent model of the framing (:func:`analyse`, written with
  ``struct`` like the fake runtime, not with the library) says what must
  happen: the trunk stays usable (the mux stream and the Plugin channel end on
  a message boundary), it must end (a mux frame over the limit), or it cannot
  be used any more (a frame is left unfinished);
- usable: a well-formed CreateContainer for an unmanaged pod must get an OK,
  empty reply, every request with a fresh stream ID must have been answered,
  and ``stop()`` must end ``run()`` normally;
- unusable: the runtime closes the socket and ``run()`` must raise
  ConnectionLost; must end: ``run()`` raises ConnectionLost by itself;
- always: nothing but ConnectionLost (or a protocol error) comes out of
  ``run()``, the example finishes within 5 s, the loop reports no exception
  (its exception handler, plus every task checked for an exception nobody
  retrieved), the transport's last line of defence ("serving ... failed")
  never fires, the plugin's frames obey Go's framing rules, and no file
  outside the temporary directory is created, written, renamed, chmod-ed or
  removed, and no process is started (an audit hook watches, and blocks such
  an operation so the host stays untouched).

An operation outside the temporary directory is collected rather than failing
the example at once, so that every example still runs; the test fails at the
end listing each distinct one with the smallest input that caused it.
Handler exceptions the library answered "as if it had done nothing" (fail
open) are collected too and printed, but are not failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nri_zeropod.agent import podconfig
from nri_zeropod.agent.daemon import Agent
from nri_zeropod.agent.settings import AgentSettings
from nri_zeropod.nri import ConnectionLost, api
from nri_zeropod.nri.errors import ProtocolError
from nri_zeropod.nri.proto import ttrpc_pb2
from tests.unit.nri.fake_runtime import MUX, PLUGIN, TTRPC, FakeRuntime, FakeRuntimeServer, Reply
from tests.unit.nri.harness import Env

TTRPC_MAX = 4 << 20  # ttrpc data limit
MUX_MAX = TTRPC.size + TTRPC_MAX  # a mux frame announcing more breaks the trunk
U32 = 2**32 - 1
FIRST_SID = 5  # the handshake used streams 1 (Configure) and 3 (Synchronize) on conn 1
HANDSHAKE_LAST_SID = FIRST_SID - 2
EXAMPLE_TIMEOUT = 5.0
REPLY_WAIT = 3.0  # for the replies to earlier requests, after the probe's (handler budget is 1.6 s)

METHODS = [
    "Configure", "Synchronize", "Shutdown", "CreateContainer", "UpdateContainer", "StopContainer", "StateChange",
]
OTHER_METHODS = ["RunPodSandbox", "PostCreateContainer", "UpdatePodSandbox", "ValidateContainerAdjustment", "", "x"]
REQUEST_TYPE: dict[str, Any] = {
    "Configure": api.ConfigureRequest,
    "Synchronize": api.SynchronizeRequest,
    "Shutdown": api.Empty,
    "CreateContainer": api.CreateContainerRequest,
    "UpdateContainer": api.UpdateContainerRequest,
    "StopContainer": api.StopContainerRequest,
    "StateChange": api.StateChangeEvent,
}


# ---------------------------------------------------------------------------
# Sandbox guard: no file operation outside the example's directory, no process.
# ---------------------------------------------------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# audit event -> (indexes of the path arguments, index of the dir_fd argument or None)
_PATH_EVENTS: dict[str, tuple[tuple[int, ...], int | None]] = {
    "os.remove": ((0,), 1),
    "os.rmdir": ((0,), 1),
    "os.mkdir": ((0,), 2),
    "os.chmod": ((0,), 2),
    "os.chown": ((0,), 3),
    "os.rename": ((0, 1), None),  # also os.replace
    "os.link": ((0, 1), None),
    "os.symlink": ((1,), 2),
    "os.truncate": ((0,), None),
    "os.utime": ((0,), 3),
    "os.mkfifo": ((0,), 2),
    "os.mknod": ((0,), 3),
    "os.setxattr": ((0,), None),
    "os.removexattr": ((0,), None),
    "shutil.rmtree": ((0,), 1),
    "shutil.copyfile": ((1,), None),
    "shutil.move": ((0, 1), None),
}
_SPAWN_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty"}


class _Guard:
    root: str | None = None  # realpath of the example's directory while an example runs
    seen: list[str] = []

    @classmethod
    def where(cls, path: Any, dir_fd: Any = None) -> str | None:
        if isinstance(path, int) or path is None:
            return None  # an fd: opened (and checked) earlier
        p = os.fsdecode(path)
        if not os.path.isabs(p):
            base = os.getcwd()
            if isinstance(dir_fd, int):
                try:
                    base = os.readlink(f"/proc/self/fd/{dir_fd}")
                except OSError:
                    pass
            p = os.path.join(base, p)
        head, tail = os.path.split(p)
        return os.path.realpath(p) if tail in ("", ".", "..") else os.path.join(os.path.realpath(head), tail)

    @classmethod
    def inside(cls, p: str) -> bool:
        assert cls.root is not None
        return p == cls.root or p.startswith(cls.root + "/") or "/__pycache__/" in p

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.root is None:
            return
        paths: list[str] = []
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(flags, int) and flags & _WRITE_FLAGS) or (
                isinstance(mode, str) and any(c in mode for c in "wax+")
            )
            if writing:
                paths = [p for p in [cls.where(path)] if p]
        elif event in _PATH_EVENTS:
            idxs, fd_idx = _PATH_EVENTS[event]
            dir_fd = args[fd_idx] if fd_idx is not None and fd_idx < len(args) else None
            paths = [p for i in idxs if i < len(args) and (p := cls.where(args[i], dir_fd))]
        elif event == "socket.bind" and isinstance(args[1], (str, bytes)) and args[1]:
            paths = [p for p in [cls.where(args[1])] if p]
        elif event in _SPAWN_EVENTS:
            cls.seen.append(f"{event} {args!r:.200}")
            raise PermissionError(errno.EPERM, "blocked by the NRI fuzz test: no processes")
        for p in paths:
            if not cls.inside(p):
                cls.seen.append(f"{event} {p}")
                raise PermissionError(errno.EACCES, "blocked by the NRI fuzz test: outside its directory", p)

    @classmethod
    @contextlib.contextmanager
    def active(cls, root: str) -> Iterator[list[str]]:
        cls.root, cls.seen = os.path.realpath(root), []
        try:
            yield cls.seen
        finally:
            cls.root = None


_hook_installed = False


def install_guard() -> None:
    global _hook_installed
    if not _hook_installed:  # audit hooks cannot be removed: one, inert outside examples
        sys.addaudithook(_Guard.hook)
        _hook_installed = True


# ---------------------------------------------------------------------------
# Building frames (with struct, independently of the library's framing code).
# ---------------------------------------------------------------------------


def mux_frame(conn: int, payload: bytes, length: int | None = None) -> bytes:
    return MUX.pack(conn, len(payload) if length is None else length) + payload


def ttrpc_frame(sid: int, payload: bytes, *, mtype: int = 1, flags: int = 0, length: int | None = None) -> bytes:
    return TTRPC.pack(len(payload) if length is None else length, sid, mtype, flags) + payload


def envelope(method: str, payload: bytes, *, service: str = PLUGIN, timeout_nano: int = 2_000_000_000) -> bytes:
    return ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=timeout_nano).SerializeToString()


def go_frames(conn: int, message: bytes) -> bytes:
    """One whole ttrpc message framed as Go does: one frame, or 4096 bytes plus the rest."""
    parts = [message[:4096], message[4096:]] if len(message) > 4096 else [message]
    return b"".join(mux_frame(conn, p) for p in parts)


def request(sid: int, method: str, msg: Any, **kw: Any) -> bytes:
    """A whole, well-framed Plugin request on conn 1."""
    payload = msg if isinstance(msg, bytes) else msg.SerializeToString()
    return go_frames(1, ttrpc_frame(sid, envelope(method, payload, **kw)))


# ---------------------------------------------------------------------------
# The model: what the plugin must do with a byte stream.
# ---------------------------------------------------------------------------


@dataclass
class Expect:
    fatal: bool = False  # a mux frame over the limit: the plugin must end the trunk
    usable: bool = True  # mux stream and conn 1 end on a message boundary
    fresh: list[int] = field(default_factory=list)  # conn 1 requests with a new, odd stream ID: each owes a reply
    requests: dict[int, int] = field(default_factory=dict)  # stream ID -> conn 1 request frames (replies allowed)
    max_sid: int = HANDSHAKE_LAST_SID  # highest odd stream ID in any conn 1 frame header

    @property
    def probe_sid(self) -> int:
        return min(self.max_sid + 2, U32 if U32 % 2 else U32 - 1)

    @property
    def probe_sid_reused(self) -> bool:
        return self.max_sid + 2 > U32


def analyse(wire: bytes) -> Expect:
    exp = Expect()
    channels: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
    pos = 0
    while len(wire) - pos >= MUX.size:
        conn, length = MUX.unpack_from(wire, pos)
        if length > MUX_MAX:
            exp.fatal, exp.usable = True, False
            break
        if len(wire) - pos - MUX.size < length:
            break
        if conn in channels:
            channels[conn] += wire[pos + MUX.size : pos + MUX.size + length]
        pos += MUX.size + length
    if pos != len(wire):
        exp.usable = False
    # conn 1: the plugin serves; walk its ttrpc stream.
    data, i, last = bytes(channels[1]), 0, HANDSHAKE_LAST_SID
    while len(data) - i >= TTRPC.size:
        length, sid, mtype, _flags = TTRPC.unpack_from(data, i)
        if sid % 2:
            exp.max_sid = max(exp.max_sid, sid)
        i += TTRPC.size
        complete = len(data) - i >= length
        # A request over 4 MiB is answered (RESOURCE_EXHAUSTED) on its header, then its data is skipped.
        if mtype == 1 and (complete or length > TTRPC_MAX):
            exp.requests[sid] = exp.requests.get(sid, 0) + 1
            if sid % 2 and sid > last:
                exp.fresh.append(sid)
                last = sid
        if not complete:
            exp.usable = False
            i = len(data)
            break
        i += length
    if i != len(data):
        exp.usable = False
    return exp


# ---------------------------------------------------------------------------
# The runtime side and one example's session.
# ---------------------------------------------------------------------------


class FuzzRuntime(FakeRuntime):
    """The fake runtime, keeping every reply (also to streams it did not open through call())."""

    replies: dict[int, list[Reply]]

    def _on_reply(self, sid: int, reply: Reply) -> None:
        self.replies.setdefault(sid, []).append(reply)
        future = self._pending.pop(sid, None)
        if future is not None and not future.done():
            future.set_result(reply)


class FuzzServer(FakeRuntimeServer):
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        runtime = FuzzRuntime(reader, writer)
        runtime.replies = {}
        runtime.start()
        await self.connections.put(runtime)


@dataclass
class Case:
    """One example: bytes for the trunk after the handshake, and how to run the agent."""

    wire: bytes
    label: str = ""  # what the bytes are, for reports
    toolbox_ok: bool = False  # True: opted-in pods are managed (the toolbox check is overridden)
    runtime_version: str = "2.1.9+unknown"
    piece: int | None = None  # write the wire in pieces of this many bytes, yielding in between
    prepare: Callable[[Path], None] | None = None  # sets up the example's directory before the agent starts
    inspect: Callable[[Path], None] | None = None  # looks at the example's directory after the session


@dataclass
class Outcome:
    expect: Expect
    failures: list[str]  # crashes, hangs, wrong answers
    outside: list[str]  # blocked operations outside the example's directory
    fail_open: list[str]  # handler exceptions answered as if nothing happened (informational)
    replies: dict[int, list[Reply]]
    tmp: str


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last_defence: list[str] = []
        self.fail_open: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.exc_info:
            return
        exc = record.exc_info[1]
        text = f"{record.getMessage()[:160]} -> {type(exc).__name__}: {str(exc)[:160]}"
        if record.msg.startswith("conn %d stream %d: serving %s failed"):
            self.last_defence.append(text)
        else:
            self.fail_open.append(text)


def agent_settings(tmp: Path) -> AgentSettings:
    return AgentSettings(
        nri_socket=tmp / "nri.sock",
        containerd_socket=tmp / "containerd.sock",
        containerd_state=tmp / "containerd",
        state_dir=tmp / "state",
        toolbox=tmp / "toolbox",  # missing: the toolbox check fails, as on a node without it
        admin_socket=tmp / "agent.sock",
        bpf_pins=tmp / "bpf",
        bpf_object=tmp / "steer.bpf.o",  # missing too
        metrics_addr="",
    )


def probe_request() -> Any:
    pod = api.PodSandbox(id="probe-pod", name="probe", namespace="default", uid="probe-uid")
    ctr = api.Container(id="probe-ctr", name="app", pod_sandbox_id="probe-pod", args=["/bin/app"])
    return api.CreateContainerRequest(pod=pod, container=ctr)


async def _session(case: Case, tmp: Path, out: Outcome) -> None:
    fail = out.failures.append
    agent = Agent(agent_settings(tmp))
    agent.store.ensure()
    agent.settings.bpf_pins.mkdir()  # exists on a node once a pod has been steered
    plugin = agent.plugin
    plugin.toolbox_ok = case.toolbox_ok
    server = FuzzServer()
    await server.start(str(tmp / "nri.sock"))
    rt: FuzzRuntime | None = None
    task: asyncio.Task[None] | None = None
    phase = "handshake"
    try:
        async with asyncio.timeout(EXAMPLE_TIMEOUT):
            rt_, task, _ = await Env(server, str(tmp / "nri.sock")).connect(
                plugin, runtime_version=case.runtime_version
            )
            rt = rt_  # type: ignore[assignment]
            assert isinstance(rt, FuzzRuntime) and rt._next_sid == FIRST_SID
            rt.replies.clear()  # the handshake's
            phase = "sending the input"
            exp = out.expect
            piece = max(case.piece or len(case.wire), -(-len(case.wire) // 64), 1)  # at most 64 writes
            try:
                for i in range(0, len(case.wire), piece):
                    rt.writer.write(case.wire[i : i + piece])
                    await rt.writer.drain()
                    if case.piece:
                        await asyncio.sleep(0)
            except ConnectionError as e:
                if not exp.fatal:
                    fail(f"the plugin closed the trunk while the input was sent: {e!r}")
            if exp.fatal:
                phase = "waiting for the plugin to end a corrupt trunk"
                await asyncio.wait({task})
            elif exp.usable:
                phase = "probe: CreateContainer for an unmanaged pod"
                rt._next_sid = exp.probe_sid
                reply = await rt.call("CreateContainer", probe_request(), timeout=EXAMPLE_TIMEOUT)
                if exp.probe_sid_reused:
                    pass  # no stream ID left: any reply on that stream shows the plugin is alive
                elif reply.code != 0:
                    fail(f"probe answered code {reply.code}: {reply.message!r}")
                elif api.CreateContainerResponse.FromString(reply.payload) != api.CreateContainerResponse():
                    fail(f"probe answered a non-empty adjustment: {reply.payload!r}")
                phase = "waiting for replies to the input's requests"
                deadline = time.monotonic() + REPLY_WAIT
                while any(sid not in rt.replies for sid in exp.fresh) and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                missing = [sid for sid in exp.fresh if sid not in rt.replies]
                if missing:
                    fail(f"requests on fresh streams {missing[:8]} never answered")
                phase = "stop()"
                if task.done():
                    fail(f"run() ended on usable input: {task.exception()!r}")
                plugin.stop()
                await asyncio.wait({task})
                if not task.cancelled() and task.exception() is not None:
                    fail(f"run() raised after stop(): {task.exception()!r}")
            else:
                phase = "runtime closed an unusable trunk"
                rt.writer.write_eof()
                await asyncio.wait({task})
            if not exp.usable:
                error = None if task.cancelled() else task.exception()
                if not isinstance(error, ConnectionLost):
                    fail(f"run() ended with {error!r}, expected ConnectionLost")
            phase = "waiting for the plugin to close its end"
            if rt._reader_task is not None:
                await asyncio.wait({rt._reader_task})  # every reply read before they are counted
            for sid, replies in rt.replies.items():
                if sid != exp.probe_sid and len(replies) > exp.requests.get(sid, 0):
                    fail(f"{len(replies)} replies on stream {sid}, which carried {exp.requests.get(sid, 0)} requests")
            if rt.violations:
                fail(f"plugin framing: {rt.violations}")
    except TimeoutError:
        fail(f"HANG: nothing happened for {EXAMPLE_TIMEOUT:g}s while {phase}")
    except Exception as e:  # noqa: BLE001 - reported with the input, like every other failure
        fail(f"while {phase}: {type(e).__name__}: {e}")
    finally:
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None and not isinstance(error, (ConnectionLost, ProtocolError)):
                fail(f"CRASH: run() raised {error!r}")
        for t in list(plugin.tasks):
            t.cancel()
        if plugin.tasks:
            await asyncio.wait(set(plugin.tasks), timeout=1)
        await plugin.rewriter.close()
        if rt is not None:
            out.replies = rt.replies
            rt.writer.close()
            await asyncio.wait({rt._reader_task} if rt._reader_task else set(), timeout=1)
        await server.stop()


def drive(case: Case) -> Outcome:
    """Run one example on a fresh loop and directory; every check's result is in the outcome."""
    install_guard()
    loop_errors: list[str] = []
    tasks: list[asyncio.Task[Any]] = []
    errors = _Errors()
    logger = logging.getLogger("nri_zeropod")
    logger.addHandler(errors)
    with tempfile.TemporaryDirectory(prefix="nzf-", dir="/tmp") as tmpdir:  # short: sun_path is 108 bytes
        tmp = Path(tmpdir)
        if case.prepare is not None:
            case.prepare(tmp)
        out = Outcome(analyse(case.wire), [], [], [], {}, tmpdir)

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            t = asyncio.Task(coro, loop=loop, **kw)
            tasks.append(t)
            return t

        def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")

        try:
            with _Guard.active(tmpdir) as outside, asyncio.Runner() as runner:
                loop = runner.get_loop()
                loop.set_exception_handler(on_error)
                loop.set_task_factory(factory)
                runner.run(_session(case, tmp, out))
                for t in tasks:  # an exception nobody retrieved, reported now rather than at GC
                    if t.done() and not t.cancelled() and getattr(t, "_log_traceback", False):
                        loop_errors.append(f"task {t.get_name()} exception never retrieved: {t.exception()!r}")
            if case.inspect is not None:
                case.inspect(tmp)
        finally:
            logger.removeHandler(errors)
        out.outside = [o.replace(os.path.realpath(tmpdir), "<tmp>") for o in outside]
    out.failures += [f"loop exception handler: {e}" for e in loop_errors]
    out.failures += [f"transport's last line of defence: {e}" for e in errors.last_defence]
    out.fail_open = errors.fail_open
    return out


# ---------------------------------------------------------------------------
# Findings that do not stop the exploration, reported at the end of each test.
# ---------------------------------------------------------------------------


@dataclass
class Findings:
    examples: int = 0
    outside: dict[str, Case] = field(default_factory=dict)  # operation -> smallest input
    fail_open: dict[str, Case] = field(default_factory=dict)  # handler error -> smallest input
    outcomes: dict[str, int] = field(default_factory=dict)

    def keep(self, book: dict[str, Case], key: str, case: Case) -> None:
        if key not in book or len(case.wire) < len(book[key].wire):
            book[key] = case

    def report(self) -> str:
        lines = [f"{self.examples} examples; outcomes {self.outcomes}"]
        for key, case in sorted(self.fail_open.items()):
            lines.append(f"  fail-open handler error: {key}\n    input {case.label[:300]}: {shown(case.wire)}")
        return "\n".join(lines)


FINDINGS = Findings()


def shown(wire: bytes, limit: int = 1200) -> str:
    return wire[: limit // 2].hex() + (f"... ({len(wire)} bytes)" if len(wire) > limit // 2 else "")


def check(case: Case) -> Outcome:
    """Drive one example; raise on a crash, hang or wrong answer, collect the rest in FINDINGS."""
    out = drive(case)
    FINDINGS.examples += 1
    kind = "fatal" if out.expect.fatal else "usable" if out.expect.usable else "unusable"
    FINDINGS.outcomes[kind] = FINDINGS.outcomes.get(kind, 0) + 1
    for op in dict.fromkeys(out.outside):
        FINDINGS.keep(FINDINGS.outside, op, case)
    for err in dict.fromkeys(out.fail_open):
        FINDINGS.keep(FINDINGS.fail_open, err.split(" -> ", 1)[-1][:120], case)
    if out.failures:
        raise AssertionError(
            f"{case.label} (toolbox_ok={case.toolbox_ok}, {len(case.wire)} bytes: {shown(case.wire)}):\n  "
            + "\n  ".join(out.failures)
        )
    return out


@pytest.fixture
def findings() -> Iterator[Findings]:
    FINDINGS.__init__()  # type: ignore[misc]
    yield FINDINGS
    print("\n" + FINDINGS.report())


def assert_nothing_outside(f: Findings) -> None:
    assert not f.outside, "operations outside the temporary directory (blocked by the guard):\n" + "\n".join(
        f"  {op}\n    smallest input ({case.label[:400]}): {shown(case.wire)}" for op, case in sorted(f.outside.items())
    )


# ---------------------------------------------------------------------------
# Strategies.
# ---------------------------------------------------------------------------

FUZZ = settings(
    derandomize=True,  # the same examples on every run
    database=None,
    deadline=None,  # each example has its own 5 s bound
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

u32 = st.integers(0, U32)
stream_ids = st.one_of(
    st.integers(0, 40).map(lambda k: FIRST_SID + k),
    st.integers(0, 8),
    st.sampled_from([U32, U32 - 1, 2**31 - 1, 2**31]),
    u32,
)
conn_ids = st.one_of(st.sampled_from([1, 2]), st.sampled_from([0, 3, 4, 255, 2**31, U32]), u32)

BAD_IDS = [
    "", " ", "/", "//", ".", "..", "../x", "../..", "../../..", "../../../../../etc", "/etc", "/etc/passwd",
    "/tmp", "a/b", "a/../..", ".hidden", "-", "x" * 300, "\x00", "a\x00b", "id\nwith\nnewlines", "ü-ñ-✓",
    "%s%n%x", "c0ffee", "pod-web",
]
ids = st.one_of(st.sampled_from(BAD_IDS), st.text(max_size=24))
names = st.one_of(st.sampled_from(["app", "", "APP", "a" * 300, "x/y", "..", "\x00", "app\n", "sidecar"]),
                  st.text(max_size=16))
pids = st.one_of(st.sampled_from([0, 1, U32]), u32)
ANN_KEYS = [podconfig.PREFIX + k for k in (podconfig.ENABLED, *podconfig.ALIASED)] + [
    podconfig.ZEROPOD_PREFIX + k for k in podconfig.ALIASED
]
ann_values = st.one_of(
    st.sampled_from([
        "true", "TRUE", " yes ", "on", "false", "0", "1", "", "maybe", "30s", "1h30m", "500ms", "1.5h", ".5s",
        "5", "-1s", "9" * 400 + "h", "1e9h", "8760h1ns", "app", "app,sidecar", ",,", "APP", "app=8080",
        "app=80,81;sidecar=9090", "app=0", "app=65536", "app=", "=80", "app=80;app=81", ";", "app=٨٠",
        "app=99999999999999999999999",
    ]),
    st.text(max_size=40),
    st.sampled_from([4096, 4097, 10_000, 30_000]).map(lambda n: "x" * n),  # huge values
)
annotation_maps = st.dictionaries(st.one_of(st.sampled_from(ANN_KEYS), st.text(max_size=20)), ann_values, max_size=5)
namespaces = st.lists(
    st.builds(
        lambda t, p: api.LinuxNamespace(type=t, path=p),
        st.one_of(st.sampled_from(["network", "pid", "ipc", "uts", "mount", ""]), st.text(max_size=8)),
        st.one_of(st.sampled_from(["", "/proc/0/ns/net", "/var/run/netns/x", "../../x", "/"]), st.text(max_size=20)),
    ),
    max_size=3,
)


@st.composite
def pods(draw: Any) -> Any:
    pod = api.PodSandbox(id=draw(ids), name=draw(names), namespace=draw(names), uid=draw(ids), pid=draw(pids))
    enabled = {podconfig.PREFIX + podconfig.ENABLED: "true"} if draw(st.booleans()) else {}
    pod.annotations.update({**enabled, **draw(annotation_maps)})
    linux = draw(st.sampled_from(["none", "empty", "namespaces"]))
    if linux == "empty":
        pod.linux.SetInParent()
    elif linux == "namespaces":
        pod.linux.namespaces.extend(draw(namespaces))
    return pod


@st.composite
def containers(draw: Any, pod_ids: list[str] | None = None) -> Any:
    pod_id = draw(st.sampled_from(pod_ids)) if pod_ids and draw(st.booleans()) else draw(ids)
    ctr = api.Container(
        id=draw(ids), name=draw(names), pod_sandbox_id=pod_id, pid=draw(pids),
        args=draw(st.lists(st.one_of(st.sampled_from(["/bin/app", "/.zeropod/bin/zeropod-init", ""]),
                                     st.text(max_size=10)), max_size=3)),
        state=draw(st.integers(0, 5) | st.integers(-(2**31), 2**31 - 1)),
    )
    ctr.annotations.update(draw(annotation_maps))
    if draw(st.booleans()):
        ctr.linux.namespaces.extend(draw(namespaces))
    return ctr


EVENTS = st.one_of(
    st.sampled_from(list(api.Event)), st.sampled_from(list(api.Event)), st.sampled_from(list(api.Event)),
    st.sampled_from([0, 15, 99, -1]), st.integers(-(2**31), 2**31 - 1),
)


@st.composite
def messages(draw: Any, method: str) -> Any:
    """A well-formed request message for ``method``, with semantically bad content."""
    if method == "Configure":
        return api.ConfigureRequest(
            config=draw(st.text(max_size=20)),
            runtime_name=draw(st.sampled_from(["containerd", "cri-o", ""]) | st.text(max_size=10)),
            runtime_version=draw(st.sampled_from(["2.1.9", "2.2.0", "v9.99", "", "x"]) | st.text(max_size=10)),
            registration_timeout=draw(st.sampled_from([0, -1, 1, 5000, 2**63 - 1]) | st.integers(-(2**63), 2**63 - 1)),
            request_timeout=draw(st.sampled_from([0, -1, 1, 2000, 2**63 - 1]) | st.integers(-(2**63), 2**63 - 1)),
            nri_version=draw(st.sampled_from(["", "v0.10.0", "0.8", "v99999999999999999999.1"]) | st.text(max_size=8)),
        )
    if method == "Shutdown":
        return api.Empty()
    if method == "Synchronize":
        pod_list = draw(st.lists(pods(), max_size=3))
        ctrs = draw(st.lists(containers([p.id for p in pod_list]), max_size=3))
        return api.SynchronizeRequest(pods=pod_list, containers=ctrs, more=draw(st.booleans()))
    pod, ctr = draw(pods()), draw(containers())
    if draw(st.booleans()):
        ctr.pod_sandbox_id = pod.id
    if method == "StateChange":
        msg = api.StateChangeEvent(event=draw(EVENTS), pod=pod)
        if draw(st.booleans()):
            msg.container.CopyFrom(ctr)
        return msg
    msg = REQUEST_TYPE[method](pod=pod, container=ctr)
    if method == "UpdateContainer" and draw(st.booleans()):
        msg.linux_resources.cpu.shares.value = draw(st.integers(0, 2**64 - 1))
    return msg


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """Truncated, extended, corrupted, or with a length-delimited field announcing too much."""
    return st.one_of(
        st.integers(0, max(len(data) - 1, 0)).map(lambda k: data[:k]),
        st.binary(min_size=1, max_size=32).map(lambda g: data + g),
        st.tuples(st.integers(0, max(len(data) - 1, 0)), st.integers(0, 255)).map(
            lambda t: data[: t[0]] + bytes([t[1]]) + data[t[0] + 1 :]
        ),
        st.tuples(
            st.integers(1, 15),
            st.sampled_from([1, 2, 1000, 2**31, 2**32 + 5, 2**63, 2**64 - 1]),
            st.binary(max_size=8),
            st.booleans(),
        ).map(lambda t: (data if t[3] else b"") + bytes([t[0] << 3 | 2]) + varint(len(t[2]) + t[1]) + t[2]),
        st.just(data + b"\x08" + b"\xff" * 10 + b"\x01"),  # a varint longer than 10 bytes
    )


@st.composite
def payloads(draw: Any, method: str) -> bytes:
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "random", "other-type"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "other-type":
        method = draw(st.sampled_from(METHODS))
    data = draw(messages(method if method in REQUEST_TYPE else "CreateContainer")).SerializeToString()
    return draw(mutated(data)) if kind == "mutated" else data


def lengths(actual: int) -> st.SearchStrategy[int | None]:
    """A frame's length field: right (mostly), a little off, or far too big."""
    return st.one_of(
        st.just(None), st.just(None), st.just(None), st.just(None),
        st.integers(max(actual - 4, 0), actual + 4),
        st.sampled_from([0, TTRPC_MAX, TTRPC_MAX + 1, MUX_MAX, MUX_MAX + 1, U32]),
    )


@st.composite
def ttrpc_requests(draw: Any) -> tuple[str, bytes]:
    """(label, bytes): a ttrpc Request in mux frames, every field of it fuzzed."""
    method = draw(st.one_of(st.sampled_from(METHODS), st.sampled_from(OTHER_METHODS), st.text(max_size=12)))
    service = draw(st.one_of(st.just(PLUGIN), st.just(PLUGIN),
                             st.sampled_from(["nri.pkg.api.v1alpha1.Runtime", "", PLUGIN + "x"]), st.text(max_size=20)))
    env = ttrpc_pb2.Request(
        service=service, method=method, payload=draw(payloads(method)),
        timeout_nano=draw(st.sampled_from([2_000_000_000, 0, -1, 1, 2**63 - 1, -(2**63)])
                          | st.integers(-(2**63), 2**63 - 1)),
    )
    for key, value in draw(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=2)):
        env.metadata.add(key=key, value=value)
    data = env.SerializeToString()
    if draw(st.integers(0, 4)) == 0:
        data = draw(mutated(data))  # the ttrpc envelope itself
    sid = draw(stream_ids)
    mtype = draw(st.sampled_from([1, 1, 1, 1, 1, 2, 3, 0, 255]))
    flags = draw(st.sampled_from([0, 0, 0, 2, 1, 4, 255]))
    frame = ttrpc_frame(sid, data, mtype=mtype, flags=flags, length=draw(lengths(len(data))))
    conn = draw(st.sampled_from([1, 1, 1, 1, 2, 0, 3]))
    framing = draw(st.sampled_from(["go", "go", "one", "split"]))
    if framing == "go":
        wire = go_frames(conn, frame)
    elif framing == "one":
        wire = mux_frame(conn, frame, draw(lengths(len(frame))))
    else:
        cut = draw(st.integers(0, len(frame)))
        wire = mux_frame(conn, frame[:cut]) + mux_frame(conn, frame[cut:])
    return f"conn {conn} sid {sid} type {mtype} flags {flags} {service!r} {method!r}", wire


# The real CreateContainer for an opted-in pod, as containerd 2.1 would send it.
def enabled_create(big: bool = False) -> Any:
    pod = api.PodSandbox(
        id="3f2a9c1b7d", name="web-0", namespace="shop", uid="6b1e7c2a-uid",
        annotations={
            "nri-zeropod.dev/enabled": "true",
            "nri-zeropod.dev/scaledown-duration": "30s",
            "nri-zeropod.dev/ports-map": "app=8080",
            **({"big": "v" * 6000} if big else {}),
        },
    )
    pod.linux.namespaces.add(type="network", path="/var/run/netns/cni-1234")
    ctr = api.Container(id="c0ffee1234", name="app", pod_sandbox_id=pod.id, args=["/bin/app", "--serve"])
    return api.CreateContainerRequest(pod=pod, container=ctr)


ENABLED_CREATE = request(FIRST_SID, "CreateContainer", enabled_create())
ENABLED_CREATE_BIG = request(FIRST_SID, "CreateContainer", enabled_create(big=True))  # two mux frames


def zero_pids(msg: Any) -> Any:
    """No process IDs: with a managed container and a live pid the agent would attach BPF to that pid's netns."""
    if isinstance(msg, api.SynchronizeRequest):
        item: Any
        for item in [*msg.pods, *msg.containers]:
            item.pid = 0
    elif msg.DESCRIPTOR.fields_by_name.get("pod") is not None:
        msg.pod.pid = 0
        if msg.HasField("container"):
            msg.container.pid = 0
    return msg


def brief(method: str, msg: Any) -> str:
    text = " ".join(str(msg).split())
    return f"{method}{{{text[:200]}{'...' if len(text) > 200 else ''}}}"


@st.composite
def semantic_wires(draw: Any, managed: bool) -> tuple[str, bytes]:
    """1-4 well-framed requests with bad content; ``managed``: sharing one pod and container, no pids."""
    methods = [m for m in METHODS if not (managed and m == "Configure")]  # keep NRI 0.10: no spec rewriter
    shared = (draw(ids), draw(ids)) if managed and draw(st.booleans()) else None
    labels, wire = [], b""
    for i in range(draw(st.integers(1, 4))):
        method = draw(st.sampled_from([*methods, "StateChange", "StateChange"]))  # most events are StateChange
        msg = draw(messages(method))
        if shared is not None and msg.DESCRIPTOR.fields_by_name.get("pod") is not None:
            msg.pod.id, msg.container.id = shared
            msg.container.pod_sandbox_id = shared[0]
        if managed:
            zero_pids(msg)
        labels.append(brief(method, msg))
        wire += request(FIRST_SID + 2 * i, method, msg)
    return " ; ".join(labels), wire


request_frames = st.builds(
    lambda sid, method, payload: ttrpc_frame(sid, envelope(method, payload)),
    stream_ids, st.sampled_from(METHODS), st.sampled_from(METHODS).flatmap(payloads),
)
pieces = st.one_of(st.none(), st.none(), st.integers(1, 64))


# ---------------------------------------------------------------------------
# Tests. Example counts: 200 + 200 + 300 + 150 + 250 + 150 fuzzed, 680 cuts, 2 explicit.
# ---------------------------------------------------------------------------


@settings(FUZZ, max_examples=200)
@given(data=st.binary(max_size=300), piece=pieces)
def _random_bytes(data: bytes, piece: int | None) -> None:
    check(Case(data, label="(a) random bytes", piece=piece))


def test_a_random_bytes(findings: Findings) -> None:
    _random_bytes()
    assert_nothing_outside(findings)


@settings(FUZZ, max_examples=200)
@given(
    frames=st.lists(
        st.tuples(conn_ids, st.one_of(st.binary(max_size=80), request_frames,
                                      request_frames.flatmap(lambda f: st.integers(0, len(f)).map(lambda k: f[:k])))),
        min_size=1, max_size=4,
    ),
    piece=pieces,
)
def _mux_frames(frames: list[tuple[int, bytes]], piece: int | None) -> None:
    label = "(b) mux frames on conns " + ", ".join(str(c) for c, _ in frames)
    check(Case(b"".join(mux_frame(c, p) for c, p in frames), label=label, piece=piece))


def test_b_valid_mux_frames_with_random_payloads(findings: Findings) -> None:
    _mux_frames()
    assert_nothing_outside(findings)


@settings(FUZZ, max_examples=300)
@given(reqs=st.lists(ttrpc_requests(), min_size=1, max_size=3), piece=pieces)
def _ttrpc_requests(reqs: list[tuple[str, bytes]], piece: int | None) -> None:
    check(Case(b"".join(w for _, w in reqs), label="(c) " + " ; ".join(lbl for lbl, _ in reqs), piece=piece))


def test_c_ttrpc_requests_with_random_names_and_payloads(findings: Findings) -> None:
    _ttrpc_requests()
    assert_nothing_outside(findings)


def test_d_enabled_create_container_cut_at_every_length(findings: Findings) -> None:
    """The real CreateContainer of an opted-in pod, truncated at each of its lengths (then the runtime closes)."""
    n = len(ENABLED_CREATE)
    cuts_big = sorted({*range(0, 24), *range(4096 - 12, 4096 + 24), *range(len(ENABLED_CREATE_BIG) - 24,
                                                                             len(ENABLED_CREATE_BIG) + 1)})
    for wire, cuts in ((ENABLED_CREATE, range(n + 1)), (ENABLED_CREATE_BIG, cuts_big)):
        for toolbox_ok in (True, False):
            for k in cuts:
                out = check(Case(wire[:k], label=f"(d) CreateContainer cut at {k} of {len(wire)}",
                                 toolbox_ok=toolbox_ok))
                assert out.expect.usable == (k in (0, len(wire)))
                if k == len(wire):  # whole: answered, with the keeper's mounts when managed
                    (reply,) = out.replies[FIRST_SID]
                    assert reply.code == 0
                    mounts = api.CreateContainerResponse.FromString(reply.payload).adjust.mounts
                    assert [m.destination for m in mounts] == (["/.zeropod", "/.zeropod/state"] if toolbox_ok else [])
    assert findings.examples == 2 * (n + 1) + 2 * len(cuts_big)
    assert_nothing_outside(findings)


@settings(FUZZ, max_examples=150)
@given(
    base_cut=st.sampled_from([ENABLED_CREATE, ENABLED_CREATE_BIG]).flatmap(
        lambda w: st.tuples(st.just(w), st.integers(0, len(w)))
    ),
    tail=st.one_of(
        st.binary(min_size=1, max_size=64),
        st.just(ENABLED_CREATE),
        st.just(request(FIRST_SID + 2, "CreateContainer", probe_request())),
        request_frames.map(lambda f: mux_frame(1, f)),
    ),
    toolbox_ok=st.booleans(),
    piece=pieces,
)
def _prefix_and_garbage(base_cut: tuple[bytes, int], tail: bytes, toolbox_ok: bool, piece: int | None) -> None:
    base, cut = base_cut
    label = f"(d) CreateContainer ({len(base)} bytes) cut at {cut}, then {len(tail)} other bytes"
    check(Case(base[:cut] + tail, label=label, toolbox_ok=toolbox_ok, piece=piece))


def test_d_valid_prefix_then_garbage(findings: Findings) -> None:
    _prefix_and_garbage()
    assert_nothing_outside(findings)


@settings(FUZZ, max_examples=250)
@given(case=semantic_wires(managed=False))
def _semantic(case: tuple[str, bytes]) -> None:
    check(Case(case[1], label="(e) " + case[0]))


def test_e_semantically_bad_messages(findings: Findings) -> None:
    """Empty ids, '/' and '..' in ids, huge annotations, no linux namespaces, odd pids and events."""
    _semantic()
    assert_nothing_outside(findings)


@settings(FUZZ, max_examples=150)
@given(case=semantic_wires(managed=True))
def _semantic_managed(case: tuple[str, bytes]) -> None:
    check(Case(case[1], label="(e, toolbox ok) " + case[0], toolbox_ok=True, runtime_version="2.2.0"))


def test_e_semantically_bad_messages_for_managed_containers(findings: Findings) -> None:
    """The same with a usable toolbox, so opted-in pods are managed (state directories, records)."""
    _semantic_managed()
    assert_nothing_outside(findings)


def test_request_over_4_mib_is_refused_and_survived(findings: Findings) -> None:
    msg = api.CreateContainerRequest(pod=api.PodSandbox(id="p", annotations={"big": "v" * (4 << 20)}))
    wire = request(FIRST_SID, "CreateContainer", msg)
    out = check(Case(wire, label="CreateContainer of more than 4 MiB"))
    assert out.expect.usable and [r.code for r in out.replies[FIRST_SID]] == [8]  # RESOURCE_EXHAUSTED


def test_remove_pod_sandbox_with_a_pod_id_outside_the_pin_root(findings: Findings) -> None:
    """Found by the (c) and (e) fuzzing: StateChange REMOVE_POD_SANDBOX trusts ``pod.id`` as a path.

    ``AgentPlugin.remove_pod_sandbox`` checks ``(bpf_pins / pod.id).exists()`` and then
    ``Scalers.pod_removed(pod.id)`` -> ``PodSteering.remove`` -> ``Steering.remove(pin_root / pod_id)``
    -> ``pins.unpin``, which unlinks ``link``, ``steer_ports``, ``activator_socks``, ``activity``,
    ``node_addrs``, ``bypass`` in that directory and removes it if empty. With ``../victim`` the agent
    deleted files next to the pin root; with an absolute id (``/``, ``/etc``) anywhere on the host (as
    root). Fixed: ``PodSteering.get`` and ``remove`` take only ids ``store.safe_id`` accepts.
    """
    left: dict[str, Any] = {}

    def prepare(tmp: Path) -> None:
        (tmp / "victim").mkdir()
        for name in ("steer_ports", "bypass", "keep-me"):
            (tmp / "victim" / name).write_text("canary")
        (tmp / "empty").mkdir()

    def inspect(tmp: Path) -> None:
        left["victim"] = sorted(os.listdir(tmp / "victim")) if (tmp / "victim").exists() else None
        left["empty"] = (tmp / "empty").is_dir()

    event: Any = api.Event.REMOVE_POD_SANDBOX
    wire = b"".join(
        request(FIRST_SID + 2 * i, "StateChange", api.StateChangeEvent(event=event, pod=api.PodSandbox(id=pod_id)))
        for i, pod_id in enumerate(["../victim", "../empty", "/"])
    )
    out = check(Case(wire, label="REMOVE_POD_SANDBOX for pods '../victim', '../empty', '/'",
                     prepare=prepare, inspect=inspect))
    assert left == {"victim": ["bypass", "keep-me", "steer_ports"], "empty": True} and out.outside == [], (
        f"pod ids escaped the pin root: left in <tmp>/victim {left['victim']}, <tmp>/empty kept: {left['empty']}; "
        f"outside the test directory (blocked): {out.outside}"
    )
