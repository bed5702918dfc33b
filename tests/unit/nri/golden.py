"""Byte vectors recorded from a real NRI v0.8 runtime (reference nri-protocol.md §2.5)."""

from __future__ import annotations


def h(*parts: str | bytes) -> bytes:
    """Hex fields and quoted strings, concatenated: h("0a1c", b"nri...")."""
    out = b""
    for part in parts:
        out += part if isinstance(part, bytes) else bytes.fromhex(part.replace(" ", ""))
    return out


REGISTER_MUX = h("00000002 0000004a")
REGISTER_TTRPC = h(
    "00000040 00000001 01 00",
    "0a1c", b"nri.pkg.api.v1alpha1.Runtime",
    "120e", b"RegisterPlugin",
    "1a0a", "0a04", b"rawA", "1202", b"10",
    "20 80e497d012",
)
REGISTER = REGISTER_MUX + REGISTER_TTRPC

REGISTER_REPLY = h("00000002 0000000a", "00000000 00000001 02 00")

CONFIGURE_PAYLOAD = h("120c", b"fake-runtime", "1a07", b"v0-test", "20 dc0b", "28 bc05")
CONFIGURE_TTRPC = h(
    "0000004d 00000001 01 00",
    "0a1b", b"nri.pkg.api.v1alpha1.Plugin",
    "1209", b"Configure",
    "1a1d", CONFIGURE_PAYLOAD,
    "20 d480decd02",
)
CONFIGURE = h("00000001 00000057") + CONFIGURE_TTRPC

CONFIGURE_REPLY_TTRPC = h("00000004 00000001 02 00", "12 02", "10 29")
CONFIGURE_REPLY = h("00000001 0000000e") + CONFIGURE_REPLY_TTRPC

# The reference elides the header of the error reply; only the Response data is given.
ERROR_REPLY_DATA = h("0a 12", "08 02", "12 0e", b"plugin says no")
