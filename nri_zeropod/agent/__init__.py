"""The node agent: the NRI plugin that manages containers, and the operations on them."""

import os as _os

# The agent forks CRIU helpers while gRPC (the containerd client) has threads:
# gRPC's fork handlers would only log a warning each time, so they are off.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
