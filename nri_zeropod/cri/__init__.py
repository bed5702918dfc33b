"""A CRI client (runtime.v1 over gRPC) and the messages of the subset we use."""

from nri_zeropod.cri.client import CRIClient, CRIError, ExecResult
from nri_zeropod.cri.proto import cri_pb2 as pb

__all__ = ["CRIClient", "CRIError", "ExecResult", "pb"]
