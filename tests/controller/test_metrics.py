"""The operator's Prometheus endpoint counts what happened: a build through the real operator, then a scrape."""
import pytest
from test_operator_builds import first_job, phase, succeed

from scrape import delta, scrape

from kubefake import KubeFake, eventually, operator
from registries import free_port

pytestmark = [pytest.mark.operator, pytest.mark.registry, pytest.mark.kmock(cls=KubeFake)]


async def test_a_build_is_counted_started_and_succeeded_with_its_duration_and_cache_steps(cluster, basic_registry,
                                                                                         monkeypatch):
    port = free_port()
    monkeypatch.setenv("KILN_METRICS_PORT", str(port))
    monkeypatch.setenv("KILN_METRICS_ADDRESS", "127.0.0.1")
    async with operator():
        before = await eventually(lambda: scrape(port), message="the metrics endpoint answers")
        job = await first_job(cluster, basic_registry)
        await succeed(cluster, job)
        await phase(cluster, "Succeeded")
        after = scrape(port)
    assert delta(after, before, "kiln_builds_started_total") == 1
    assert delta(after, before, "kiln_builds_succeeded_total") == 1
    assert delta(after, before, "kiln_build_duration_seconds_count", cache="registry", strategy="qemu", result="succeeded") == 1
    assert delta(after, before, "kiln_registry_verifications_total", result="Verified") >= 1
    assert delta(after, before, "kiln_api_requests_total", method="POST") >= 2  # the Secret, the Job
    assert delta(after, before, "kiln_reconcile_errors_total", kind="ImageBuild") == 0


async def test_the_resync_counts_the_builds_running_and_goes_on_round_after_round(cluster, basic_registry, monkeypatch):
    """The gauges are set at the end of each resync round (KILN_RESYNC_INTERVAL=1 here): a running build shows, and
    a later round shows it finished, so the loop survived its rounds."""
    port = free_port()
    monkeypatch.setenv("KILN_METRICS_PORT", str(port))
    monkeypatch.setenv("KILN_METRICS_ADDRESS", "127.0.0.1")
    async with operator():
        job = await first_job(cluster, basic_registry)
        await eventually(lambda: (scrape(port) or {}).get(("kiln_builds_running", ())) == 1,
                         message="a resync round counts the build running")
        await succeed(cluster, job)
        await phase(cluster, "Succeeded")
        await eventually(lambda: (scrape(port) or {}).get(("kiln_builds_running", ())) == 0,
                         message="a later round counts it no more")
