"""What /proc says of a process, for stopping the cluster's processes and watching its kubelets."""
from __future__ import annotations

import re
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


def mentions(pid: int, path: str) -> bool:
    """Does one of its arguments name `path` itself or something below it (not /a/path, not path-backup)?
    OSError when the process is gone."""
    whole = re.compile(rf"(?<![\w./-]){re.escape(path.rstrip('/'))}(?=$|/|[^\w.-])")
    arguments = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    return any(whole.search(argument) for argument in arguments)


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def record(pid: int) -> str:
    """What a pid file holds: the pid, its start time and this boot, so that it names that process only."""
    return f"{pid} {stat_fields(pid)[19]} {boot_id()}\n"


def recorded(pid_file: Path) -> int | None:
    """The pid a pid file records, while that very process runs: not a process that got its number after it
    ended, not across a reboot."""
    try:
        pid, start, boot = pid_file.read_text().split()
        return int(pid) if boot == boot_id() and stat_fields(int(pid))[19] == start else None
    except (OSError, IndexError, ValueError):
        return None
