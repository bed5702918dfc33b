"""One door for external commands.

Every external program nri-zeropod runs goes through :func:`run` (or
:func:`arun` from asyncio code): a timeout is required, stderr is captured, and
a failure raises :class:`CommandError` carrying the command, the exit code and
the last line of error output, so that the caller's log line says what went
wrong without a second look.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class CommandError(Exception):
    """An external command failed, timed out or could not be started."""

    def __init__(self, *, argv: Sequence[str], returncode: int | None, stderr: str, reason: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.reason = reason
        super().__init__(self._message())

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    def _message(self) -> str:
        cmd = " ".join(self.argv)
        if len(cmd) > 200:
            cmd = cmd[:197] + "..."
        if self.reason:
            what = self.reason
        else:
            what = f"exit code {self.returncode}"
        tail = f": {self.last_line}" if self.last_line else ""
        return f"{cmd}: {what}{tail}"


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    preexec_fn=None,
) -> Result:
    """Run ``argv`` and wait at most ``timeout`` seconds for it.

    Output is decoded as UTF-8 with replacement. With ``check`` (the default)
    a non-zero exit raises :class:`CommandError`.
    """
    data = input.encode() if isinstance(input, str) else input
    try:
        cp = subprocess.run(
            list(argv),
            input=data,
            capture_output=True,
            timeout=timeout,
            env=_full_env(env),
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec_fn,
        )
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise CommandError(argv=argv, returncode=None, stderr=err, reason=f"timed out after {timeout:g}s") from None
    except OSError as e:
        raise CommandError(argv=argv, returncode=None, stderr="", reason=f"cannot start: {e.strerror or e}") from None
    res = Result(
        argv=list(argv),
        returncode=cp.returncode,
        stdout=cp.stdout.decode(errors="replace"),
        stderr=cp.stderr.decode(errors="replace"),
    )
    if check and cp.returncode != 0:
        raise CommandError(argv=argv, returncode=cp.returncode, stderr=res.stderr or res.stdout)
    return res


def _full_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """Our environment with ``env`` on top; None (inherit it as is) without ``env``."""
    return None if env is None else {**os.environ, **env}


async def arun(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    preexec_fn=None,
) -> Result:
    """asyncio flavour of :func:`run`; the child is killed when the timeout expires."""
    try:
        p = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_full_env(env),
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec_fn,
        )
    except OSError as e:
        raise CommandError(argv=argv, returncode=None, stderr="", reason=f"cannot start: {e.strerror or e}") from None
    try:
        out, err = await asyncio.wait_for(p.communicate(), timeout)
    except asyncio.TimeoutError:
        p.kill()
        out, err = await p.communicate()
        raise CommandError(
            argv=argv, returncode=None, stderr=err.decode(errors="replace"), reason=f"timed out after {timeout:g}s"
        ) from None
    except asyncio.CancelledError:
        p.kill()
        await p.wait()
        raise
    assert p.returncode is not None
    res = Result(list(argv), p.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and p.returncode != 0:
        raise CommandError(argv=argv, returncode=p.returncode, stderr=res.stderr or res.stdout)
    return res
