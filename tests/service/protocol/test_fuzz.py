"""A fuzz run of the Open Inference Protocol's routes: schemathesis generates requests from the
service's own OpenAPI schema (valid and invalid ones), then the hostile cases of
``tests/service/test_hostile.py`` (Triton's qa/L0_http among them) are replayed, all against
``fcn-serve`` in a process of its own on a loopback port. No answer is a 5xx, the service is
ready after every case, and its resident memory ends within 50 MB of where it started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import hypothesis
import hypothesis.configuration
import pytest
import schemathesis
from hypothesis import HealthCheck

from tests.service.support import Server, exchange, launch
from tests.service.test_hostile import CASES

pytestmark = pytest.mark.slow

EXAMPLES = 40  # per operation and generation mode: bounded, the run stays well under a minute
RSS_SLACK_MB = 50


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``fcn-serve`` on the tiny model on a free loopback port, ready."""
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    server = launch(
        model_path,
        log,
        warmup_sizes="16x16",
        intra_op_threads="2",
        max_upload_bytes=str(2 * 2**20),
        upload_timeout_s="2",
        access_log="false",
    )
    yield server
    server.stop()


def test_no_5xx_and_ready_after_every_case_and_memory_comes_back(
    server: Server, tmp_path: Path
) -> None:
    url, pid = server.url, server.process.pid
    # Hypothesis caches what it learns in .hypothesis/ of the working directory: not here.
    hypothesis.configuration.set_hypothesis_home_dir(tmp_path / ".hypothesis")
    client = httpx.Client(base_url=url, timeout=30)

    def check_ready(what: str) -> None:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 200, f"not ready after {what}: {ready.text}"

    # Warm every path once, so the baseline holds what a served request leaves allocated.
    check_ready("start")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json").include(path_regex="^/v2")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8  # metadata, readiness and infer, with and without version
    started_mb = rss_mb(pid)
    calls = 0

    for operation in operations:
        for mode in schemathesis.GenerationMode:

            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                response = case.call(base_url=url, timeout=30)
                calls += 1
                assert response.status_code < 500, (case.as_curl_command(), response.text)
                check_ready(case.as_curl_command())

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # No parameter and no body (GET /v2): nothing to make invalid.
                assert mode is schemathesis.GenerationMode.NEGATIVE

    for name, (parts, _) in CASES.items():
        reply = exchange(server.port, *parts)
        assert reply.status < 500, (name, reply.body[:300])
        check_ready(name)
    client.close()
    ended_mb = rss_mb(pid)
    print(
        f"{calls} generated requests, {len(CASES)} hostile cases; RSS {started_mb:.0f} MB -> "
        f"{ended_mb:.0f} MB"
    )
    assert calls >= 4 * EXAMPLES  # at least the two infer routes, valid and invalid
    assert ended_mb - started_mb < RSS_SLACK_MB
