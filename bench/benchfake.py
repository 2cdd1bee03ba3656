"""The emulator for measurements: what it costs must not be what the figures show.

kmock 0.8 keeps every request it has served and matches each new one against that whole history, so it
slows down with every request; here the history holds only the requests still in flight. It also walks
every object it holds to find the one a request names; here that is one lookup. And its watch streams every
object again before what happens next; here a watch from a resourceVersion (kopf's after its list, or after
the last event it saw when it reconnects) gets only what came after it, as from a real API server: otherwise
an operator that lists 3,000 objects at its start receives 6,000, and holds them. Schema validation
and owner-reference garbage collection (KubeFake's additions, proven in tests/) are off: their cost is the
emulator's, not kiln's. Label selectors are honoured, as by the API server (kmock ignores them): a watch
streams only what its client asked for. Requests are counted by client, verb and resource, and the moment
each ImageBuild and each build Job is created is noted for the latency figures.
"""
import asyncio
import collections

import attrs
import kmock
from kmock._internal import aiobus

from kubefake import KubeFake

EVENTS_KEPT = 50_000  # a watch from an older version than these gets every object again
VERBS = {kmock.action.LIST: "list", kmock.action.FETCH: "get", kmock.action.CREATE: "create",
         kmock.action.UPDATE: "patch", kmock.action.DELETE: "delete", kmock.action.WATCH: "watch"}


def client_of(request) -> str:
    """Who sent a request: the test itself (kmock's client), a bench client (its User-Agent), or the operator."""
    agent = request.headers.get("User-Agent", "")
    if agent.startswith("kmock/"):
        return "test"
    return agent if agent.startswith("bench-") else "operator"


@attrs.define(kw_only=True)
class BenchFake(KubeFake):
    validated: frozenset = frozenset()
    collects_garbage: bool = False
    # (client, verb, resource[/subresource]) -> requests served.
    counts: collections.Counter = attrs.field(factory=collections.Counter)
    # (namespace, ImageBuild name) -> when it was created; when the first Job labelled with it was.
    build_created: dict = attrs.field(factory=dict)
    job_created: dict = attrs.field(factory=dict)
    _in_flight: set = attrs.field(factory=set)
    # The last watch events, in order: (bus, resourceVersion of its object, event).
    _events: collections.deque = attrs.field(factory=lambda: collections.deque(maxlen=EVENTS_KEPT))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = collections.defaultdict(lambda: _LoggedBus(self._events))

    async def _serve_list(self, request):
        listed = await super()._serve_list(request)
        # Read with the objects, under the same lock as the writes: the list is as of this version.
        return {**listed, "items": [item for item in listed.get("items", []) if _selected(request, item)],
                "metadata": {"resourceVersion": self._events[-1][1] if self._events else "0"}}

    async def _serve_watch(self, request):
        """What came after the event of the given resourceVersion, then what comes; a version it does not know
        (none, "0") gets kmock's way: every object, then what comes. Writes are given versions before they take
        kmock's lock, so two can reach the stream out of order: replaying from the position of the event
        seen last, not from its version, misses neither."""
        since = request.params.get("resourceVersion")
        after = next((n for n, (_, version, _) in enumerate(reversed(self._events)) if version == since), None) \
            if since else None
        if after is None:
            async for event in super()._serve_watch(request):
                if not isinstance(event, dict) or _selected(request, event.get("object") or {}):
                    yield event
            return
        bus = self._buses[request.resource]
        marker = await bus.mark()  # from here on the bus has it; before, the log (one event may come twice)
        missed = list(self._events)[len(self._events) - after:]
        try:
            yield b""
            for logged_on, _, event in missed:
                if logged_on is bus and self._watched(request, event):
                    yield event
            async for event in bus.stream(since=marker):
                if self._watched(request, event):
                    yield event
        finally:
            await bus.unmark(marker)

    def _watched(self, request, event: dict) -> bool:
        meta = event.get("object", {}).get("metadata", {})
        return self._KubernetesEmulator__check(request, request.resource, meta.get("namespace"), meta.get("name"),
                                               strict=False) and _selected(request, event.get("object") or {})

    async def _handle(self, request):
        self._in_flight.add(id(request))
        if request.action in VERBS:
            resource = (request.resource.plural if request.resource else None) or "?"  # "?": discovery
            resource += f"/{request.subresource}" if request.subresource else ""
            self.counts[(client_of(request), VERBS[request.action], resource)] += 1
        try:
            response = await super()._handle(request)
        finally:
            self._in_flight.discard(id(request))
            self._requests[:] = [r for r in self._requests if id(r) in self._in_flight]
        if request.resource is not None and request.action == kmock.action.CREATE and response.status < 300:
            self._note_creation(request)
        return response

    def _KubernetesEmulator__get_objs(self, request, strict: bool) -> list:
        """One object by its name at once: kmock walks every object it holds for each request, so that a phase
        run later, with more objects stored, would be served slower than an earlier one."""
        if not (strict and request.resource and request.name):
            return super()._KubernetesEmulator__get_objs(request, strict)
        found = self._objects._objects.get((request.resource, request.namespace, request.name))
        return [] if found is None else [found]

    def _note_creation(self, request) -> None:
        meta = request.data.get("metadata") or {}
        namespace = request.namespace or meta.get("namespace")
        if request.resource.plural == "imagebuilds":
            self.build_created[(namespace, meta["name"])] = asyncio.get_running_loop().time()
        elif request.resource.plural == "jobs":
            build = (meta.get("labels") or {}).get("kiln.dev/imagebuild")
            self.job_created.setdefault((namespace, build), asyncio.get_running_loop().time())

    def requests_of(self, client: str, since: collections.Counter | None = None) -> collections.Counter:
        """(verb, resource) -> requests `client` sent, watches left out, since an earlier copy of `counts`."""
        out = collections.Counter()
        for (who, verb, resource), n in self.counts.items():
            if who == client and verb != "watch":
                out[(verb, resource)] += n - (since or {}).get((who, verb, resource), 0)
        return +out


def _selected(request, obj: dict) -> bool:
    """Whether an object's labels satisfy the request's labelSelector: the equality and existence terms
    (`k=v`, `k==v`, `k!=v`, `k`, `!k`) that clients of this bench send."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (request.params.get("labelSelector") or "").split(",")):
        key, op, value = term.partition("!=") if "!=" in term else term.replace("==", "=").partition("=")
        if op == "!=":
            ok = labels.get(key) != value
        elif op:
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


class _LoggedBus(aiobus.Bus):
    """kmock's event bus, each event also noted in the emulator's log of events."""

    def __init__(self, log: list):
        super().__init__()
        self._log = log

    async def put(self, *items) -> None:
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("object"), dict):
                self._log.append((self, item["object"].get("metadata", {}).get("resourceVersion"), item))
        await super().put(*items)
