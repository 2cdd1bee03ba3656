"""Events are posted in the background: a reconcile never waits for one, and none is lost to another's failure."""
import asyncio
import logging

from kiln.clients.events import Recorder
from kiln.clients.kube import KubeError

BUILD = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "app", "namespace": "team"}}


class SlowKube:
    """An API server that answers event posts only when let through, and may refuse some."""

    def __init__(self, refuse: tuple[str, ...] = ()):
        self.posted: list[tuple[str, str]] = []
        self.in_flight = self.most_in_flight = 0
        self.open = asyncio.Event()
        self.refuse = refuse

    async def post_event(self, obj: dict, kind: str, reason: str, message: str, when: str) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.open.wait()
            if reason in self.refuse:
                raise KubeError(403, "events is forbidden")
            self.posted.append((reason, when))
        finally:
            self.in_flight -= 1


async def test_recording_waits_for_no_api_server_and_events_are_posted_in_order_one_at_a_time():
    kube = SlowKube()
    recorder = Recorder(kube)
    for reason in ("BuildStarted", "BuildSucceeded", "CacheUsed"):
        recorder.record(BUILD, "Normal", reason, "...")  # returns at once: nothing is posted yet
    assert kube.posted == []
    sender = asyncio.create_task(recorder.run())
    try:
        kube.open.set()
        await recorder.flush(timeout=5)
        assert [reason for reason, _ in kube.posted] == ["BuildStarted", "BuildSucceeded", "CacheUsed"]
        assert all(when and when.endswith("Z") for _, when in kube.posted)  # stamped when recorded
        assert kube.most_in_flight == 1
    finally:
        sender.cancel()


async def test_an_event_the_api_server_refuses_is_logged_and_the_next_is_still_posted(caplog):
    kube = SlowKube(refuse=("BuildStarted",))
    kube.open.set()
    recorder = Recorder(kube)
    sender = asyncio.create_task(recorder.run())
    try:
        recorder.record(BUILD, "Normal", "BuildStarted", "...")
        recorder.record(BUILD, "Normal", "BuildSucceeded", "...")
        await recorder.flush(timeout=5)
    finally:
        sender.cancel()
    assert [reason for reason, _ in kube.posted] == ["BuildSucceeded"]
    assert "event BuildStarted for ImageBuild team/app not posted: KubeError: HTTP 403: events is forbidden" in caplog.text


async def test_events_past_the_limit_are_dropped_with_a_warning_and_a_stop_waits_only_a_while(caplog):
    kube = SlowKube()  # never answers
    recorder = Recorder(kube, limit=2)
    for reason in ("BuildStarted", "BuildSucceeded", "CacheUsed"):
        recorder.record(BUILD, "Normal", reason, "...")
    assert "event CacheUsed for ImageBuild team/app dropped: 2 events wait to be posted" in caplog.text
    sender = asyncio.create_task(recorder.run())
    try:
        with caplog.at_level(logging.WARNING):
            await recorder.flush(timeout=0.1)
        assert "2 events not posted before the operator stopped" in caplog.text
    finally:
        sender.cancel()
