"""What the handlers of one operator run share (kept in kopf's memo)."""
from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from kiln.apply import Kube
from kiln.settings import Settings


@dataclass
class Runtime:
    kube: Kube
    settings: Settings
    # One reconcile at a time per ImageBuild, whichever watch (its own, its Jobs', its Pods') triggered it.
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=lambda: collections.defaultdict(asyncio.Lock))
