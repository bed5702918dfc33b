"""The prlimit64 shim preloaded into the toolbox's CRIU (init/zeropod-rlimits.c).

Built through the real make rule and preloaded into a small Python client,
which asks for the rlimits of a process running as another user, the way
CRIU's dump does: through glibc's syscall() and through prlimit64(). On hosts
without CAP_SYS_RESOURCE (like the machines the tests run on) the kernel
refuses those reads, and the shim answers them from /proc/PID/limits; where
the kernel allows them, the shim must not change them. Either way the answer
must be the process's real limits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import eventually, need_binary, need_root

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)

# Asks for every rlimit of PID through the raw syscall and through prlimit64,
# tries to set one, and checks that other system calls pass through.
CLIENT = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
class R(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_uint64), ("max", ctypes.c_uint64)]
SYS_prlimit64, SYS_getpid = 302, 39
out = {"syscall": [], "prlimit64": [], "errors": []}
for res in range(16):
    for how in ("syscall", "prlimit64"):
        r = R()
        if how == "syscall":
            rc = libc.syscall(ctypes.c_long(SYS_prlimit64), ctypes.c_long(pid), ctypes.c_long(res),
                              ctypes.c_void_p(0), ctypes.byref(r))
        else:
            rc = libc.prlimit64(pid, res, None, ctypes.byref(r))
        if rc != 0:
            out["errors"].append([how, res, ctypes.get_errno()])
        out[how].append([r.cur, r.max])
r = R(5, 5)
out["set_rc"] = libc.prlimit64(pid, 7, ctypes.byref(r), None)
out["set_errno"] = ctypes.get_errno()
out["getpid"] = libc.syscall(ctypes.c_long(SYS_getpid)) == os.getpid()
print(json.dumps(out))
"""

INFINITY = 2**64 - 1


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> str:
    build = tmp_path_factory.mktemp("shim-build")
    target = build / "libzeropod-rlimits.so"
    res = subprocess.run(["make", "-C", str(REPO), f"BUILD={build}", str(target)], capture_output=True, text=True)
    if res.returncode != 0 or not target.exists():
        pytest.fail(f"building the shim failed:\n{res.stdout}\n{res.stderr}")
    return str(target)


@pytest.fixture
def other_user() -> Iterator[int]:
    """A process running as nobody, with a few limits set to known values."""
    need_root()
    need_binary("setpriv")
    need_binary("prlimit")
    p = subprocess.Popen(["prlimit", "--nofile=123:456", "--cpu=77:unlimited", "--core=0:0", "--",
                          "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "60"])
    eventually(lambda: Path(f"/proc/{p.pid}/status").read_text().count("65534") >= 2, timeout=5,
               what="the process runs as nobody")
    yield p.pid
    p.kill()
    p.wait()


def expected(pid: int) -> list[list[int]]:
    """The limits as the kernel shows them in /proc/PID/limits, parsed independently."""
    rows = []
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        soft, hard = line[26:46].strip(), line[47:67].strip()
        rows.append([INFINITY if v == "unlimited" else int(v) for v in (soft, hard)])
    return rows


def ask(shim: str | None, pid: int) -> dict:
    env = {**os.environ, "LD_PRELOAD": shim} if shim else dict(os.environ)
    out = subprocess.run([sys.executable, "-c", CLIENT, str(pid)], env=env, capture_output=True, text=True,
                         timeout=30, check=True)
    return json.loads(out.stdout)


def test_reads_another_users_limits(shim: str, other_user: int) -> None:
    want = expected(other_user)
    assert want[7] == [123, 456] and want[0] == [77, INFINITY] and want[4] == [0, 0]
    got = ask(shim, other_user)
    assert got["errors"] == []
    assert got["syscall"] == want and got["prlimit64"] == want
    assert got["getpid"], "other system calls pass through"


def test_does_not_change_what_the_kernel_answers_or_allows(shim: str, other_user: int) -> None:
    plain = ask(None, other_user)
    with_shim = ask(shim, other_user)
    if not plain["errors"]:  # a host where the kernel allows the reads: the same answers
        assert with_shim["syscall"] == plain["syscall"]
    else:  # a host without CAP_SYS_RESOURCE: refused without the shim, answered with it
        assert {e[2] for e in plain["errors"]} == {1}  # EPERM
        assert with_shim["errors"] == []
    # Setting another user's limit stays refused (or allowed) exactly as without the shim.
    assert (with_shim["set_rc"], with_shim["set_errno"]) == (plain["set_rc"], plain["set_errno"])
    assert expected(other_user)[7] == ([5, 5] if plain["set_rc"] == 0 else [123, 456])


def test_a_process_that_is_gone_stays_an_error(shim: str) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    got = ask(shim, p.pid)
    assert len(got["errors"]) == 32 and {e[2] for e in got["errors"]} == {3}  # ESRCH
