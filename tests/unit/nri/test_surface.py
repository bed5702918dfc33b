"""Plugin identity, event masks and runtime capabilities, without a socket."""

from __future__ import annotations

from typing import Any

import pytest

from nri_zeropod.nri import Event, Plugin, RuntimeInfo, validate_identity
from nri_zeropod.nri.api import HANDLER_NAMES, VALID_EVENTS_V0_8, event_mask, events_in_mask
from nri_zeropod.nri.runtime import parse_version


@pytest.mark.parametrize("name", ["a", "logger", "zero-pod", "x_1.2+3", "A-Z"])
def test_good_names(name: str) -> None:
    validate_identity(name, "10")


@pytest.mark.parametrize("name", ["", "a b", "a/b", "ünï", "a:b", "name\n"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        validate_identity(name, "10")


@pytest.mark.parametrize("idx", ["", "1", "7", "100", "a1", "١٢", " 1", "1 ", "01\n"])
def test_bad_indexes(idx: str) -> None:
    with pytest.raises(ValueError, match="index"):
        validate_identity("ok", idx)


def test_good_indexes() -> None:
    for idx in ("00", "09", "90", "99"):
        validate_identity("ok", idx)


class Creator(Plugin):
    async def create_container(self, pod: Any, container: Any) -> None:
        return None

    async def remove_pod_sandbox(self, pod: Any) -> None:
        pass


def test_mask_from_overridden_handlers() -> None:
    plugin = Creator(name="c", idx="01")
    assert plugin.events == {Event.CREATE_CONTAINER, Event.REMOVE_POD_SANDBOX}
    assert plugin.event_mask == 0x8 | 0x4


def test_events_argument_narrows_but_cannot_widen() -> None:
    assert Creator(name="c", idx="01", events=[Event.CREATE_CONTAINER]).event_mask == 0x8
    with pytest.raises(ValueError, match="no handler for START_CONTAINER"):
        Creator(name="c", idx="01", events=[Event.START_CONTAINER])


def test_a_plugin_without_handlers_is_refused() -> None:
    with pytest.raises(ValueError, match="no event handler"):
        Plugin(name="idle", idx="01")
    with pytest.raises(ValueError):
        Creator(name="c", idx="01", events=[])


def test_every_handler_fits_the_v0_8_mask() -> None:
    assert event_mask(HANDLER_NAMES) == VALID_EVENTS_V0_8
    assert events_in_mask(0x29) == [Event.RUN_POD_SANDBOX, Event.CREATE_CONTAINER, Event.START_CONTAINER]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("2.1.9+unknown", (2, 1)), ("v2.2.0", (2, 2)), ("v0.10.0", (0, 10)), ("1.7", (1, 7)), ("dev", None), ("", None)],
)
def test_parse_version(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_version(text) == parsed


@pytest.mark.parametrize(
    ("name", "version", "nri", "args"),
    [
        ("containerd", "2.1.9+unknown", "", False),
        ("containerd", "2.0.0", "", False),
        ("containerd", "v2.2.0", "", True),
        ("containerd", "2.3.1", "", True),
        ("containerd", "garbage", "", False),
        ("cri-o", "1.34.0", "", False),  # unknown runtime: assume v0.8 features only
        ("cri-o", "1.36.0", "v0.12.1", True),  # a reported NRI version wins
        ("containerd", "2.2.0", "v0.8.0", False),
        ("fake-runtime", "v0-test", "", False),
    ],
)
def test_args_adjustment_support(name: str, version: str, nri: str, args: bool) -> None:
    info = RuntimeInfo(name=name, version=version, reported_nri_version=nri)
    assert info.supports_args_adjustment is args
    assert info.valid_events == (0x3FFF if args else 0x7FF)


def test_timeouts_default_when_not_sent() -> None:
    info = RuntimeInfo.from_configure(
        runtime_name="x", runtime_version="1", nri_version="", request_ms=0, registration_ms=-5, config=""
    )
    assert (info.request_timeout, info.registration_timeout) == (2.0, 5.0)
    info = RuntimeInfo.from_configure(
        runtime_name="x", runtime_version="1", nri_version="", request_ms=700, registration_ms=1500, config="c"
    )
    assert (info.request_timeout, info.registration_timeout, info.config) == (0.7, 1.5, "c")
