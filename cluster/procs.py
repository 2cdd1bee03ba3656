"""What /proc says of a process, for stopping the cluster's processes and watching its kubelets."""
from __future__ import annotations

from pathlib import Path


def pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces and parentheses):
    [1] the parent, [19] the start, in clock ticks since boot. OSError when the process is gone."""
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def command_line(pid: int) -> str:
    """Its arguments joined by spaces. OSError when the process is gone."""
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
