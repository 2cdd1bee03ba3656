"""The work queue of the operator's objects, in the manner of client-go's: one reconcile of a key at a time, at
most a number of them at once (a burst waits here, not all in memory at once), a key whose reconcile failed run
again after 1 s, 2 s, 4 s ... (capped), and a key asked for later run then, the earliest ask winning."""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

Key = tuple[str, str]  # (namespace, name)
RETRY_BASE, RETRY_CAP = 1.0, 300.0


class WorkQueue:
    def __init__(self, slots: int):
        self._slots = asyncio.Semaphore(slots)
        self._locks: dict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}

    async def process(self, key: Key, reconcile: Callable[[], Awaitable[float | None]],
                      failed: Callable[[Exception, float], None]) -> None:
        """Run `reconcile` for `key`. It returns when to look again (None: when an event says so); when it raises,
        `failed` hears why and when the key runs again."""
        again = lambda: self.process(key, reconcile, failed)  # noqa: E731
        try:
            async with self._slots, self._locks[key]:
                requeue = await reconcile()
        except Exception as exc:  # an API or network failure: this key runs again soon, not at the next resync
            self._failures[key] = self._failures.get(key, 0) + 1
            delay = min(RETRY_BASE * 2 ** (self._failures[key] - 1), RETRY_CAP)
            failed(exc, delay)
            self.after(key, delay, again)
            return
        self._failures.pop(key, None)
        if requeue is not None:
            self.after(key, requeue, again)

    def after(self, key: Key, delay: float, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` for this key after `delay` seconds; an earlier ask for it wins over a later one."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._timers.get(key)
        if pending and not pending[1].cancelled() and pending[0] <= when:
            return
        if pending:
            pending[1].cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            loop.create_task(run())

        self._timers[key] = (when, loop.call_later(delay, fire))

    def forget(self, key: Key) -> None:
        """The object is gone: nothing of its key is kept, and nothing runs for it later."""
        self._failures.pop(key, None)
        self._locks.pop(key, None)
        pending = self._timers.pop(key, None)
        if pending:
            pending[1].cancel()

    def shut_down(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
