"""Children of a kubelet that never finish are killed, so that the kubelet tries again.

Under QEMU user emulation the arm64 kubelet once ran `mount` for a build pod's Secret volume and never got its
answer (goroutine dump: secretVolumeMounter.SetUpAt -> setupTmpfs -> exec.Cmd.CombinedOutput): the node stayed
Ready and the pod stayed in ContainerCreating, about once in six e2e runs. A kubelet's children (mount, umount)
take milliseconds; one alive after STUCK_SECONDS is stuck. Killing it fails that mount, and the kubelet's volume
manager mounts again.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from cluster import procs

STUCK_SECONDS = 90.0
EVERY_SECONDS = 5.0
_TICKS = os.sysconf("SC_CLK_TCK")


def children_older_than(parent: int, seconds: float) -> list[int]:
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    found = []
    for pid in procs.pids():
        try:
            fields = procs.stat_fields(pid)
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == parent and uptime - int(fields[19]) / _TICKS > seconds:
            found.append(pid)
    return found


def kill_stuck(parent: int, seconds: float = STUCK_SECONDS) -> list[int]:
    """Kill the children of `parent` older than `seconds`; the ones killed."""
    killed = []
    for pid in children_older_than(parent, seconds):
        try:
            command = procs.command_line(pid)
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
        print(f"watchdog: killed pid {pid}, a child of {parent} alive over {seconds:.0f}s: {command.strip()}",
              file=sys.stderr, flush=True)
        killed.append(pid)
    return killed


def watch(pid_file: Path) -> None:
    """Until the process pid_file names is gone, every few seconds: kill its stuck children."""
    while (parent := procs.recorded(pid_file)) is not None:
        kill_stuck(parent)
        time.sleep(EVERY_SECONDS)
