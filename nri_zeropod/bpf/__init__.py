"""eBPF connection steering: the ``steer`` sk_lookup program and its maps.

``bpf/steer.bpf.c`` is compiled ahead of time (``make bpf``) and loaded with
libbpf through ctypes (:mod:`.libbpf`); :mod:`.pins` attaches it to a pod
netns and pins link and maps in bpffs; :class:`Steering` edits the maps.
"""

from .libbpf import BpfError
from .pins import PIN_ROOT, default_obj_path, ensure_bpffs, is_bpffs, pod_pin_dir
from .steering import Activity, Steering, boot_ns, pack_addr

__all__ = [
    "PIN_ROOT",
    "Activity",
    "BpfError",
    "Steering",
    "boot_ns",
    "default_obj_path",
    "ensure_bpffs",
    "is_bpffs",
    "pack_addr",
    "pod_pin_dir",
]
