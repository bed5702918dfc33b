"""pidfd_getfd(2): take a duplicate of another process's file descriptor.

Python has ``os.pidfd_open`` but not ``pidfd_getfd``; this is the syscall
through ctypes. The duplicate shares the open file description (offset,
flags) with the original, which is why nri-zeropod uses it: the keeper's
stdout pipe handed to a restored app, or the activator socket the keeper holds
for an agent that restarted.
"""

from __future__ import annotations

import ctypes
import os
import platform

_SYSCALLS = {"x86_64": 438, "aarch64": 438}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def getfd(pid: int, fd: int) -> int:
    """A new fd (close-on-exec) in this process for ``fd`` of process ``pid``."""
    nr = _SYSCALLS.get(platform.machine())
    if nr is None:
        raise OSError(f"pidfd_getfd: unsupported architecture {platform.machine()}")
    pidfd = os.pidfd_open(pid)
    try:
        res = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
        if res < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
        return int(res)
    finally:
        os.close(pidfd)
