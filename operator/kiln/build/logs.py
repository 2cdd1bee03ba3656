"""Build logs kept after their pod is gone: one ConfigMap per unit attempt, owned by its Job (pure).

The garbage collector removes it with the Job, when the build falls out of status.history. It holds the log
gzipped in binaryData: all of it when it is small, else its head and its tail around a marker that says how much
was cut, so the object stays far below the API server's limit (about 1.5 MiB) whatever the build printed.

A build on a warm builder has no pod to read a running log from: its ConfigMap (owned by the ImageBuild) is
written while it runs, marked LIVE, and written a last time, unmarked, when it ends.
"""
from __future__ import annotations

import base64
import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass

from kiln import API_VERSION

CUT_MARK = "[kiln:"  # how the line where a log was cut starts
HEAD_BYTES = 128 * 1024  # how a build started: its context, its FROM images, the first steps
TAIL_BYTES = 384 * 1024  # how it ended: the failing step and BuildKit's error
LOG_KEY = "log.gz"
LOG_LABEL = "kiln.dev/build-log"  # on the ConfigMap: the Job whose pod wrote it
LIVE = "kiln.dev/log-live"  # annotation on the ConfigMap of a warm build's running log: more is to come
LIVE_SECONDS = 2.0  # how often a running warm build's log is written, when it grew


@dataclass(frozen=True)
class BoundedLog:
    """A log as read: its first HEAD_BYTES, its last TAIL_BYTES, and how long it was."""
    head: bytes
    tail: bytes  # what followed the head: at most TAIL_BYTES, the end of the log
    size: int

    def text(self, clean: Callable[[str], str] = str) -> str:
        """The log as kept: clean (a redaction) applies to each side of the cut, which may split a value."""
        cut = self.size - len(self.head) - len(self.tail)
        if not cut:
            return clean((self.head + self.tail).decode(errors="replace"))
        marker = f"\n{CUT_MARK} {cut} bytes of the log cut here; it had {self.size} bytes in all]\n"
        return clean(self.head.decode(errors="replace")) + marker + clean(self.tail.decode(errors="replace"))


class LogBuffer:
    """A log as it streams in, keeping only its head and its tail: memory stays bounded however much is printed."""

    def __init__(self) -> None:
        self._head, self._tail, self._size = bytearray(), bytearray(), 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        room = HEAD_BYTES - len(self._head)
        self._head += chunk[:room]
        self._tail += chunk[room:] if room > 0 else chunk
        del self._tail[:-TAIL_BYTES]

    def bounded(self) -> BoundedLog:
        return BoundedLog(bytes(self._head), bytes(self._tail), self._size)


def log_name(job: str) -> str:
    """The ConfigMap of a Job's log (Job names are at most 63 characters)."""
    return f"{job}-log"


def render_log(job: dict, text: str, imagebuild: tuple[str, str] | None = None, live: bool = False) -> dict:
    """The ConfigMap keeping a unit's log, owned by its Job (no blockOwnerDeletion: it needs no finalizer right), or
    by its ImageBuild (name, uid) for a build on a warm builder, which has no Job; with the Job's labels and
    annotations (build, unit, platforms, attempt); live: the log of a build still running."""
    owner = {"apiVersion": API_VERSION, "kind": "ImageBuild", "name": imagebuild[0], "uid": imagebuild[1]} \
        if imagebuild else {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                            "uid": job["metadata"]["uid"]}
    meta = job["metadata"]
    keep = {k: v for k, v in meta.get("labels", {}).items() if k.startswith(("kiln.dev/", "app.kubernetes.io/"))}
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": log_name(meta["name"]), "namespace": meta["namespace"],
            "labels": {**keep, LOG_LABEL: meta["name"]},
            "annotations": {**(meta.get("annotations") or {}), **({LIVE: "true"} if live else {})},
            "ownerReferences": [owner],
        },
        "binaryData": {LOG_KEY: base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()},
    }


def kept_text(config_map: dict) -> str:
    """The log a ConfigMap keeps."""
    return gzip.decompress(base64.b64decode(config_map["binaryData"][LOG_KEY])).decode(errors="replace")


def live(config_map: dict) -> bool:
    return ((config_map.get("metadata") or {}).get("annotations") or {}).get(LIVE) == "true"


def appended(before: str, after: str) -> str:
    """What a log kept as `after` holds beyond `before`, an earlier keeping of it. Once the log outgrew its
    bounds, its middle is cut: what follows the last of `before` still there, else all of the new tail."""
    if after.startswith(before):
        return after[len(before):]
    anchor = before[-512:]
    found = after.rfind(anchor) if anchor else -1
    if found >= 0:
        return after[found + len(anchor):]
    cut = after.rfind(f"\n{CUT_MARK}")
    return after[after.index("\n", cut + 1) + 1:] if cut >= 0 else after


_STEP = re.compile(r"^#(\d+) (\[.*)$")  # "#7 [linux/amd64 2/3] COPY deploy.sh deploy.sh"
_END = re.compile(r"^#(\d+) (DONE [\d.]+s|CACHED|ERROR: .*|CANCELED)\s*$")


class Steps:
    """BuildKit's plain progress output -> one line per Dockerfile step as it completes (done, cached, failed)."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def feed(self, line: str) -> str | None:
        if started := _STEP.match(line):
            self._names.setdefault(started[1], started[2])
            return None
        ended = _END.match(line)
        if ended and ended[1] in self._names:
            return f"{self._names.pop(ended[1])}  {ended[2].lower() if ended[2] == 'CACHED' else ended[2]}"
        return None
