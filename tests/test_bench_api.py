"""The API benchmark (bench/api.py) runs end to end at a tiny size, event streams included; and
the fast paths it led to answer the same JSON as the models they bypass. The targets are the
benchmark's, at full size (64 clients, 5 s windows, 5,000 streams)."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from datetime import UTC, datetime

import orjson
import pytest

from bench.api import ENDPOINTS, ApiConfig, format_table, run_benchmark
from service.api.responses import json_bytes
from service.api.schemas import Watch, WatchCreate, render_summary, render_watch, summary_json
from service.store.codec import iso_time, pack, unpack, watch_json
from service.store.hosts import HostState

TINY = ApiConfig(clients=8, window=0.5, warmup=0.2, repeats=1, seed=20, sse=40)
NOW_MS = 1_765_170_000_123


def test_iso_time_is_the_isoformat_of_the_timestamp() -> None:
    def reference(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")

    rng = random.Random(20)
    cases = [0, 1, 999, 1000, 1001, NOW_MS, NOW_MS - 123, 2**32 * 1000 - 1, 2**32 * 1000]
    cases += [rng.randrange(0, 2**32 * 1000) for _ in range(20_000)]
    assert [iso_time(ms) for ms in cases] == [reference(ms) for ms in cases]
    assert iso_time(None) is None
    assert iso_time(NOW_MS + 0.0) == reference(NOW_MS)  # type: ignore[arg-type]


def _doc(metadata: dict[str, object], **fields: object) -> dict[str, object]:
    spec = WatchCreate.model_validate(
        {"status_url": "http://127.0.0.1:9/jobs/1", "metadata": metadata}
    ).spec()
    doc = {
        "id": "w1",
        "tenant": "t",
        "state": "pending",
        "spec": json.dumps(spec, separators=(",", ":")),
        "created_at": NOW_MS,
        "updated_at": NOW_MS + 5,
        "deadline": NOW_MS + 3_600_000,
        "next_poll_at": NOW_MS + 1000,
        **fields,
    }
    return dict(unpack(pack(doc)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "metadata, fields",
    [
        ({"video": "é.mp4"}, {}),
        ({"n": 2**70, "x": 1e300}, {}),  # beyond orjson's integers: Python's json instead
        (
            {},
            {
                "state": "completed",
                "attempts": 3,
                "progress": 100,
                "finished_at": NOW_MS + 7000,
                "last_polled_at": NOW_MS + 7000,
                "result": {"url": "https://example.com/out"},
            },
        ),
    ],
)
def test_a_watch_is_sent_as_the_model_would_send_it(
    metadata: dict[str, object], fields: dict[str, object]
) -> None:
    doc = _doc(metadata, **fields)
    sent = json.loads(json_bytes(watch_json(doc)))
    assert sent == json.loads(render_watch(doc).model_dump_json())
    assert list(sent) == list(Watch.model_fields)


def test_the_status_summary_is_sent_as_the_model_would_send_it() -> None:
    hosts = [
        HostState("a.example", 443, 19.99999, 20, "open", NOW_MS, 3, NOW_MS - 9, NOW_MS),
        HostState("b.example", 8080, 5, 20.0, "closed", None, 0, NOW_MS + 1, NOW_MS),
    ]
    counts = {"pending": -1, "completed": 3, "wh:failed": -2, "wh:delivered": 4}
    for shown in ([], hosts):
        model = render_summary(counts, shown)
        assert orjson.dumps(summary_json(counts, shown)) == model.model_dump_json().encode()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_the_benchmark_runs_at_a_tiny_size() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH")
    report = await run_benchmark(TINY)
    assert [f.endpoint for f in report.figures] == list(ENDPOINTS)
    for figure in report.figures:
        assert figure.rps > 0 and figure.errors == 0, figure
        assert figure.p99_ms >= figure.p50_ms > 0
    assert report.sse is not None
    assert report.sse.saw_end == TINY.sse, report.sse
    table = format_table(report)
    assert "healthz" in table and "SSE" in table
    json.dumps(asdict(report))
