"""Kubernetes Events about kiln's objects, posted in the background, as client-go's event recorder does.

An event is a courtesy (the status already says what happened), so a reconcile never waits for one: in a
burst, the builds' own writes reach the API server first and their events follow, one at a time.
"""
from __future__ import annotations

import asyncio
import datetime
import logging

from kiln.clients.kube import Kube
from kiln.spec import labels

LOG = logging.getLogger("kiln.events")
QUEUED_AT_MOST = 1000  # as client-go's recorder: past that the API server is not keeping up, and events give way


class Recorder:
    def __init__(self, kube: Kube, limit: int = QUEUED_AT_MOST):
        self._kube = kube
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=limit)
        self._pending = 0  # recorded and not yet posted (or given up on): queued, or being posted

    def record(self, obj: dict, kind: str, reason: str, message: str) -> None:
        """Queue an event about obj, stamped now; dropped (and logged) when the queue is full."""
        try:
            self._queue.put_nowait((obj, kind, reason, message, labels.iso(datetime.datetime.now(datetime.UTC))))
            self._pending += 1
        except asyncio.QueueFull:
            meta = obj["metadata"]
            LOG.warning("event %s for %s %s/%s dropped: %d events wait to be posted", reason, obj.get("kind"),
                        meta.get("namespace"), meta.get("name"), self._pending)

    async def run(self) -> None:
        """Post the queued events in order, one at a time, for as long as the operator runs."""
        while True:
            obj, kind, reason, message, when = await self._queue.get()
            try:
                await self._kube.post_event(obj, kind, reason, message, when)
            except Exception as exc:  # any failure costs this event only; the next one is tried all the same
                meta = obj["metadata"]
                LOG.warning("event %s for %s %s/%s not posted: %s: %s", reason, obj.get("kind"), meta.get("namespace"),
                            meta.get("name"), type(exc).__name__, exc)
            finally:
                self._pending -= 1
                self._queue.task_done()

    async def flush(self, timeout: float) -> None:
        """Wait (a while at most) until every queued event is posted: the operator is stopping."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            LOG.warning("%d events not posted before the operator stopped", self._pending)
