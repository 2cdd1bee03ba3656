"""What the handlers of one operator run share (kept in kopf's memo): the API client, settings,
one lock per ImageBuild, and the timers that look at an object again later."""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kiln.apply import Kube
from kiln.settings import Settings

Key = tuple[str, str]  # (namespace, name)
# A failed reconcile is tried again after 1s, 2s, 4s ... at most every 5 minutes.
RETRY_BASE, RETRY_CAP = 1.0, 300.0


@dataclass
class Runtime:
    kube: Kube
    settings: Settings
    # One reconcile at a time per ImageBuild, whichever watch (its own, its Jobs', its Pods') triggered it.
    locks: dict[Key, asyncio.Lock] = field(default_factory=lambda: collections.defaultdict(asyncio.Lock))
    failures: dict[Key, int] = field(default_factory=dict)
    # The resourceVersion of each ImageBuild as kiln's own last status write left it.
    own_writes: dict[Key, str] = field(default_factory=dict)
    reconcile_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.reconcile_slots = asyncio.Semaphore(self.settings.max_concurrent_reconciles)
    _timers: dict[Key, tuple[float, asyncio.TimerHandle]] = field(default_factory=dict)

    def retry_delay(self, key: Key) -> float:
        """The next delay for an object whose reconcile failed again (exponential, capped)."""
        self.failures[key] = self.failures.get(key, 0) + 1
        return min(RETRY_BASE * 2 ** (self.failures[key] - 1), RETRY_CAP)

    def later(self, key: Key, delay: float, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` for this object after `delay` seconds; an earlier timer for it wins over a later one."""
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
        """An ImageBuild is gone: nothing of it is kept."""
        self.own_writes.pop(key, None)
        self.failures.pop(key, None)
        self.locks.pop(key, None)
        pending = self._timers.pop(key, None)
        if pending:
            pending[1].cancel()

    def cancel_timers(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
