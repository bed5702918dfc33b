"""eBPF connection steering: the ``steer`` sk_lookup program and its maps.

``bpf/steer.bpf.c`` is compiled ahead of time (``make bpf``) and loaded with
libbpf through ctypes (:mod:`.libbpf`); :mod:`.pins` attaches it to a pod
netns and pins link and maps in bpffs; :class:`Steering` edits the maps.
"""

from .libbpf import BpfError
from .pins import default_obj_path, ensure_bpffs, is_bpffs
from .steering import Activity, Steering, boot_ns, pack_addr

__all__ = [
    "Activity",
    "BpfError",
    "Steering",
    "boot_ns",
    "default_obj_path",
    "ensure_bpffs",
    "is_bpffs",
    "pack_addr",
]
