"""The simulator's provider shapes, required header and callback pushes (issue 19)."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from client.simulator import (
    SHAPES,
    SIMULATOR,
    SimulatorConfig,
    add_arguments,
    config_from_args,
    create_app,
    error_message,
    result_url,
)
from tests.test_simulator import Client, Clock, get_json, serve


async def post_json(client: Client, path: str, body: Any) -> tuple[int, Any]:
    async with client.post(path, json=body) as response:
        return response.status, await response.json()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 3.0) -> None:
    """Poll `check` until it holds, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_the_shapes_are_the_presets() -> None:
    assert list(SHAPES) == [
        "vtwatch",
        "heygen",
        "elevenlabs-dubbing",
        "synthesia",
        "assemblyai",
        "google-lro",
        "azure-lro",
    ]
    assert all(shape.doc for shape in SHAPES.values())


# For each shape: (pending body at half-time, completed body, error body) of job "j1".
URL, MESSAGE = result_url("j1"), error_message("j1")
EXPECTED: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "vtwatch": ({"result": "pending"}, {"result": "completed"}, {"result": "error"}),
    "heygen": (
        {
            "code": 100,
            "message": "Success",
            "data": {
                "id": "j1",
                "video_id": "j1",
                "status": "processing",
                "video_url": None,
                "thumbnail_url": None,
                "error": None,
            },
        },
        {
            "code": 100,
            "message": "Success",
            "data": {
                "id": "j1",
                "video_id": "j1",
                "status": "completed",
                "video_url": URL,
                "thumbnail_url": None,
                "error": None,
            },
        },
        {
            "code": 100,
            "message": "Success",
            "data": {
                "id": "j1",
                "video_id": "j1",
                "status": "failed",
                "video_url": None,
                "thumbnail_url": None,
                "error": {"code": 40119, "message": MESSAGE, "detail": "j1"},
            },
        },
    ),
    "elevenlabs-dubbing": (
        {
            "dubbing_id": "j1",
            "name": "simulated dub j1",
            "status": "dubbing",
            "target_languages": ["es"],
        },
        {
            "dubbing_id": "j1",
            "name": "simulated dub j1",
            "status": "dubbed",
            "target_languages": ["es"],
            "media_metadata": {"content_type": "video/mp4", "duration": 1.0},
        },
        {
            "dubbing_id": "j1",
            "name": "simulated dub j1",
            "status": "failed",
            "target_languages": ["es"],
            "error": MESSAGE,
        },
    ),
    "synthesia": (
        {"id": "j1", "title": "simulated j1", "status": "in_progress"},
        {"id": "j1", "title": "simulated j1", "status": "complete", "download": URL},
        {"id": "j1", "title": "simulated j1", "status": "error"},
    ),
    "assemblyai": (
        {"id": "j1", "status": "processing", "text": None},
        {"id": "j1", "status": "completed", "text": "simulated transcript of job j1"},
        {"id": "j1", "status": "error", "text": None, "error": MESSAGE},
    ),
    "google-lro": (
        {"name": "operations/j1", "metadata": {"progressPercent": 50}, "done": False},
        {
            "name": "operations/j1",
            "metadata": {"progressPercent": 100},
            "done": True,
            "response": {"uri": URL},
        },
        {
            "name": "operations/j1",
            "metadata": {"progressPercent": 100},
            "done": True,
            "error": {"code": 13, "message": MESSAGE},
        },
    ),
    "azure-lro": (
        {"id": "j1", "status": "Running", "percentComplete": 50},
        {"id": "j1", "status": "Succeeded", "percentComplete": 100, "result": {"url": URL}},
        {
            "id": "j1",
            "status": "Failed",
            "percentComplete": 100,
            "error": {"code": "InternalServerError", "message": MESSAGE},
        },
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("outcome", ["completed", "error"])
@pytest.mark.parametrize("per_job", [False, True], ids=["config", "job"])
async def test_each_shape_serves_pending_then_its_terminal_body(
    shape: str, outcome: str, per_job: bool
) -> None:
    pending, completed, error = EXPECTED[shape]
    clock = Clock()
    config = {} if per_job else {"shape": shape}
    async with serve(clock, **config) as client:
        body = {"duration": 10, "outcome": outcome} | ({"shape": shape} if per_job else {})
        status, job = await post_json(client, "/jobs", body)
        assert status == 201 and job["id"] == "j1"
        assert job.get("shape", "vtwatch") == shape
        clock.advance(5)
        assert await get_json(client, f"/jobs/{job['id']}/status") == (200, pending)
        clock.advance(5)
        terminal = completed if outcome == "completed" else error
        assert await get_json(client, f"/jobs/{job['id']}/status") == (200, terminal)
        assert await get_json(client, f"/jobs/{job['id']}/status") == (200, terminal)


@pytest.mark.parametrize("shape", sorted(set(SHAPES) - {"vtwatch"}))
def test_results_and_error_messages_are_deterministic_and_carried(shape: str) -> None:
    """Every provider body carries the video URL or transcript on success, and all but
    Synthesia's (which has no message field) carry the job's own error message on failure."""
    _, completed, error = EXPECTED[shape]
    assert (
        URL in str(completed)
        or "transcript of job j1" in str(completed)
        or (shape == "elevenlabs-dubbing" and completed["status"] == "dubbed")
    )
    assert MESSAGE in str(error) or shape == "synthesia"
    assert MESSAGE == "simulated failure of job j1"
    assert URL == "https://cdn.example/videos/j1.mp4"


@pytest.mark.parametrize(
    ("shape", "early"),
    [
        ("heygen", {"status": "waiting"}),
        ("assemblyai", {"status": "queued"}),
        ("azure-lro", {"status": "NotStarted", "percentComplete": 10}),
    ],
)
async def test_early_pending_states(shape: str, early: dict[str, Any]) -> None:
    clock = Clock()
    async with serve(clock, shape=shape) as client:
        _, job = await post_json(client, "/jobs", {"duration": 10})
        clock.advance(1)
        _, body = await get_json(client, f"/jobs/{job['id']}/status")
        assert early.items() <= body.get("data", body).items()


async def test_google_lro_leaves_done_out_early_on() -> None:
    clock = Clock()
    async with serve(clock, shape="google-lro") as client:
        _, job = await post_json(client, "/jobs", {"duration": 10})
        clock.advance(1)
        _, body = await get_json(client, f"/jobs/{job['id']}/status")
        assert body == {"name": "operations/j1", "metadata": {"progressPercent": 10}}


async def test_default_job_and_faults_keep_working_in_a_shape() -> None:
    clock = Clock()
    async with serve(clock, shape="azure-lro", delay=2.0, outcome="error") as client:
        assert (await get_json(client, "/status"))[1]["status"] == "NotStarted"
        clock.advance(2)
        _, body = await get_json(client, "/status")
        assert (body["status"], body["error"]["message"]) == ("Failed", error_message("default"))
        _, job = await post_json(client, "/jobs", {"duration": 1, "fail_rate": 1.0})
        assert (await get_json(client, f"/jobs/{job['id']}/status"))[0] == 503


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"duration": 1, "shape": "aws"}, "shape"),
        ({"duration": 1, "callback_url": "ftp://x"}, "callback_url"),
        ({"duration": 1, "callback_url": 3}, "callback_url"),
        ({"duration": 1, "callback_loss_rate": 2}, "callback_loss_rate"),
        ({"duration": 1, "callback_delay": -1}, "callback_delay"),
        ({"jobs": [{"duration": 1}, {"duration": 1, "shape": 1}]}, "jobs[1].shape"),
    ],
)
async def test_bad_shape_or_callback_fields_are_400(body: Any, field: str) -> None:
    async with serve() as client:
        status, answer = await post_json(client, "/jobs", body)
        assert status == 400 and answer["detail"].startswith(f"{field}:")


async def test_required_header_answers_401_without_it_and_200_with_it() -> None:
    clock = Clock()
    async with serve(clock, require_header="X-Api-Key: secret", shape="heygen") as client:
        status, job = await post_json(client, "/jobs", {"duration": 1})
        assert status == 201  # only status requests are protected
        url = f"/jobs/{job['id']}/status"
        status, body = await get_json(client, url)
        assert status == 401 and "X-Api-Key" in body["detail"]
        assert (await get_json(client, url, headers={"X-Api-Key": "wrong"}))[0] == 401
        assert (await get_json(client, "/status"))[0] == 401
        assert (await get_json(client, "/jobs/nope/status"))[0] == 401  # before the 404
        status, body = await get_json(client, url, headers={"x-api-key": "secret"})
        assert (status, body["data"]["status"]) == (200, "waiting")
        assert (await get_json(client, "/jobs/nope/status", headers={"X-Api-Key": "secret"}))[
            0
        ] == 404
        _, details = await get_json(client, f"/jobs/{job['id']}")
        assert (details["unauthorized"], details["requests"]) == (2, 1)
        _, stats = await get_json(client, "/stats")
        assert stats["by_status"] == {"200": 1, "401": 4, "404": 1}
        assert stats["requests"] == 6


@pytest.mark.parametrize("header", ["X-Api-Key", "X-Api-Key:", ": v", " X: v", "X:  "])
def test_required_header_must_be_name_colon_value(header: str) -> None:
    with pytest.raises(ValueError, match="require_header"):
        SimulatorConfig(require_header=header)


@asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[tuple[str, list[tuple[float, Any]]]]:
    """A local webhook receiver: its URL and the (arrival time, JSON body) of each POST."""
    received: list[tuple[float, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((time.monotonic(), await request.json()))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with TestServer(app) as server:
        yield str(server.make_url("/hook")), received


async def stats_of(client: Client) -> dict[str, int]:
    callbacks: dict[str, int] = (await get_json(client, "/stats"))[1]["callbacks"]
    return callbacks


@pytest.mark.parametrize(
    ("shape", "outcome", "push"),
    [
        ("vtwatch", "completed", {"id": "j1", "result": "completed"}),
        ("assemblyai", "error", {"transcript_id": "j1", "status": "error"}),
        (
            "heygen",
            "completed",
            {
                "event_type": "avatar_video.success",
                "event_data": {"video_id": "j1", "url": URL, "callback_id": None},
            },
        ),
        (
            "heygen",
            "error",
            {
                "event_type": "avatar_video.fail",
                "event_data": {"video_id": "j1", "msg": MESSAGE, "callback_id": None},
            },
        ),
        ("synthesia", "completed", {"type": "video.completed", "data": EXPECTED["synthesia"][1]}),
        ("google-lro", "error", EXPECTED["google-lro"][2]),
    ],
)
async def test_a_job_with_a_callback_url_is_pushed_when_it_ends_without_polls(
    shape: str, outcome: str, push: dict[str, Any]
) -> None:
    async with receiver() as (url, received), serve(time.monotonic, shape=shape) as client:
        started = time.monotonic()
        body = {"duration": 0.2, "outcome": outcome, "callback_url": url}
        assert (await post_json(client, "/jobs", body))[0] == 201
        assert await stats_of(client) == {"scheduled": 1, "sent": 0, "lost": 0, "failed": 0}
        await eventually(lambda: _holds(len(received) == 1))
        arrived, pushed = received[0]
        assert arrived - started >= 0.2
        assert pushed == push
        assert await stats_of(client) == {"scheduled": 0, "sent": 1, "lost": 0, "failed": 0}
        _, details = await get_json(client, "/jobs/j1")
        assert (details["requests"], details["callback"], details["callback_url"]) == (
            0,
            "sent",
            url,
        )


async def _holds(value: bool) -> bool:
    return value


async def test_callback_delay_is_respected() -> None:
    async with (
        receiver() as (url, received),
        serve(time.monotonic, callback_delay=0.4) as client,
    ):
        started = time.monotonic()
        await post_json(client, "/jobs", {"duration": 0.1, "callback_url": url})
        await eventually(lambda: _holds(bool(received)))
        assert received[0][0] - started >= 0.5
        # per job too
        started = time.monotonic()
        body = {"duration": 0.1, "callback_url": url, "callback_delay": 0}
        await post_json(client, "/jobs", body)
        await eventually(lambda: _holds(len(received) == 2))
        assert 0.1 <= received[1][0] - started < 0.4


async def test_all_pushes_lost_at_loss_rate_one() -> None:
    async with (
        receiver() as (url, received),
        serve(time.monotonic, callback_loss_rate=1.0, seed=1) as client,
    ):
        await post_json(client, "/jobs", {"jobs": [{"duration": 0.1, "callback_url": url}] * 3})

        async def all_lost() -> bool:
            return (await stats_of(client))["lost"] == 3

        await eventually(all_lost)
        assert received == []
        assert (await get_json(client, "/jobs/j2"))[1]["callback"] == "lost"


async def test_a_failed_push_is_counted_once_and_not_retried() -> None:
    async with (
        receiver(status=500) as (url, received),
        serve(time.monotonic) as client,
    ):
        bodies = [{"duration": 0.05, "callback_url": u} for u in (url, "http://127.0.0.1:9/x")]
        await post_json(client, "/jobs", {"jobs": bodies})

        async def both_failed() -> bool:
            return (await stats_of(client))["failed"] == 2

        await eventually(both_failed)
        assert len(received) == 1
        assert (await get_json(client, "/status"))[0] == 200  # the server lives on


async def test_shutdown_and_reset_cancel_pushes_not_yet_sent() -> None:
    app = create_app(SimulatorConfig())
    sim = app[SIMULATOR]
    async with TestClient(TestServer(app)) as client:
        body = {"duration": 60, "callback_url": "http://127.0.0.1:9/x"}
        await post_json(client, "/jobs", body)
        assert len(sim.pushes) == 1
        await post_json(client, "/reset", {})
        await eventually(lambda: _holds(not sim.pushes))
        assert await stats_of(client) == {"scheduled": 0, "sent": 0, "lost": 0, "failed": 0}
        await post_json(client, "/jobs", body)
        tasks = set(sim.pushes)
    assert all(task.cancelled() for task in tasks) and not sim.pushes
    assert sim.session is None


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_flags_build_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    config = config_from_args(
        parse(
            "--shape",
            "google-lro",
            "--require-header",
            "X-Api-Key: secret",
            "--callback-delay",
            "2.5",
            "--callback-loss-rate",
            "0.25",
        )
    )
    assert (config.shape, config.require_header) == ("google-lro", "X-Api-Key: secret")
    assert (config.callback_delay, config.callback_loss_rate) == (2.5, 0.25)
    assert config.required_header() == ("X-Api-Key", "secret")
    for argv in (
        ["--shape", "aws"],
        ["--require-header", "nocolon"],
        ["--callback-loss-rate", "2"],
    ):
        with pytest.raises(SystemExit) as exc:
            parse(*argv)
        assert exc.value.code == 2


def test_vtwatch_simulate_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--shape", "--require-header", "--callback-delay", "--callback-loss-rate"):
        assert flag in out
    assert "azure-lro" in out
