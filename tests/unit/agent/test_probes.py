"""Probe classification on the bytes a connection brought."""

from __future__ import annotations

import pytest

from nri_zeropod.agent.probes import MAX_HEAD, Kind, classify

PROBE = b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.5:8080\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n\r\n"


def test_connect_then_close_is_a_tcp_probe() -> None:
    assert classify(b"", eof=True) is Kind.TCP_PROBE
    assert classify(b"", eof=False) is Kind.MORE


def test_kubelet_http_probe() -> None:
    assert classify(PROBE, eof=False) is Kind.HTTP_PROBE
    assert classify(PROBE.replace(b"User-Agent", b"user-agent"), eof=False) is Kind.HTTP_PROBE
    assert classify(PROBE.replace(b"GET", b"HEAD"), eof=False) is Kind.HTTP_PROBE


@pytest.mark.parametrize("cut", [1, 5, 20, len(PROBE) - 1])
def test_partial_request_needs_more_then_traffic_at_eof(cut: int) -> None:
    assert classify(PROBE[:cut], eof=False) is Kind.MORE
    assert classify(PROBE[:cut], eof=True) is Kind.TRAFFIC


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8.0\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nUser-Agent: kube-probe/1.34\r\n\r\n",
        b"*1\r\n$4\r\nPING\r\n",  # redis
        b"\x16\x03\x01\x02\x00",  # TLS client hello
        b"GET / HTTP/1.1\r\nUser-Agent: not-kube-probe/1\r\n\r\n",
        b"GETX / HTTP/1.1\r\nUser-Agent: kube-probe/1.34\r\n\r\n",
    ],
)
def test_everything_else_is_traffic(data: bytes) -> None:
    assert classify(data, eof=False) is Kind.TRAFFIC


def test_oversized_head_is_traffic() -> None:
    assert classify(b"GET /" + b"a" * MAX_HEAD, eof=False) is Kind.TRAFFIC
