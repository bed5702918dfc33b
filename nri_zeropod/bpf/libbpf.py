"""A thin ctypes binding of the few libbpf (``libbpf.so.1``) calls we use.

libbpf 1.x reports errors as a negative errno (int returns) or NULL with
``errno`` set (pointer returns); :func:`check` and :func:`check_ptr` turn both
into :class:`BpfError` naming the operation. libbpf's own messages (including
why a load failed) go to the ``nri_zeropod.bpf`` logger, and are collected
while :func:`capture` is active so that an error can carry them.

Every function used has its ``restype`` and ``argtypes`` declared: ctypes'
defaults (int return, no argument checks) would truncate pointers.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("nri_zeropod.bpf")

_p = ctypes.c_void_p
_int = ctypes.c_int
_u32p = ctypes.POINTER(ctypes.c_uint32)


class BpfError(OSError):
    """A libbpf/bpf(2) operation failed; ``log`` holds libbpf's or the verifier's messages."""

    def __init__(self, op: str, err: int, *, log_text: str = "") -> None:
        self.op = op
        self.log = log_text
        msg = f"{op}: [Errno {err}] {os.strerror(err)}"
        if log_text.strip():
            msg += "\n" + log_text.rstrip()
        super().__init__(err, msg)

    def __str__(self) -> str:
        return self.args[1]


# (name, restype, argtypes)
_SIGNATURES: list[tuple[str, type | None, list[type]]] = [
    ("libbpf_set_print", _p, [_p]),
    ("bpf_object__open_file", _p, [ctypes.c_char_p, _p]),
    ("bpf_object__load", _int, [_p]),
    ("bpf_object__close", None, [_p]),
    ("bpf_object__find_program_by_name", _p, [_p, ctypes.c_char_p]),
    ("bpf_object__find_map_by_name", _p, [_p, ctypes.c_char_p]),
    ("bpf_program__set_log_buf", _int, [_p, ctypes.c_char_p, ctypes.c_size_t]),
    ("bpf_program__fd", _int, [_p]),
    ("bpf_program__attach_netns", _p, [_p, _int]),
    ("bpf_map__pin", _int, [_p, ctypes.c_char_p]),
    ("bpf_link__pin", _int, [_p, ctypes.c_char_p]),
    ("bpf_link__destroy", _int, [_p]),
    ("bpf_link_detach", _int, [_int]),
    ("bpf_obj_get", _int, [ctypes.c_char_p]),
    ("bpf_obj_get_info_by_fd", _int, [_int, _p, _u32p]),
    ("bpf_map_update_elem", _int, [_int, _p, _p, ctypes.c_uint64]),
    ("bpf_map_lookup_elem", _int, [_int, _p, _p]),
    ("bpf_map_delete_elem", _int, [_int, _p]),
    ("bpf_map_get_next_key", _int, [_int, _p, _p]),
    ("bpf_prog_get_fd_by_id", _int, [ctypes.c_uint32]),
    ("bpf_prog_test_run_opts", _int, [_int, _p]),
]

# libbpf_print_fn_t: int (*)(enum libbpf_print_level, const char *fmt, va_list).
# On x86_64 and arm64 a va_list argument travels as a pointer, so vsnprintf
# can format it from a c_void_p.
_PRINT_FN = ctypes.CFUNCTYPE(_int, _int, ctypes.c_char_p, _p)
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}

_captured = threading.local()


def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise OSError(f"cannot load libbpf.so.1 (Debian package libbpf1): {e}") from e
    for name, restype, argtypes in _SIGNATURES:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.restype = _int
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, _p]


def _print(level: int, fmt: bytes | None, args: int | None) -> int:
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip("\n")
    sink = getattr(_captured, "lines", None)
    if sink is not None and level == 0:  # warnings only: debug output is chatty
        sink.append(text)
    log.log(_LEVELS.get(level, logging.DEBUG), "%s", text)
    return 0


_print_cb = _PRINT_FN(_print)  # kept referenced for the life of the process
lib = _load()
lib.libbpf_set_print(ctypes.cast(_print_cb, _p))


@contextmanager
def capture() -> Iterator[list[str]]:
    """Collect libbpf's messages on this thread for the duration of the block."""
    prev = getattr(_captured, "lines", None)
    lines: list[str] = []
    _captured.lines = lines
    try:
        yield lines
    finally:
        _captured.lines = prev


def check(ret: int, op: str, *, log_text: str = "") -> int:
    """Return ``ret`` unless it is a negative errno, which raises :class:`BpfError`."""
    if ret < 0:
        raise BpfError(op, -ret or ctypes.get_errno() or _errno.EINVAL, log_text=log_text)
    return ret


def check_ptr(ptr: int | None, op: str, *, log_text: str = "") -> int:
    """Return a non-NULL pointer, or raise with the errno libbpf left behind."""
    if not ptr:
        raise BpfError(op, ctypes.get_errno() or _errno.EINVAL, log_text=log_text)
    return ptr


def obj_get(path: str) -> int:
    """Open a pinned object (BPF_OBJ_GET): a new fd owned by the caller."""
    return check(lib.bpf_obj_get(path.encode()), f"bpf_obj_get({path})")


def obj_info(fd: int, size: int) -> bytes:
    """The raw ``bpf_*_info`` struct of a map/link/program fd (first ``size`` bytes)."""
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    check(lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(length)), f"bpf_obj_get_info_by_fd({fd})")
    return buf.raw


def map_update(fd: int, key: bytes, *, value: bytes, flags: int = 0) -> None:
    check(lib.bpf_map_update_elem(fd, key, value, flags), "bpf_map_update_elem")


def map_lookup(fd: int, key: bytes, *, value_size: int) -> bytes | None:
    """The value stored under ``key``, or None when there is none."""
    buf = ctypes.create_string_buffer(value_size)
    ret = lib.bpf_map_lookup_elem(fd, key, buf)
    if ret == -_errno.ENOENT:
        return None
    check(ret, "bpf_map_lookup_elem")
    return buf.raw


def map_delete(fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there."""
    ret = lib.bpf_map_delete_elem(fd, key)
    if ret == -_errno.ENOENT:
        return False
    check(ret, "bpf_map_delete_elem")
    return True


def map_keys(fd: int, *, key_size: int, max_entries: int) -> list[bytes]:
    """All keys of a hash map (a snapshot: entries may change meanwhile).

    A key deleted under our feet makes the kernel restart from the first
    key, hence the bound on the walk.
    """
    keys: list[bytes] = []
    seen: set[bytes] = set()
    cur: ctypes.Array[ctypes.c_char] | None = None
    nxt = ctypes.create_string_buffer(key_size)
    for _ in range(2 * max_entries + 1):
        ret = lib.bpf_map_get_next_key(fd, cur, nxt)
        if ret == -_errno.ENOENT:
            break
        check(ret, "bpf_map_get_next_key")
        if nxt.raw not in seen:
            seen.add(nxt.raw)
            keys.append(nxt.raw)
        cur = ctypes.create_string_buffer(nxt.raw, key_size)
    return keys
