"""Telling kubelet's probes from real traffic, on a connection the activator accepted.

Only connections from the node's own addresses are looked at (kubelet probes
come from there). A TCP probe connects and closes without sending anything;
an HTTP probe is a request with ``User-Agent: kube-probe/<version>``.
Anything else is real traffic and wakes the app, with the bytes read so far
handed on to it.
"""

from __future__ import annotations

import enum

MAX_HEAD = 8192  # kubelet's probe requests are a few hundred bytes
PROBE_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n"
    b"Connection: close\r\nX-Nri-Zeropod: scaled-down\r\n\r\nok\n"
)


class Kind(enum.Enum):
    TCP_PROBE = "tcp-probe"
    HTTP_PROBE = "http-probe"
    MORE = "need more bytes"
    TRAFFIC = "traffic"


_METHODS = (b"GET ", b"HEAD ")


def classify(data: bytes, *, eof: bool) -> Kind:
    """What ``data`` (everything read so far) is; ``eof`` means the client closed its side."""
    if not data:
        return Kind.TCP_PROBE if eof else Kind.MORE
    if not any(m.startswith(data[: len(m)]) for m in _METHODS):
        return Kind.TRAFFIC
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if eof or len(data) >= MAX_HEAD:
            return Kind.TRAFFIC
        return Kind.MORE
    head = data[:end].split(b"\r\n")
    if not any(head[0].startswith(m) for m in _METHODS) or not head[0].rstrip().split(b" ")[-1].startswith(b"HTTP/"):
        return Kind.TRAFFIC
    for line in head[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"user-agent" and value.strip().startswith(b"kube-probe/"):
            return Kind.HTTP_PROBE
    return Kind.TRAFFIC
