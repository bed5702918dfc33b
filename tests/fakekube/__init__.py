"""A fake Kubernetes API server at the HTTP level; see :mod:`.server`."""

from __future__ import annotations

from .faults import Fault, Record
from .server import FakeKube

__all__ = ["FakeKube", "Fault", "Record"]
