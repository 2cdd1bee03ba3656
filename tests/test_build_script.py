"""The build pod's script as the container runs it: PID 1 of its own PID namespace, under BusyBox's sh (the
rootless BuildKit image's), with a stand-in buildctl-daemonless.sh."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kiln.build.render import BUILD_SCRIPT


def _pod(tmp_path: Path, stand_in: str) -> subprocess.Popen:
    if not shutil.which("busybox") or os.geteuid() != 0:
        pytest.fail("needs root (a PID namespace) and busybox: make test installs it")
    (tmp_path / "buildctl-daemonless.sh").write_text(f"#!/bin/sh\n{stand_in}\n")
    (tmp_path / "buildctl-daemonless.sh").chmod(0o755)
    return subprocess.Popen(["unshare", "--pid", "--fork", "busybox", "sh", "-c", BUILD_SCRIPT, "kiln-build", "build"],
                            env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})


def _pid_one(unshare: subprocess.Popen) -> int:
    """The script: unshare's child, PID 1 of the new namespace."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("the script never started")


def test_asked_to_stop_the_script_stops_the_build_at_once_and_says_so(tmp_path):
    """PID 1 gets only the signals it handles: without its trap a deleted pod went on building and pushing."""
    pod = _pod(tmp_path, f"sleep 300 & echo $! > {tmp_path}/build.pid; wait")
    try:
        script = _pid_one(pod)
        deadline = time.monotonic() + 10
        while not (tmp_path / "build.pid").exists():
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
        os.kill(script, signal.SIGTERM)  # what the kubelet sends when the pod is deleted
        assert pod.wait(timeout=5) == 143  # 128 + SIGTERM: the build was stopped, not finished
    finally:
        pod.kill()


def test_a_failed_build_exits_with_its_status_and_copies_no_metadata(tmp_path):
    pod = _pod(tmp_path, "echo 'error: failed to solve' >&2; exit 1")
    assert pod.wait(timeout=10) == 1
