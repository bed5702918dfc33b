"""Black-box tests of the keeper, init/zeropod-init.c.

The keeper runs here as an ordinary process; it makes itself a child
subreaper, so orphans come to it as they would to PID 1 in a container.
Modelled on catatonit's and tini's tests: exit codes, signal forwarding,
zombie reaping, a static binary; plus the state-file protocol with the agent.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.helpers import eventually

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="session")
def keeper_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the keeper once, through the real make rule, into a private directory."""
    build = tmp_path_factory.mktemp("keeper-build")
    target = build / "zeropod-init"
    res = subprocess.run(
        ["make", "-C", str(REPO), f"BUILD={build}", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0 or not target.exists():
        pytest.fail(f"building the keeper failed:\n{res.stdout}\n{res.stderr}")
    return str(target)


class Keeper:
    def __init__(self, binary: str, args: list[str], workdir: Path, **popen) -> None:
        self.errpath = workdir / f"keeper-{len(list(workdir.glob('keeper-*.err')))}.err"
        self.errfile = open(self.errpath, "wb")  # noqa: SIM115
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stdout", subprocess.DEVNULL)
        self.proc = subprocess.Popen([binary, *args], stderr=self.errfile, **popen)
        self.pid = self.proc.pid
        self.app: int | None = None

    def err(self) -> str:
        return self.errpath.read_text()

    def app_pid(self) -> int:
        """The app's pid, from the keeper's own start-up line."""

        def started() -> int:
            m = re.search(r"zeropod-init: app (\d+) started", self.err())
            assert m, self.err()
            return int(m.group(1))

        self.app = eventually(started, what="app started")
        return self.app

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in text.split()]

    def wait(self, timeout: float = 5.0) -> int:
        return self.proc.wait(timeout)

    def stays_alive(self, seconds: float = 0.3) -> None:
        """A bounded wait that must time out: the keeper did not exit."""
        with pytest.raises(subprocess.TimeoutExpired):
            self.proc.wait(seconds)

    def wait_log(self, text: str, count: int = 1) -> None:
        eventually(lambda: self.err().count(text) >= count, what=f"keeper log {text!r}")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def cleanup(self) -> None:
        """Leave nothing behind, even when a test failed half-way."""
        groups = set(self.children()) if self.proc.poll() is None else set()
        try:
            if self.app is not None and os.getsid(self.app) == self.app:
                groups.add(self.app)  # the app may have outlived a keeper that died
        except ProcessLookupError:
            pass
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.errfile.close()


@pytest.fixture
def start(keeper_bin: str, tmp_path: Path):
    started: list[Keeper] = []

    def _start(args: list[str], **popen) -> Keeper:
        k = Keeper(keeper_bin, args, tmp_path, **popen)
        started.append(k)
        return k

    yield _start
    for k in started:
        k.cleanup()


def write_state(state_dir: Path, word: str) -> None:
    """As the agent does it: a temp file in the directory, renamed over `state`."""
    tmp = state_dir / ".state.tmp"
    tmp.write_text(word + "\n")
    os.rename(tmp, state_dir / "state")


def gone(pid: int) -> bool:
    """Gone and reaped: a zombie still has a /proc entry."""
    return not os.path.exists(f"/proc/{pid}")


def proc_stat(pid: int) -> tuple[str, int]:
    """(state letter, ppid) of a process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


# --- the binary -------------------------------------------------------------


def test_binary_is_static_and_small(keeper_bin: str) -> None:
    data = Path(keeper_bin).read_bytes()
    assert data[:4] == b"\x7fELF"
    assert data[4] == 2, "expected a 64-bit ELF"
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 0x20)[0], *struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    PT_INTERP = 3
    assert types, "no program headers"
    assert PT_INTERP not in types, "the keeper has a dynamic loader (PT_INTERP)"
    assert len(data) < 1024 * 1024, f"{len(data)} bytes"
    ldd = shutil.which("ldd")
    if ldd:
        res = subprocess.run([ldd, keeper_bin], capture_output=True, text=True, check=False)
        out = res.stdout + res.stderr
        assert "not a dynamic executable" in out or "statically linked" in out, out


# --- usage and exec failure -----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--"],
        ["--activator"],
        ["--bogus", "--", "true"],
        ["--state-dir"],
        ["--stop-signal", "NOPE", "--", "true"],
        ["--stop-signal", "65", "--", "true"],
        ["--stop-signal", "RTMIN+31", "--", "true"],
    ],
)
def test_bad_usage_is_one_line_and_exit_2(keeper_bin: str, args: list[str]) -> None:
    res = subprocess.run([keeper_bin, *args], capture_output=True, text=True, timeout=5, check=False)
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("zeropod-init: ") and "usage: zeropod-init" in lines[0]


def test_command_without_double_dash_is_accepted(keeper_bin: str) -> None:
    res = subprocess.run([keeper_bin, "sh", "-c", "exit 3"], capture_output=True, timeout=5, check=False)
    assert res.returncode == 3


@pytest.mark.parametrize(
    ("cmd", "reason"),
    [
        ("/nonexistent/bin/app", "No such file or directory"),
        ("no-such-command-zeropod", "No such file or directory"),
        ("NOT_EXECUTABLE", "Permission denied"),
    ],
)
def test_exec_failure_exits_127_with_a_clear_message(keeper_bin: str, tmp_path: Path, cmd: str, reason: str) -> None:
    if cmd == "NOT_EXECUTABLE":
        f = tmp_path / "not-executable"
        f.write_text("#!/bin/sh\n")
        f.chmod(0o644)
        cmd = str(f)
    res = subprocess.run([keeper_bin, "--", cmd, "arg"], capture_output=True, text=True, timeout=5, check=False)
    assert res.returncode == 127
    assert f"zeropod-init: cannot run '{cmd}': {reason}" in res.stderr.splitlines()


# --- exit status ------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 2, 3, 42, 126, 127, 128, 129, 200, 254, 255])
def test_exit_code_is_the_apps(keeper_bin: str, code: int) -> None:
    res = subprocess.run(
        [keeper_bin, "--", "sh", "-c", f"exit {code}"], capture_output=True, text=True, timeout=5, check=False
    )
    assert res.returncode == code
    assert "cannot run" not in res.stderr  # an app exiting 127 is not an exec failure


@pytest.mark.parametrize(("sig", "code"), [("KILL", 137), ("TERM", 143), ("USR1", 138)])
def test_app_killed_by_a_signal_gives_128_plus_signal(keeper_bin: str, sig: str, code: int) -> None:
    res = subprocess.run(
        [keeper_bin, "--", "sh", "-c", f"kill -{sig} $$; sleep 5"], capture_output=True, text=True, timeout=5, check=False
    )
    assert res.returncode == code
    assert f"killed by signal {code - 128}" in res.stderr


def test_sigterm_to_the_keeper_ends_the_app_with_its_status(start) -> None:
    k = start(["--", "sleep", "60"])
    app = k.app_pid()
    k.signal(signal.SIGTERM)
    assert k.wait() == 143
    assert gone(app)


# --- signals ----------------------------------------------------------------

RECORDER = r"""
import os, signal, subprocess, sys, time
out, role = sys.argv[1], sys.argv[2]
def rec(sig, frame):
    with open(out, "a") as f:
        f.write(f"{role}:{sig}\n")
    if sig == signal.SIGQUIT:
        os._exit(42 if role == "app" else 0)
for s in [int(x) for x in sys.argv[3].split(",")]:
    signal.signal(s, rec)
if role == "app":
    subprocess.Popen([sys.executable, __file__, out, "grandchild", sys.argv[3]])
else:
    with open(out, "a") as f:
        f.write(f"{role}:ready\n")
while True:
    signal.pause()
"""

FORWARDED = [
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGALRM,
    signal.SIGPIPE,
    signal.SIGCONT,
    34,  # glibc's SIGRTMIN, which musl's sigset API refuses
    40,
    64,
]


def test_signals_reach_the_app_and_its_process_group(start, tmp_path: Path) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    out = tmp_path / "got"
    handled = ",".join(str(int(s)) for s in [*FORWARDED, signal.SIGQUIT])
    k = start(["--", PY, str(script), str(out), "app", handled])
    k.app_pid()
    eventually(lambda: "grandchild:ready" in out.read_text(), what="grandchild ready")

    for sig in FORWARDED:
        k.signal(sig)
        for role in ("app", "grandchild"):
            eventually(
                lambda role=role, sig=sig: f"{role}:{int(sig)}\n" in out.read_text(),
                what=f"{role} got signal {int(sig)}",
            )
    # SIGQUIT is a stop signal: the app exits 42 on it, and that is the keeper's status.
    k.signal(signal.SIGQUIT)
    assert k.wait() == 42
    lines = out.read_text().splitlines()
    assert lines.count("app:15") == 1, "a signal was delivered more than once"


def test_fault_signals_are_not_forwarded(start, tmp_path: Path) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    out = tmp_path / "got"
    bus = int(signal.SIGBUS)
    k = start(
        ["--", PY, str(script), str(out), "app", f"{bus},{int(signal.SIGQUIT)}"],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),
    )
    app = k.app_pid()
    eventually(lambda: "grandchild:ready" in out.read_text(), what="grandchild ready")
    try:
        # The recorder does catch SIGBUS when it is sent to it directly...
        os.killpg(app, signal.SIGBUS)
        eventually(lambda: f"app:{bus}\n" in out.read_text(), what="recorder sees SIGBUS")
        out.write_text("")
        # ...but not through the keeper, which leaves fault signals unblocked: not
        # being PID 1 here, it dies of it, with nothing forwarded.
        k.signal(signal.SIGBUS)
        assert k.wait() == -signal.SIGBUS
        assert f"app:{bus}" not in out.read_text()
        assert proc_stat(app)[0] != "Z"  # still running, now an orphan
    finally:
        os.killpg(app, signal.SIGKILL)


# --- reaping ----------------------------------------------------------------


def test_orphans_are_reaped(start, tmp_path: Path) -> None:
    pids = tmp_path / "orphans"
    # Each subshell starts a sleep and exits at once: the sleeps are orphans.
    app = f"for i in 1 2 3 4 5; do ( sleep 1 & echo $! >> {pids} ); done; sleep 60"
    k = start(["--", "sh", "-c", app])
    k.app_pid()
    eventually(lambda: pids.exists() and len(pids.read_text().split()) == 5, what="5 orphans started")
    orphans = [int(p) for p in pids.read_text().split()]
    # They were re-parented to the keeper (a still-running sleep, or already reaped).
    for pid in orphans:
        try:
            assert proc_stat(pid)[1] == k.pid
        except FileNotFoundError:
            pass
    eventually(lambda: all(gone(p) for p in orphans), what="orphans reaped")

    def no_zombies() -> bool:
        return all(proc_stat(c)[0] != "Z" for c in k.children())

    assert no_zombies()
    assert k.proc.poll() is None
    k.signal(signal.SIGTERM)
    assert k.wait() == 143


# --- activator socket -------------------------------------------------------


def sockets_of(pid: int) -> list[int]:
    inodes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    return inodes


def listening_port(pid: int, inode: int) -> int:
    for table in ("tcp6", "tcp"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[9]) == inode:
                assert f[3] == "0A", f"socket {inode} is not listening: {line}"
                return int(f[1].rsplit(":", 1)[1], 16)
    raise AssertionError(f"socket {inode} not found in /proc/{pid}/net/tcp*")


def test_activator_socket_is_held_by_the_keeper_only(start, tmp_path: Path) -> None:
    fds = tmp_path / "app-fds"
    app = f'for f in /proc/$$/fd/*; do readlink "$f"; done > {fds}.tmp; mv {fds}.tmp {fds}; exec sleep 60'
    k = start(["--activator", "--", "sh", "-c", app])
    k.app_pid()
    eventually(fds.exists, what="app listed its fds")
    assert "socket:" not in fds.read_text(), fds.read_text()

    inodes = sockets_of(k.pid)
    assert len(inodes) == 1, inodes
    port = listening_port(k.pid, inodes[0])
    assert port > 0
    assert f"activator listening on port {port}" in k.err()
    # Listening (on both families where IPv6 is up): a connect completes from the
    # backlog, though nobody accepts.
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert k.proc.poll() is None


def test_no_activator_socket_unless_asked(start) -> None:
    k = start(["--", "sleep", "60"])
    k.app_pid()
    assert sockets_of(k.pid) == []


# --- terminal ---------------------------------------------------------------


def test_tty_becomes_the_apps_controlling_terminal(start, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    out = tmp_path / "tty"
    check = (
        "import os\n"
        "fd = os.open('/dev/tty', os.O_RDWR)\n"  # ENXIO without a controlling terminal
        f"open({str(out)!r}, 'w').write(str(os.tcgetpgrp(0) == os.getpgrp() == os.getsid(0) == os.getpid()))\n"
    )

    def take_terminal() -> None:  # what runc does for a tty: true container
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        k = start(
            ["--", PY, "-c", check],
            stdin=slave,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=take_terminal,
        )
        assert k.wait() == 0, k.err()  # not 129: the hand-over's SIGHUP did not reach the app
        assert out.read_text() == "True"
    finally:
        os.close(slave)
        os.close(master)


# --- state file -------------------------------------------------------------


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    write_state(d, "running")
    return d


def suspend(k: Keeper, state_dir: Path, word: str = "checkpointing") -> int:
    """Do what a successful dump does: mark the state, then kill the app."""
    app = k.app_pid()
    write_state(state_dir, word)
    os.kill(app, signal.SIGKILL)
    k.wait_log(f"app {app} gone while {word} (status 137), waiting")
    assert gone(app)
    return app


def test_checkpointing_then_app_death_keeps_the_keeper_then_sigterm_exits_0(start, state_dir: Path) -> None:
    k = start(["--state-dir", str(state_dir), "--", "sleep", "60"])
    suspend(k, state_dir)
    k.stays_alive()
    k.signal(signal.SIGTERM)
    assert k.wait(2) == 0
    assert "signal 15 and no app, exiting" in k.err()


@pytest.mark.parametrize("path", ["scaled-down", "restoring"])
def test_state_back_to_running_without_the_app_exits_with_its_recorded_status(
    start, state_dir: Path, path: str
) -> None:
    k = start(["--state-dir", str(state_dir), "--", "sleep", "60"])
    app = suspend(k, state_dir)
    write_state(state_dir, "scaled-down")
    k.wait_log("state: scaled-down")
    if path == "restoring":
        write_state(state_dir, "restoring")
        k.wait_log("state: restoring")
    k.stays_alive()
    write_state(state_dir, "running")  # a restore that lost the app
    assert k.wait() == 137
    assert f"state is running but app {app} is gone, exiting with 137" in k.err()


def test_deleted_state_file_without_the_app_exits(start, state_dir: Path) -> None:
    k = start(["--state-dir", str(state_dir), "--", "sleep", "60"])
    suspend(k, state_dir, "scaled-down")
    k.stays_alive()
    (state_dir / "state").unlink()
    assert k.wait() == 137


def test_failed_dump_app_survives_and_keeper_carries_on(start, state_dir: Path) -> None:
    k = start(["--state-dir", str(state_dir), "--", "sleep", "60"])
    app = k.app_pid()
    write_state(state_dir, "checkpointing")
    k.wait_log("state: checkpointing")
    os.kill(app, signal.SIGSTOP)  # CRIU freezes the app, the dump fails, CRIU resumes it
    os.kill(app, signal.SIGCONT)
    write_state(state_dir, "running")
    k.wait_log("state: running")
    k.stays_alive()
    assert "is gone" not in k.err()
    os.kill(app, signal.SIGTERM)
    assert k.wait() == 143


def test_app_death_while_running_exits_with_its_status(start, state_dir: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    k = start(["--state-dir", str(state_dir), "--", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done; exit 9"])
    k.app_pid()
    k.stays_alive(0.1)
    go.touch()
    assert k.wait() == 9
    assert "exited with 9" in k.err()


def test_stop_while_checkpointing_then_app_killed_exits_0(start, state_dir: Path, tmp_path: Path) -> None:
    got = tmp_path / "got"
    # The app survives the forwarded SIGTERM (as a frozen app would), then CRIU kills it.
    ready = tmp_path / "ready"
    k = start(["--state-dir", str(state_dir), "--", "sh", "-c",
               f"trap 'echo TERM >> {got}' TERM; touch {ready}; while :; do sleep 0.02; done"])
    app = k.app_pid()
    # A SIGTERM before the trap is set would kill the shell instead.
    eventually(ready.exists, what="the app's trap is set")
    write_state(state_dir, "checkpointing")
    k.wait_log("state: checkpointing")
    k.signal(signal.SIGTERM)
    eventually(lambda: got.exists() and "TERM" in got.read_text(), what="app got SIGTERM")
    os.kill(app, signal.SIGKILL)
    assert k.wait() == 0


@pytest.mark.parametrize("state", [None, "missing-file"])
def test_no_state_is_plain_init(start, tmp_path: Path, state: str | None) -> None:
    d = tmp_path / "nonexistent"
    if state == "missing-file":
        d = tmp_path / "empty-state-dir"
        d.mkdir()
    k = start(["--state-dir", str(d), "--", "sleep", "60"])
    app = k.app_pid()
    os.kill(app, signal.SIGKILL)
    assert k.wait() == 137


@pytest.mark.parametrize(
    ("name", "number"),
    [("USR2", 12), ("SIGUSR2", 12), ("sigusr2", 12), ("12", 12), ("RTMIN+3", 37), ("SIGRTMAX-2", 62), ("HUP", 1)],
)
def test_stop_signal_with_no_app_exits_0(start, state_dir: Path, name: str, number: int) -> None:
    k = start(["--state-dir", str(state_dir), "--stop-signal", name, "--", "sleep", "60"])
    suspend(k, state_dir)
    k.signal(number)
    assert k.wait(2) == 0


def test_other_signals_with_no_app_do_not_end_the_keeper(start, state_dir: Path) -> None:
    k = start(["--state-dir", str(state_dir), "--", "sleep", "60"])
    suspend(k, state_dir, "scaled-down")
    # SIGHUP means "reload" to many servers; it is a stop only with --stop-signal HUP.
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGWINCH, signal.SIGCHLD):
        k.signal(sig)
    k.stays_alive()
    k.signal(signal.SIGINT)
    assert k.wait(2) == 0


def test_unknown_state_word_means_running(start, state_dir: Path) -> None:
    k = start(["--state-dir", str(state_dir), "--", "sleep", "60"])
    app = k.app_pid()
    write_state(state_dir, "garbage")
    k.wait_log("state: garbage")
    os.kill(app, signal.SIGKILL)
    assert k.wait() == 137


def test_missing_state_dir_is_quiet(start, tmp_path: Path) -> None:
    k = start(["--state-dir", str(tmp_path / "absent"), "--", "true"])
    assert k.wait() == 0
    assert "warning" not in k.err()
    assert os.strerror(errno.ENOENT) not in k.err()
