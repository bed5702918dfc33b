"""What the plugin knows about the runtime it is connected to.

Everything comes from ConfigureRequest. NRI v0.8 and v0.10 have no version
handshake, so the NRI API level is inferred from the runtime's name and
version (containerd 2.2 ships NRI v0.10, 2.0 and 2.1 ship v0.8); a runtime
newer than that also reports its NRI version in Configure, which wins when
present. Unknown runtimes are assumed to have only v0.8 features: guessing
too low costs a feature, guessing too high loses an adjustment silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .api import VALID_EVENTS_V0_8, VALID_EVENTS_V0_10

# Runtimes whose NRI level is known from their own version: (runtime minimum, NRI level).
_KNOWN_RUNTIMES: dict[str, list[tuple[tuple[int, int], tuple[int, int]]]] = {
    "containerd": [((2, 2), (0, 10)), ((0, 0), (0, 8))],
}

_VERSION = re.compile(r"v?(\d+)\.(\d+)")

# containerd's defaults for plugin_request_timeout / plugin_registration_timeout,
# used until (or unless) Configure says otherwise.
DEFAULT_REQUEST_TIMEOUT = 2.0
DEFAULT_REGISTRATION_TIMEOUT = 5.0


def parse_version(text: str) -> tuple[int, int] | None:
    """``"2.1.9+unknown"``, ``"v0.10.0"`` -> (major, minor); None if unparseable."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class RuntimeInfo:
    """The runtime as described by Configure. Timeouts are in seconds."""

    name: str = ""
    version: str = ""
    reported_nri_version: str = ""  # only runtimes newer than NRI v0.10 send one
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    registration_timeout: float = DEFAULT_REGISTRATION_TIMEOUT
    config: str = ""

    @classmethod
    def from_configure(
        cls,
        *,
        runtime_name: str,
        runtime_version: str,
        nri_version: str,
        request_ms: int,
        registration_ms: int,
        config: str,
    ) -> RuntimeInfo:
        # 0 (or garbage below it) means "not sent": keep containerd's defaults.
        return cls(
            name=runtime_name,
            version=runtime_version,
            reported_nri_version=nri_version,
            request_timeout=request_ms / 1000 if request_ms > 0 else DEFAULT_REQUEST_TIMEOUT,
            registration_timeout=registration_ms / 1000 if registration_ms > 0 else DEFAULT_REGISTRATION_TIMEOUT,
            config=config,
        )

    @property
    def nri_api(self) -> tuple[int, int]:
        """The NRI API level to program against: reported, inferred, or (0, 8)."""
        reported = parse_version(self.reported_nri_version)
        if reported is not None:
            return reported
        own = parse_version(self.version)
        for minimum, level in _KNOWN_RUNTIMES.get(self.name, []):
            if own is not None and own >= minimum:
                return level
        return (0, 8)

    @property
    def supports_args_adjustment(self) -> bool:
        """Whether ContainerAdjustment.args is applied (NRI >= 0.10, containerd >= 2.2)."""
        return self.nri_api >= (0, 10)

    @property
    def valid_events(self) -> int:
        """The widest event mask the runtime accepts in ConfigureResponse."""
        return VALID_EVENTS_V0_10 if self.nri_api >= (0, 10) else VALID_EVENTS_V0_8

    def describe(self) -> str:
        nri = ".".join(map(str, self.nri_api))
        return f"{self.name or '?'} {self.version or '?'} (NRI API {nri}, request timeout {self.request_timeout:g}s)"
