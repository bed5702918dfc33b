"""Parsing of nri-zeropod's and zeropod's pod annotations."""

from __future__ import annotations

import pytest

from nri_zeropod.agent.podconfig import AnnotationError, parse_duration, parse_ports_map, policy

ON = {"nri-zeropod.dev/enabled": "true"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("30s", 30.0), ("1m", 60.0), ("1h30m", 5400.0), ("500ms", 0.5), ("1.5s", 1.5), ("2m3s", 123.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(key="k", value=text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "banana", "10", "-1s", "1d", "s", "1m x", "9999999h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(AnnotationError) as err:
        parse_duration(key="nri-zeropod.dev/scaledown-duration", value=text)
    assert "nri-zeropod.dev/scaledown-duration" in str(err.value)


def test_ports_map() -> None:
    assert parse_ports_map(key="k", value="c1=80,81;c2=8080") == {"c1": (80, 81), "c2": (8080,)}
    assert parse_ports_map(key="k", value=" web = 443 ; ") == {"web": (443,)}


@pytest.mark.parametrize("text", ["", "c1", "c1=", "c1=0", "c1=70000", "c1=http", "C1=80", "c1=80;c1=81", "=80"])
def test_bad_ports_map(text: str) -> None:
    with pytest.raises(AnnotationError):
        parse_ports_map(key="k", value=text)


def test_disabled_by_default_and_enabled_by_annotation() -> None:
    assert not policy({}, "app").managed
    p = policy(ON, "app")
    assert p.managed and p.scaledown_seconds == 60.0 and p.ports is None and p.probe_detection


def test_namespace_enable_and_pod_opt_out() -> None:
    assert policy({}, "app", namespace_enabled=True).managed
    assert not policy({"nri-zeropod.dev/enabled": "false"}, "app", namespace_enabled=True).managed


def test_container_names_select() -> None:
    ann = {**ON, "zeropod.ctrox.dev/container-names": "a,b"}
    assert policy(ann, "a").managed and policy(ann, "b").managed
    assert not policy(ann, "c").managed


def test_zeropod_aliases_and_our_prefix_wins() -> None:
    ann = {**ON, "zeropod.ctrox.dev/scaledown-duration": "10s", "zeropod.ctrox.dev/ports-map": "app=8080",
           "zeropod.ctrox.dev/disable-probe-detection": "true"}
    p = policy(ann, "app")
    assert p.scaledown_seconds == 10.0 and p.ports == (8080,) and not p.probe_detection
    ann["nri-zeropod.dev/scaledown-duration"] = "20s"
    assert policy(ann, "app").scaledown_seconds == 20.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("nri-zeropod.dev/enabled", "maybe"),
        ("nri-zeropod.dev/enabled", ""),
        ("nri-zeropod.dev/container-names", "Bad_Name"),
        ("nri-zeropod.dev/container-names", ","),
        ("zeropod.ctrox.dev/disable-probe-detection", "yes please"),
        ("nri-zeropod.dev/scaledown-duration", "x" * 5000),
    ],
)
def test_every_bad_value_is_an_error_naming_key_and_value(key: str, value: str) -> None:
    with pytest.raises(AnnotationError) as err:
        policy({**ON, key: value}, "app")
    assert err.value.key == key and err.value.value == value
    assert key in str(err.value)


def test_bad_values_are_reported_even_for_pods_not_enabled() -> None:
    with pytest.raises(AnnotationError):
        policy({"nri-zeropod.dev/scaledown-duration": "soon"}, "app")
