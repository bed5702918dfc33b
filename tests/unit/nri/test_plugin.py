"""The Plugin base class against the fake runtime, end to end over a unix socket."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from nri_zeropod.nri import (
    Code,
    ConnectionLost,
    ContainerAdjustment,
    ContainerUpdate,
    Plugin,
    RegistrationError,
    RpcError,
    UpdateInHandlerError,
    api,
)

from .harness import Env, Recorder, container, failing, pod, rejecting, run, stop, synchronize

E = api.Event


def test_registration_and_mask_of_a_plugin_with_every_handler() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        rt, task, mask = await env.connect(plugin)
        assert mask == 0x7FF
        assert plugin.runtime.name == "containerd" and plugin.runtime.request_timeout == 2.0
        assert plugin.runtime.supports_args_adjustment is False
        assert plugin.configured.is_set()
        await stop(plugin, task, rt)

    run(body)


def test_mask_comes_from_overridden_handlers_only() -> None:
    class OnlyCreate(Plugin):
        async def create_container(self, pod: Any, container: Any) -> None:
            return None

    async def body(env: Env) -> None:
        plugin = OnlyCreate(name="only-create", idx="05")
        rt, task, mask = await env.connect(plugin)
        assert mask == E.CREATE_CONTAINER.bit == 0x8
        await stop(plugin, task, rt)

    run(body)


def test_every_event_arrives_through_its_rpc() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        rt, task, _ = await env.connect(plugin)
        p, c = pod(), container()
        replies = [
            await rt.call("StateChange", api.StateChangeEvent(event=E.RUN_POD_SANDBOX, pod=p)),
            await rt.call("CreateContainer", api.CreateContainerRequest(pod=p, container=c)),
            await rt.call("StateChange", api.StateChangeEvent(event=E.POST_CREATE_CONTAINER, pod=p, container=c)),
            await rt.call("StateChange", api.StateChangeEvent(event=E.START_CONTAINER, pod=p, container=c)),
            await rt.call("StateChange", api.StateChangeEvent(event=E.POST_START_CONTAINER, pod=p, container=c)),
            await rt.call("UpdateContainer", api.UpdateContainerRequest(pod=p, container=c)),
            await rt.call("StateChange", api.StateChangeEvent(event=E.POST_UPDATE_CONTAINER, pod=p, container=c)),
            await rt.call("StopContainer", api.StopContainerRequest(pod=p, container=c)),
            await rt.call("StateChange", api.StateChangeEvent(event=E.REMOVE_CONTAINER, pod=p, container=c)),
            await rt.call("StateChange", api.StateChangeEvent(event=E.STOP_POD_SANDBOX, pod=p)),
            await rt.call("StateChange", api.StateChangeEvent(event=E.REMOVE_POD_SANDBOX, pod=p)),
        ]
        assert [r.code for r in replies] == [0] * 11
        names = [
            "run_pod_sandbox", "create_container", "post_create_container", "start_container",
            "post_start_container", "update_container", "post_update_container", "stop_container",
            "remove_container", "stop_pod_sandbox", "remove_pod_sandbox",
        ]
        pod_events = {"run_pod_sandbox", "stop_pod_sandbox", "remove_pod_sandbox"}
        assert plugin.seen == [(n, "web-0", None if n in pod_events else "app") for n in names]
        await stop(plugin, task, rt)

    run(body)


def test_state_change_for_an_event_with_its_own_rpc_is_answered_without_a_handler_call() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        rt, task, _ = await env.connect(plugin)
        p, c = pod(), container()
        for event in (E.CREATE_CONTAINER, E.UPDATE_CONTAINER, E.STOP_CONTAINER):
            reply = await rt.call("StateChange", api.StateChangeEvent(event=event, pod=p, container=c))
            assert reply.code == 0
        assert plugin.seen == []
        await stop(plugin, task, rt)

    run(body)


def test_handler_results_become_responses() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        update = ContainerUpdate(container_id="other")
        update.linux.resources.cpu.shares.value = 512

        async def adjust(*_: Any) -> Any:
            return ContainerAdjustment(annotations={"a": "b"}, args=["/keeper", "--", "/bin/app"])

        async def updates(*_: Any) -> Any:
            return [update]

        plugin.actions.update(create_container=adjust, update_container=updates, stop_container=updates)
        rt, task, _ = await env.connect(plugin)
        p, c = pod(), container()
        created = api.CreateContainerResponse.FromString(
            (await rt.call("CreateContainer", api.CreateContainerRequest(pod=p, container=c))).payload
        )
        assert dict(created.adjust.annotations) == {"a": "b"} and list(created.adjust.args)[0] == "/keeper"
        updated = api.UpdateContainerResponse.FromString(
            (await rt.call("UpdateContainer", api.UpdateContainerRequest(pod=p, container=c))).payload
        )
        assert list(updated.update) == [update]
        stopped = api.StopContainerResponse.FromString(
            (await rt.call("StopContainer", api.StopContainerRequest(pod=p, container=c))).payload
        )
        assert list(stopped.update) == [update]
        await stop(plugin, task, rt)

    run(body)


def test_split_synchronize_is_delivered_once() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()

        async def sync(pods: Any, containers: Any) -> Any:
            return [ContainerUpdate(container_id=c.id) for c in containers]

        plugin.actions["synchronize"] = sync
        pods = [pod(f"p{i}") for i in range(6)]
        containers = [container(f"c{i}", cid=f"id{i}") for i in range(9)]
        rt, task, _ = await env.connect(plugin)
        plugin.synced.clear()
        updates = await synchronize(rt, pods, containers, 3)  # more=true, more=true, more=false
        assert len(plugin.synced) == 1
        got_pods, got_containers = plugin.synced[0]
        assert sorted(got_pods) == sorted(p.name for p in pods)
        assert sorted(got_containers) == sorted(c.name for c in containers)
        assert sorted(u.container_id for u in updates) == sorted(c.id for c in containers)
        await stop(plugin, task, rt)

    run(body)


def test_initial_sync_split_in_chunks() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        rt, task, _ = await env.connect(plugin, pods=[pod("a"), pod("b")], containers=[container()], sync_chunks=2)
        assert plugin.synced == [(["a", "b"], ["app"])]
        await stop(plugin, task, rt)

    run(body)


@pytest.mark.parametrize("chunk", [None, 100, 1])
def test_messages_over_4096_bytes_both_ways(chunk: int | None) -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        big_value = "v" * 12_000

        async def adjust(pod: Any, container: Any) -> Any:
            assert container.annotations["big"] == big_value
            return ContainerAdjustment(annotations={"reply": big_value})

        plugin.actions["create_container"] = adjust
        rt, task, _ = await env.connect(plugin)
        c = container()
        c.annotations["big"] = big_value
        reply = await rt.call("CreateContainer", api.CreateContainerRequest(pod=pod(), container=c), chunk=chunk)
        assert reply.code == 0
        assert api.CreateContainerResponse.FromString(reply.payload).adjust.annotations["reply"] == big_value
        reply_frames = rt.frames_from_plugin[-2:]
        assert reply_frames[0] == (1, 4096) and reply_frames[1][1] > 4096  # first 4096 bytes, then the rest
        await stop(plugin, task, rt)  # checks the framing rules

    run(body, timeout=60)


def test_update_containers_from_outside_a_handler() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        rt, task, _ = await env.connect(plugin)
        want = [ContainerUpdate(container_id="c1"), ContainerUpdate(container_id="c2")]
        calling = asyncio.create_task(plugin.update_containers(want))
        call = await rt.next_call()
        assert (call.method, list(api.UpdateContainersRequest.FromString(call.payload).update)) == (
            "UpdateContainers", want,
        )
        rt.reply(call.stream_id, payload=api.UpdateContainersResponse(failed=want[1:]).SerializeToString())
        assert await calling == want[1:]

        calling = asyncio.create_task(plugin.update_containers(want))
        call = await rt.next_call()
        rt.reply(call.stream_id, code=2, message="failed to update container c2")
        with pytest.raises(RpcError) as info:
            await calling
        assert info.value.code == Code.UNKNOWN and "c2" in str(info.value)
        await stop(plugin, task, rt)

    run(body)


def test_update_containers_inside_a_handler_raises_and_a_started_task_waits() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        errors: list[BaseException] = []
        background: list[asyncio.Task[Any]] = []

        async def nested(*_: Any) -> None:
            try:
                await plugin.update_containers([ContainerUpdate(container_id="x")])
            except UpdateInHandlerError as e:
                errors.append(e)
            background.append(asyncio.create_task(plugin.update_containers([ContainerUpdate(container_id="y")])))
            await asyncio.sleep(0.05)  # give the task the chance to jump the queue; it must not

        plugin.actions["post_start_container"] = nested
        rt, task, _ = await env.connect(plugin)
        event = api.StateChangeEvent(event=E.POST_START_CONTAINER, pod=pod(), container=container())
        reply = await rt.call("StateChange", event)
        assert reply.code == 0 and len(errors) == 1
        call = await rt.next_call()
        assert call.method == "UpdateContainers"
        # nothing was sent while the event was in flight: the update follows the reply
        assert rt.received[-2:] == [f"reply {rt._next_sid - 2}", "call UpdateContainers"]
        rt.reply(call.stream_id)
        assert await background[0] == []
        await stop(plugin, task, rt)

    run(body)


def test_reject_blocks_only_blocking_events(caplog: pytest.LogCaptureFixture) -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        blocking = ("run_pod_sandbox", "create_container", "start_container", "update_container")
        for name in (*blocking, "post_start_container", "stop_container"):
            plugin.actions[name] = rejecting(f"no {name}")
        rt, task, _ = await env.connect(plugin)
        p, c = pod(), container()
        cases = [
            ("StateChange", api.StateChangeEvent(event=E.RUN_POD_SANDBOX, pod=p), "no run_pod_sandbox"),
            ("CreateContainer", api.CreateContainerRequest(pod=p, container=c), "no create_container"),
            ("StateChange", api.StateChangeEvent(event=E.START_CONTAINER, pod=p, container=c), "no start_container"),
            ("UpdateContainer", api.UpdateContainerRequest(pod=p, container=c), "no update_container"),
        ]
        for method, msg, reason in cases:
            reply = await rt.call(method, msg)
            assert (reply.code, reply.message, reply.payload) == (Code.UNKNOWN, reason, b"")
        ok = await rt.call("StateChange", api.StateChangeEvent(event=E.POST_START_CONTAINER, pod=p, container=c))
        assert ok.code == 0
        ok = await rt.call("StopContainer", api.StopContainerRequest(pod=p, container=c))
        assert ok.code == 0
        await stop(plugin, task, rt)

    with caplog.at_level(logging.INFO, logger="nri_zeropod"):
        run(body)
    assert "Reject has no effect" in caplog.text


def test_unexpected_exceptions_never_block(caplog: pytest.LogCaptureFixture) -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        for name in ("run_pod_sandbox", "create_container", "start_container", "update_container", "synchronize"):
            plugin.actions[name] = failing(RuntimeError(f"boom in {name}"))
        rt, task, _ = await env.connect(plugin)
        p, c = pod("db-1", "shop"), container("postgres")
        for method, msg in [
            ("StateChange", api.StateChangeEvent(event=E.RUN_POD_SANDBOX, pod=p)),
            ("CreateContainer", api.CreateContainerRequest(pod=p, container=c)),
            ("StateChange", api.StateChangeEvent(event=E.START_CONTAINER, pod=p, container=c)),
            ("UpdateContainer", api.UpdateContainerRequest(pod=p, container=c)),
            ("Synchronize", api.SynchronizeRequest()),
        ]:
            reply = await rt.call(method, msg)
            assert (reply.code, reply.payload) == (0, b""), method
        await stop(plugin, task, rt)

    with caplog.at_level(logging.INFO, logger="nri_zeropod"):
        run(body)
    assert "pod shop/db-1 container postgres" in caplog.text
    assert "boom in create_container" in caplog.text


def test_overrunning_handlers_answer_before_the_runtime_times_out(caplog: pytest.LogCaptureFixture) -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()

        async def hang(*_: Any) -> None:
            await asyncio.sleep(30)

        plugin.actions.update(create_container=hang, post_create_container=hang, start_container=hang)
        rt, task, _ = await env.connect(plugin, request_timeout_ms=400)
        p, c = pod(), container()
        for method, msg in [
            ("CreateContainer", api.CreateContainerRequest(pod=p, container=c)),
            ("StateChange", api.StateChangeEvent(event=E.POST_CREATE_CONTAINER, pod=p, container=c)),
            ("StateChange", api.StateChangeEvent(event=E.START_CONTAINER, pod=p, container=c)),
        ]:
            started = time.monotonic()
            reply = await rt.call(method, msg, timeout_nano=400_000_000)
            assert time.monotonic() - started < 0.4
            assert (reply.code, reply.payload) == (0, b"")
        await stop(plugin, task, rt)

    run(body)
    assert "overran" in caplog.text


def test_unknown_service_or_method_is_unimplemented() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        rt, task, _ = await env.connect(plugin)
        reply = await rt.call("RunPodSandbox", b"")  # a per-event RPC of newer runtimes
        assert (reply.code, reply.message) == (Code.UNIMPLEMENTED, "method RunPodSandbox")
        reply = await rt.call("Configure", b"", service="nri.pkg.api.v1alpha1.Other")
        assert (reply.code, reply.message) == (Code.UNIMPLEMENTED, "service nri.pkg.api.v1alpha1.Other")
        assert (await rt.call("StateChange", api.StateChangeEvent(event=13, pod=pod()))).code == 0
        await stop(plugin, task, rt)

    run(body)


def test_malformed_input_is_logged_answered_and_survived(caplog: pytest.LogCaptureFixture) -> None:
    import struct

    from nri_zeropod.nri.proto import ttrpc_pb2

    async def body(env: Env) -> None:
        plugin = Recorder()
        rt, task, _ = await env.connect(plugin)
        # garbage where a ttrpc Request should be
        sid = rt.allocate()
        bad = rt.expect_reply(sid)
        rt.send_frames(1, struct.pack(">IIBB", 3, sid, 1, 0) + b"\xff\xff\xff")
        assert (await asyncio.wait_for(bad, 5)).code == Code.INVALID_ARGUMENT
        # a valid envelope around a garbage NRI message
        assert (await rt.call("CreateContainer", b"\x0a\xff")).code == Code.INVALID_ARGUMENT
        # unknown message type, a frame for a channel nobody serves: dropped, no reply
        rt.send_frames(1, struct.pack(">IIBB", 0, rt.allocate(), 7, 0))
        rt.send_frames(9, b"whatever")
        # more than 4 MiB
        sid = rt.allocate()
        big = rt.expect_reply(sid)
        body_ = ttrpc_pb2.Request(service="x", method="y", payload=bytes(4 << 20)).SerializeToString()
        rt.send_frames(1, struct.pack(">IIBB", len(body_), sid, 1, 0) + body_)
        assert (await asyncio.wait_for(big, 10)).code == Code.RESOURCE_EXHAUSTED
        # and the plugin still works
        reply = await rt.call("StateChange", api.StateChangeEvent(event=E.RUN_POD_SANDBOX, pod=pod()))
        assert reply.code == 0 and plugin.seen[-1][0] == "run_pod_sandbox"
        await stop(plugin, task, rt)

    with caplog.at_level(logging.INFO, logger="nri_zeropod"):
        run(body, timeout=60)
    assert "conn 1 stream 5: rejected" in caplog.text
    assert "conn 9: dropped" in caplog.text
    assert "RESOURCE_EXHAUSTED" in caplog.text


def test_losing_the_connection_ends_run_with_an_error() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        rt, task, _ = await env.connect(plugin)
        waiting = asyncio.create_task(plugin.update_containers([]))
        await rt.next_call()
        await rt.close()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(task, 5)
        with pytest.raises(ConnectionLost):
            await waiting
        with pytest.raises(ConnectionLost):
            await plugin.update_containers([])

    run(body)


def test_connection_lost_during_registration() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        task = asyncio.create_task(plugin.run(env.path))
        rt = await env.server.accept()
        await rt.next_call()
        await rt.close()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(task, 5)

    run(body)


def test_registration_refused() -> None:
    async def body(env: Env) -> None:
        plugin = Recorder()
        task = asyncio.create_task(plugin.run(env.path))
        rt = await env.server.accept()
        call = await rt.next_call()
        rt.reply(call.stream_id, code=2, message='invalid plugin index "7", must be 2 digits')
        with pytest.raises(RegistrationError, match="must be 2 digits"):
            await asyncio.wait_for(task, 5)
        await rt.close()

    run(body)


def test_no_runtime_to_connect_to() -> None:
    async def body(env: Env) -> None:
        with pytest.raises(ConnectionLost, match="cannot connect"):
            await Recorder().run(env.path + ".missing")

    run(body)


def test_newer_runtime_supports_args_and_older_gets_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def body(env: Env) -> None:
        for version, supported in [("v2.2.0", True), ("2.1.9+unknown", False)]:
            plugin = Recorder()

            async def adjust(*_: Any) -> Any:
                return ContainerAdjustment(args=["/keeper"])

            plugin.actions["create_container"] = adjust
            rt, task, _ = await env.connect(plugin, runtime_version=version)
            assert plugin.runtime.supports_args_adjustment is supported
            await rt.call("CreateContainer", api.CreateContainerRequest(pod=pod(), container=container()))
            await stop(plugin, task, rt)

    with caplog.at_level(logging.INFO, logger="nri_zeropod"):
        run(body)
    assert caplog.text.count("adjusts args") == 1


def test_socket_from_nri_plugin_socket_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    async def body(env: Env) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        monkeypatch.setenv("NRI_PLUGIN_SOCKET", str(theirs.detach()))
        plugin = Recorder()
        task = asyncio.create_task(plugin.run())
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        from .fake_runtime import FakeRuntime

        rt = FakeRuntime(reader, writer)
        rt.start()
        call = await rt.next_call()
        assert call.method == "RegisterPlugin"
        rt.reply(call.stream_id)
        await asyncio.wait_for(plugin.registered.wait(), 5)
        await stop(plugin, task, rt)

    run(body)


def test_a_corrupt_trunk_ends_run_with_an_error(caplog: pytest.LogCaptureFixture) -> None:
    import struct

    async def body(env: Env) -> None:
        plugin = Recorder()
        rt, task, _ = await env.connect(plugin)
        rt.writer.write(struct.pack(">II", 1, (4 << 20) + 11))  # more than any mux frame may hold
        with pytest.raises(ConnectionLost, match="protocol error"):
            await asyncio.wait_for(task, 5)
        await rt.close()

    run(body)
    assert "more than" in caplog.text
