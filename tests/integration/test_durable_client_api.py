"""The SDK's own DurableOrchestrationClient, unchanged, against the local Durable client API over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import azure.durable_functions as df
import azure.functions as func
import pytest
from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus

from local.clock import VirtualClock
from local.durable import DurableRunner
from local.functions_host import run_in_worker_loop
from tests.unit import durable_app


@pytest.fixture
def runner():
    durable_app.reset()
    with DurableRunner(durable_app.app, VirtualClock(), task_hub="TestHub") as running:
        yield running


def run(scenario):
    """On the Functions runner's one worker loop: the SDK keeps one aiohttp session per
    process, bound to the loop that made it, exactly as in the Python worker."""
    return run_in_worker_loop(scenario)


def test_starter_calls_start_query_raise_and_list(runner):
    client = df.DurableOrchestrationClient(runner.client_binding_json())

    async def scenario():
        started = await client.start_new("with_status", "api-1", {"machines": 3})
        waiting = await client.get_status(started)
        runner.run_until_idle(5)
        running = await client.get_status(started)
        await client.raise_event(started, "go", "approved")
        runner.wait_for_completion(started, timeout=5)
        done = await client.get_status(started)
        missing = await client.get_status("no-such-instance")
        listed = await client.get_status_all()
        completed = await client.get_status_by(runtime_status=[OrchestrationRuntimeStatus.Completed])
        return started, waiting, running, done, missing, listed, completed

    started, waiting, running, done, missing, listed, completed = run(scenario())
    assert started == "api-1"
    assert waiting.runtime_status in (OrchestrationRuntimeStatus.Pending, OrchestrationRuntimeStatus.Running)
    assert waiting.input_ == {"machines": 3}
    assert running.custom_status == {"stage": "waiting"}
    assert done.runtime_status == OrchestrationRuntimeStatus.Completed
    # The SDK client encodes event data twice and the extension decodes once: a str arrives as JSON text.
    assert done.output == '"approved"'
    assert not missing and missing.runtime_status is None  # what starters test before starting
    assert [s.instance_id for s in listed] == ["api-1"]
    assert [s.name for s in completed] == ["with_status"]


def test_starter_calls_terminate_purge_and_duplicate_start(runner):
    client = df.DurableOrchestrationClient(runner.client_binding_json())

    async def scenario():
        await client.start_new("with_status", "api-2")
        with pytest.raises(Exception, match="already"):
            await client.start_new("with_status", "api-2")
        runner.run_until_idle(5)
        await client.terminate("api-2", "operator said stop")
        terminated = await client.get_status("api-2")
        with pytest.raises(Exception, match="gone"):
            await client.raise_event("api-2", "go", 1)
        purged = await client.purge_instance_history("api-2")
        return terminated, purged

    terminated, purged = run(scenario())
    assert terminated.runtime_status == OrchestrationRuntimeStatus.Terminated
    assert terminated.output == "operator said stop"
    assert purged.instances_deleted == 1
    assert runner.get_status("api-2") is None


def test_an_instance_id_azure_refuses_is_answered_400_and_raised_by_the_sdk(runner):
    client = df.DurableOrchestrationClient(runner.client_binding_json())

    async def scenario():
        for bad, rule in (("@entity@key", "must not start with '@'"), ("x" * 257, "must not exceed 256")):
            with pytest.raises(Exception, match=rule):  # the SDK raises the 400's ExceptionMessage
                await client.start_new("with_status", bad)

    run(scenario())
    request = urllib.request.Request(
        client_origin(runner) + "durabletask/orchestrators/with_status/@entity@key", data=b"", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400
    body = json.loads(refused.value.read())
    assert body["Message"] == "One or more of the arguments submitted is incorrect"  # the extension's words
    assert "must not start with '@'" in body["ExceptionMessage"]
    assert runner.list_instances() == []


def test_check_status_response_links_work_over_http(runner):
    client = df.DurableOrchestrationClient(runner.client_binding_json())
    instance_id = run(client.start_new("sleeper", None, 1))
    runner.wait_for_completion(instance_id, timeout=5)
    request = func.HttpRequest("POST", "http://localhost:7071/api/start", body=b"")
    response = client.create_check_status_response(request, instance_id)
    assert response.status_code == 202
    links = json.loads(response.get_body())
    assert links["id"] == instance_id
    # The links carry the request's origin, as in Azure; here they are served by the runner's API.
    status_url = links["statusQueryGetUri"].replace("http://localhost:7071/", client_origin(runner))
    with urllib.request.urlopen(status_url) as reply:
        body = json.loads(reply.read())
    assert reply.status == 200
    assert body["runtimeStatus"] == "Completed"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(client_origin(runner) + "durabletask/instances/nobody")
    assert missing.value.code == 404


def client_origin(runner):
    rpc = json.loads(runner.client_binding_json())["rpcBaseUrl"]
    return rpc[: -len("durabletask/")]
