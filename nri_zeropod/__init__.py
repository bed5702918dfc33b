"""nri-zeropod: scale idle containers to zero with CRIU, wake them on the first TCP connection.

A containerd NRI plugin. See README.md and the package modules:
``nri`` (the NRI/ttrpc library), ``cri`` (a CRI client), ``node`` (a local
containerd node), ``images`` (OCI images built without a registry).
"""

__version__ = "0.1.0"
