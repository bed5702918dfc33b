"""The frames recorded from a real runtime decode, and re-encode byte for byte."""

from __future__ import annotations

import pytest

from nri_zeropod.nri import api
from nri_zeropod.nri.errors import Code
from nri_zeropod.nri.mux import ChannelEvent, NriConnection, Side
from nri_zeropod.nri.proto import ttrpc_pb2
from nri_zeropod.nri.ttrpc import NEED_DATA, Request, Response

from . import golden


def drain(conn: NriConnection) -> list[object]:
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def test_register_plugin_is_byte_identical() -> None:
    plugin = NriConnection(Side.PLUGIN)
    payload = api.RegisterPluginRequest(plugin_name="rawA", plugin_idx="10").SerializeToString()
    request = plugin.start_request(
        service=api.RUNTIME_SERVICE, method="RegisterPlugin", payload=payload, timeout_nano=5_000_000_000
    )
    assert request.stream_id == 1
    assert plugin.send(2, request) == golden.REGISTER


def test_register_plugin_decodes_on_the_runtime_side() -> None:
    runtime = NriConnection(Side.RUNTIME)
    runtime.receive_data(golden.REGISTER)
    [event] = drain(runtime)
    assert isinstance(event, ChannelEvent) and event.conn_id == 2
    request = event.event
    assert isinstance(request, Request)
    assert (request.stream_id, request.service, request.method) == (1, api.RUNTIME_SERVICE, "RegisterPlugin")
    assert request.timeout_nano == 5_000_000_000
    msg = api.RegisterPluginRequest.FromString(request.payload)
    assert (msg.plugin_name, msg.plugin_idx) == ("rawA", "10")
    assert runtime.send(2, Response(1)) == golden.REGISTER_REPLY


def test_register_reply_decodes_as_ok() -> None:
    plugin = NriConnection(Side.PLUGIN)
    plugin.send(2, plugin.start_request(service=api.RUNTIME_SERVICE, method="RegisterPlugin"))
    plugin.receive_data(golden.REGISTER_REPLY)
    assert drain(plugin) == [ChannelEvent(2, Response(1, code=Code.OK, message="", payload=b""))]


def test_configure_request_decodes_and_reencodes() -> None:
    plugin = NriConnection(Side.PLUGIN)
    plugin.receive_data(golden.CONFIGURE)
    [event] = drain(plugin)
    assert isinstance(event, ChannelEvent) and event.conn_id == 1
    request = event.event
    assert isinstance(request, Request)
    assert (request.service, request.method) == (api.PLUGIN_SERVICE, "Configure")
    cfg = api.ConfigureRequest.FromString(request.payload)
    assert (cfg.runtime_name, cfg.runtime_version) == ("fake-runtime", "v0-test")
    assert (cfg.registration_timeout, cfg.request_timeout) == (1500, 700)
    assert cfg.SerializeToString() == golden.CONFIGURE_PAYLOAD

    runtime = NriConnection(Side.RUNTIME)
    again = runtime.start_request(
        service=request.service,
        method=request.method,
        payload=cfg.SerializeToString(),
        timeout_nano=request.timeout_nano,
    )
    assert runtime.send(1, again) == golden.CONFIGURE


def test_configure_reply_is_byte_identical() -> None:
    plugin = NriConnection(Side.PLUGIN)
    plugin.receive_data(golden.CONFIGURE)
    drain(plugin)
    mask = api.event_mask([api.Event.RUN_POD_SANDBOX, api.Event.CREATE_CONTAINER, api.Event.START_CONTAINER])
    assert mask == 0x29
    payload = api.ConfigureResponse(events=mask).SerializeToString()
    assert plugin.send(1, Response(1, payload=payload)) == golden.CONFIGURE_REPLY


def test_error_reply_data_is_byte_identical() -> None:
    response = ttrpc_pb2.Response.FromString(golden.ERROR_REPLY_DATA)
    assert (response.status.code, response.status.message) == (2, "plugin says no")
    plugin = NriConnection(Side.PLUGIN)
    plugin.receive_data(golden.CONFIGURE)
    drain(plugin)
    wire = plugin.send(1, Response(1, code=Code.UNKNOWN, message="plugin says no"))
    assert wire[8 + 10 :] == golden.ERROR_REPLY_DATA
    assert wire[:18] == bytes.fromhex("00000001 0000001e 00000014 00000001 02 00".replace(" ", ""))


@pytest.mark.parametrize("chunk", [1, 3, 8, 18, len(golden.CONFIGURE)])
def test_configure_decodes_in_any_chunking_with_trailing_bytes(chunk: int) -> None:
    trailing = golden.CONFIGURE[:13]  # the start of another message
    wire = golden.CONFIGURE + trailing
    plugin = NriConnection(Side.PLUGIN)
    got: list[object] = []
    for i in range(0, len(wire), chunk):
        plugin.receive_data(wire[i : i + chunk])
        got += drain(plugin)
    [event] = got
    assert isinstance(event, ChannelEvent) and isinstance(event.event, Request)
    assert api.ConfigureRequest.FromString(event.event.payload).SerializeToString() == golden.CONFIGURE_PAYLOAD
