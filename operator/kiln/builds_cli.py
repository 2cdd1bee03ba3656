"""`kiln status`, `kiln logs`, `kiln build`: an ImageBuild's state, its logs (live or kept), a rebuild followed
to its result. For people at a terminal, and as the kubectl plugin `kubectl kiln`.

Exit codes: 0 the build succeeded (or the command did what it says), 1 it failed, was cancelled or is not there,
2 the cluster cannot be used, 130 interrupted (the build goes on).
"""
from __future__ import annotations

import asyncio
import datetime
import sys
from dataclasses import dataclass, field
from typing import TextIO

from kiln import API_VERSION
from kiln.build.logs import LOG_LABEL, Steps, appended, kept_text, live
from kiln.build.render import short_name
from kiln.build.status import short_digest
from kiln.clients.kube import Kube, path
from kiln.spec import labels
from kiln.spec.parse import build_id

FINISHED = ("Succeeded", "Failed", "Cancelled")
POLL = 1.0  # seconds between looks at the build while following it


class Problem(Exception):
    """What the user is told, and the exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class Terminal:
    kube: Kube
    namespace: str
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    poll: float = POLL

    async def build(self, name: str) -> dict:
        found = await self.kube.get(path(API_VERSION, "imagebuilds", self.namespace, name))
        if found is None:
            raise Problem(f"ImageBuild {self.namespace}/{name} not found")
        return found

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


# -- kiln status --

async def status(term: Terminal, name: str) -> int:
    """The build's state as a table; exit 0 when it is Ready."""
    obj = await term.build(name)
    state = obj.get("status") or {}
    ready = next((c for c in state.get("conditions") or [] if c.get("type") == "Ready"), {})
    rows = [("ImageBuild", f"{term.namespace}/{name}"),
            ("Phase", state.get("phase", "Pending") + (f" ({ready['reason']})" if ready.get("reason") not in
                                                      (None, state.get("phase")) else "")),
            ("Build", " ".join(filter(None, [state.get("buildID"), state.get("startTime") and f"started {state['startTime']}",
                                             state.get("duration") and f"took {state['duration']}"])) or "not started")]
    if ready.get("message"):
        rows.append(("Message", ready["message"]))
    if state.get("image"):
        rows.append(("Image", state["image"]))
    for entry in state.get("platforms") or []:
        attested = (entry.get("attestation") or {}).get("predicateTypes") or []
        rows.append(("Platform", f"{entry['platform']:<14} {short_digest(entry['digest'])}  {entry.get('builtBy', '')}"
                     + (f"  attested: {', '.join(_short_predicate(p) for p in attested)}" if attested else "")))
    cache = state.get("cache") or {}
    if cache:
        steps = f", {cache['cachedSteps']} of {cache['totalSteps']} steps from the cache" if cache.get("totalSteps") else ""
        rows.append(("Cache", f"{cache.get('type')}{' ' + cache['exportRef'] if cache.get('exportRef') else ''}{steps}"))
    if state.get("signature"):
        rows.append(("Signature", f"{state['signature']['reference']} (key {state['signature']['keyFingerprint']})"))
    for unit in state.get("units") or []:
        if unit.get("phase") != "Succeeded" or state.get("phase") != "Succeeded":
            rows.append(("Unit", f"{','.join(unit.get('platforms') or []) or 'all':<24} {unit.get('phase', '')}"
                         f"  {unit.get('message', '')}".rstrip()))
    failure = state.get("failure") or {}
    if failure:
        rows.append(("Failure", f"{failure.get('reason')}: {failure.get('message')}"))
        rows += [("", line) for line in (failure.get("logExcerpt") or "").splitlines()[-8:]]
    if state.get("buildID"):
        rows.append(("Logs", f"kiln logs {name} -n {term.namespace} --build {state['buildID']}"))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        term.say(f"{key:<{width}}  {value}")
    return 0 if ready.get("status") == "True" else 1


def _short_predicate(kind: str) -> str:
    return {"https://slsa.dev/provenance/v1": "SLSA provenance", "https://spdx.dev/Document": "SPDX SBOM"}.get(kind, kind)


# -- kiln logs --

@dataclass
class _Pod:
    """One unit attempt of a build: its Job, its pod (if any), what it builds."""
    job: str
    platforms: str
    attempt: int
    pod: dict | None = None
    kept: dict | None = None

    @property
    def ended(self) -> bool:
        return bool(self.pod) and (self.pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


async def _attempts(term: Terminal, name: str, build: str) -> list[_Pod]:
    """Every unit attempt of the build: from its kept logs, and from the pods that are there."""
    selector = {labels.IMAGEBUILD: short_name(name), labels.BUILD_ID: build}
    found: dict[str, _Pod] = {}
    for kept in await term.kube.list(path("v1", "configmaps", term.namespace), selector):
        job = (kept["metadata"].get("labels") or {}).get(LOG_LABEL)
        if job:
            found[job] = _attempt(job, kept["metadata"], kept=kept)
    for pod in await term.kube.list(path("v1", "pods", term.namespace), selector):
        job = (pod["metadata"].get("labels") or {}).get("job-name") or pod["metadata"]["name"].rsplit("-", 1)[0]
        found.setdefault(job, _attempt(job, pod["metadata"])).pod = pod
    return sorted(found.values(), key=lambda a: (a.platforms, a.attempt))


def _attempt(job: str, meta: dict, kept: dict | None = None) -> _Pod:
    notes = meta.get("annotations") or {}
    return _Pod(job, notes.get(labels.PLATFORMS, ""), int(notes.get(labels.ATTEMPT, "0") or 0), kept=kept)


def _prefix(attempt: _Pod, several: bool) -> str:
    return f"[{attempt.platforms or 'all'}{f' attempt {attempt.attempt + 1}' if attempt.attempt else ''}] " \
        if several else ""


async def logs(term: Terminal, name: str, build: str | None = None, follow: bool = False, steps: bool = False) -> int:
    """The build's log: kept ones for pods that ended (even long gone), live ones for those running; with follow,
    until the build ends (exit 0 if it succeeded)."""
    obj = await term.build(name)
    build = build or (obj.get("status") or {}).get("buildID")
    if not build:
        raise Problem(f"ImageBuild {term.namespace}/{name} has not started a build yet")
    if not follow:
        attempts = await _attempts(term, name, build)
        if not attempts and (obj.get("status") or {}).get("phase") not in FINISHED:
            raise Problem(f"build {build} of {term.namespace}/{name} has no log yet: it has not started "
                          "(kiln logs -f waits for it)")
        if not attempts:
            raise Problem(f"no log of build {build} of {term.namespace}/{name} is kept (it may have left the history)")
        several = len({(a.platforms, a.attempt) for a in attempts}) > 1
        for attempt in attempts:
            await _print_log(term, attempt, _prefix(attempt, several), steps)
        return 0
    return await _follow(term, name, build, steps)


async def _print_log(term: Terminal, attempt: _Pod, prefix: str, steps: bool) -> None:
    if attempt.kept:
        text = kept_text(attempt.kept)
    elif attempt.pod:
        log = await term.kube.bounded_log(term.namespace, attempt.pod["metadata"]["name"], "buildkit")
        text = log.text() if log else ""
    else:
        return
    view = Steps() if steps else None
    for line in text.splitlines():
        _emit(term, prefix, line, view)


def _emit(term: Terminal, prefix: str, line: str, view: Steps | None) -> None:
    if view is None:
        term.say(prefix + line)
    elif (step := view.feed(line)) is not None:
        term.say(prefix + step)


async def _follow(term: Terminal, name: str, build: str, steps: bool) -> int:
    """Every pod of the build, each from its start (or its kept log), as its lines come, until the build ends."""
    shown: dict[str, asyncio.Task] = {}
    several = seen = False
    finished = asyncio.Event()  # a warm build's log marked running still then (it was cancelled) ends too
    try:
        while True:
            state = (await term.build(name)).get("status") or {}
            seen = seen or state.get("buildID") == build
            if seen and state.get("buildID") != build:
                term.err.write(f"kiln: build {build} was replaced by build {state.get('buildID')}\n")
                return 1
            several = several or len(state.get("units") or []) > 1
            for attempt in await _attempts(term, name, build):
                if attempt.job in shown or not (attempt.pod or attempt.kept):
                    continue
                if attempt.pod and (attempt.pod.get("status") or {}).get("phase") == "Pending":
                    continue  # not running yet: its log starts once it does
                shown[attempt.job] = asyncio.create_task(_stream(term, attempt, _prefix(attempt, several), steps,
                                                                 finished))
            if state.get("buildID") == build and state.get("phase") in FINISHED:
                finished.set()
                await asyncio.gather(*shown.values())
                return _result(term, name, state)
            await asyncio.sleep(term.poll)
    finally:
        for task in shown.values():
            task.cancel()


async def _stream(term: Terminal, attempt: _Pod, prefix: str, steps: bool, finished: asyncio.Event) -> None:
    if attempt.kept and live(attempt.kept):
        await _stream_kept(term, attempt.kept, prefix, steps, finished)
        return
    if attempt.kept or attempt.ended:
        await _print_log(term, attempt, prefix, steps)
        return
    view = Steps() if steps else None
    async for line in term.kube.follow_log(term.namespace, attempt.pod["metadata"]["name"], "buildkit"):
        _emit(term, prefix, line, view)


async def _stream_kept(term: Terminal, kept: dict, prefix: str, steps: bool, finished: asyncio.Event) -> None:
    """A warm build's log as the operator writes it while the build runs: its whole lines as they come, until
    the last writing, the build's end or the ConfigMap gone."""
    view = Steps() if steps else None
    shown, ending = "", False
    while True:
        text = kept_text(kept)
        done = not live(kept) or ending
        new = appended(shown, text)
        whole = new if done else new[:new.rfind("\n") + 1]
        for line in whole.splitlines():
            _emit(term, prefix, line, view)
        shown = text if done else text[:len(text) - len(new) + len(whole)]
        if done:
            return
        await asyncio.sleep(term.poll)
        ending = finished.is_set()  # before the look: the build ended, so what it finds is all there will be
        job = kept["metadata"]["labels"][LOG_LABEL]  # listed, as kiln logs needs no more than list on them
        found = await term.kube.list(path("v1", "configmaps", term.namespace), {LOG_LABEL: job})
        if not found:
            return
        kept = found[0]


def _result(term: Terminal, name: str, state: dict) -> int:
    phase = state.get("phase")
    if phase == "Succeeded":
        term.err.write(f"kiln: {name} {state.get('buildID')} succeeded: {state.get('image') or 'built'}\n")
        return 0
    failure = state.get("failure") or {}
    term.err.write(f"kiln: {name} {state.get('buildID')} {phase.lower()}"
                   + (f": {failure.get('reason')}: {failure.get('message')}" if failure else "") + "\n")
    return 1


# -- kiln build --

async def rebuild(term: Terminal, name: str, wait: bool = False, follow: bool = False, steps: bool = False) -> int:
    """Ask for a new build of the same spec (the kiln.dev/rebuild annotation); with wait or follow, see it end."""
    obj = await term.build(name)
    token = "kiln-cli-" + datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    meta = obj["metadata"]
    await term.kube.patch(path(API_VERSION, "imagebuilds", term.namespace, name),
                          {"metadata": {"annotations": {labels.REBUILD: token}}})
    build = build_id(meta["uid"], int(meta.get("generation") or 1), token)
    term.err.write(f"kiln: build {build} of {term.namespace}/{name} asked for\n")
    if follow:
        return await _follow(term, name, build, steps)
    if not wait:
        return 0
    while True:
        state = (await term.build(name)).get("status") or {}
        if state.get("buildID") == build and state.get("phase") in FINISHED:
            return _result(term, name, state)
        await asyncio.sleep(term.poll)
