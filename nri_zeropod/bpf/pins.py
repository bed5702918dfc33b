"""Load ``steer.bpf.o``, attach it to a pod netns, and pin it in bpffs.

Steering must outlive the agent process: the netns ``bpf_link`` and the maps
are pinned under one directory per pod (``/sys/fs/bpf/nri-zeropod/<pod>/``).
While the link pin exists the program stays attached even with no process
holding an fd; unlinking it (:func:`unpin`) detaches the program.

The link is pinned last, so a directory without ``link`` is a half-done
attach and is cleared before a new one. After pinning, the loader closes its
own libbpf object: every user, including the one that attached, re-opens the
maps from their pins (``BPF_OBJ_GET``), so there is a single way in.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from pathlib import Path

from .. import paths, proc
from .libbpf import BpfError, capture, check, check_ptr, lib, obj_get, obj_info

log = logging.getLogger("nri_zeropod.bpf")

BPFFS = Path("/sys/fs/bpf")
PROG_NAME = "steer"
LINK_PIN = "link"
MAP_NAMES = ("steer_ports", "activator_socks", "activity", "node_addrs", "bypass")

_BPF_FS_MAGIC = 0xCAFE4A11
_VERIFIER_LOG_SIZE = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.restype = ctypes.c_int
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


def default_obj_path() -> Path:
    """``$NRI_ZEROPOD_BPF_OBJ``, else ``steer.bpf.o`` in the build directory."""
    env = os.environ.get("NRI_ZEROPOD_BPF_OBJ")
    return Path(env) if env else paths.build_dir() / "steer.bpf.o"


def is_bpffs(path: Path) -> bool:
    """True if ``path`` (which must exist) lies on a bpf filesystem."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first long
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs({path}): {os.strerror(err)}")
    return struct.unpack_from("=l", buf.raw)[0] & 0xFFFFFFFF == _BPF_FS_MAGIC


def ensure_bpffs(mountpoint: Path = BPFFS) -> bool:
    """Mount bpffs on ``mountpoint`` unless it is one already; True if we mounted it."""
    if is_bpffs(mountpoint):
        return False
    proc.run(["mount", "-t", "bpf", "bpf", str(mountpoint)], timeout=10)
    log.info("mounted bpffs on %s", mountpoint)
    return True


def _ensure_pin_fs(pin_dir: Path) -> None:
    existing = pin_dir
    while not existing.exists():
        existing = existing.parent
    if is_bpffs(existing):
        return
    if pin_dir.is_relative_to(BPFFS) and existing in (BPFFS, *BPFFS.parents):
        ensure_bpffs(BPFFS)
        return
    raise BpfError(f"pin in {pin_dir}: {existing} is not on a bpf filesystem", errno.EOPNOTSUPP)


def link_netns_ino(pin_dir: Path) -> int | None:
    """Inode of the netns the pinned link is attached to (0: that netns is gone); None without a link."""
    try:
        fd = obj_get(str(pin_dir / LINK_PIN))
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    try:
        # struct bpf_link_info: type, id, prog_id, then a union aligned to 8
        # whose netns member starts with netns_ino.
        return int(struct.unpack_from("=I", obj_info(fd, 48), 16)[0])
    finally:
        os.close(fd)


def unpin(pin_dir: Path) -> None:
    """Detach the program, then remove every pin and the directory.

    Unlinking the last reference to a link only detaches it later (the
    kernel frees bpffs inodes after an RCU grace period and puts links from
    a workqueue), so the link is detached explicitly first: steering has
    stopped when this returns.
    """
    try:
        fd = obj_get(str(pin_dir / LINK_PIN))
    except BpfError as e:
        if e.errno != errno.ENOENT:
            raise
    else:
        try:
            check(lib.bpf_link_detach(fd), f"detach link {pin_dir / LINK_PIN}")
        finally:
            os.close(fd)
    for name in (LINK_PIN, *MAP_NAMES):
        try:
            (pin_dir / name).unlink()
        except FileNotFoundError:
            pass
    try:
        pin_dir.rmdir()
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):  # foreign files stay, and so does the dir
            raise


def load_and_pin(*, netns_path: Path, pin_dir: Path, obj_path: Path) -> None:
    """Load the object, pin its maps, attach ``steer`` to the netns and pin the link.

    On failure everything pinned so far is removed again.
    """
    _ensure_pin_fs(pin_dir)
    unpin(pin_dir)  # leftovers of a half-done attach
    pin_dir.mkdir(parents=True, exist_ok=True)
    try:
        _load_and_pin(netns_path=netns_path, pin_dir=pin_dir, obj_path=obj_path)
    except BaseException:
        unpin(pin_dir)
        raise


def _load_and_pin(*, netns_path: Path, pin_dir: Path, obj_path: Path) -> None:
    with capture() as warnings:
        obj = lib.bpf_object__open_file(os.fsencode(obj_path), None)
        check_ptr(obj, f"open {obj_path}", log_text="\n".join(warnings))
        try:
            prog = check_ptr(lib.bpf_object__find_program_by_name(obj, PROG_NAME.encode()), f"find program {PROG_NAME}")
            # With a buffer set, libbpf retries a failed load at log level 1
            # and leaves the verifier's full log here.
            vlog = ctypes.create_string_buffer(_VERIFIER_LOG_SIZE)
            check(lib.bpf_program__set_log_buf(prog, vlog, len(vlog)), "bpf_program__set_log_buf")
            ret = lib.bpf_object__load(obj)
            if ret < 0:
                text = vlog.value.decode(errors="replace") or "\n".join(warnings)
                raise BpfError(f"load {obj_path}", -ret, log_text=text)
            for name in MAP_NAMES:
                m = check_ptr(lib.bpf_object__find_map_by_name(obj, name.encode()), f"find map {name}")
                check(lib.bpf_map__pin(m, os.fsencode(pin_dir / name)), f"pin map {name} in {pin_dir}")
            _attach_and_pin(prog=prog, netns_path=netns_path, pin=pin_dir / LINK_PIN)
        finally:
            lib.bpf_object__close(obj)


def _attach_and_pin(*, prog: int, netns_path: Path, pin: Path) -> None:
    nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        link = check_ptr(lib.bpf_program__attach_netns(prog, nsfd), f"attach {PROG_NAME} to netns {netns_path}")
    finally:
        os.close(nsfd)
    try:
        check(lib.bpf_link__pin(link, os.fsencode(pin)), f"pin link in {pin}")
    finally:
        # Closes our fd only; the pin keeps the link (and the attachment) alive.
        lib.bpf_link__destroy(link)
