"""buildctl, run by the operator against a warm builder: one build, its files in a private directory.

The operator is the build's BuildKit client. The daemon asks it, through BuildKit's session, for registry
credentials (from a docker config written for this build alone), build secrets and the git token, while the build
runs; the directory is removed when buildctl ends. Cancelled, it interrupts buildctl,
which cancels the build on the daemon, and kills it if it does not end within a few seconds.
"""
from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

STOP_GRACE = 5.0  # seconds buildctl has to cancel the build on the daemon when asked to stop


def write_files(root: Path, files: Mapping[str, bytes]) -> None:
    """files (paths relative to root) written readable by the operator alone."""
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)


async def run(binary: str, args: Callable[[str], list[str]], files: Mapping[str, bytes],
              feed: Callable[[bytes], None], proxy: str | None = None, daemon: str = "") -> tuple[int, str]:
    """(buildctl's exit code, its metadata file's text) of `buildctl args(root)`, with files under root and its
    output fed to feed as it comes. A missing binary is exit code 127, as a shell would say. proxy: what
    buildctl's own HTTP requests (registry tokens) go through, but for the daemon's host."""
    with tempfile.TemporaryDirectory(prefix="kiln-build-") as directory:
        root = Path(directory)
        write_files(root, files)
        (root / "out").mkdir(mode=0o700, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": directory,
               "DOCKER_CONFIG": str(root / "docker")}
        if proxy:
            env |= {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "NO_PROXY": daemon}
        try:
            process = await asyncio.create_subprocess_exec(
                binary, *args(directory), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            feed(f"kiln: {binary} is not installed in the operator's image\n".encode())
            return 127, ""
        try:
            while chunk := await process.stdout.read(64 * 1024):
                feed(chunk)
            code = await process.wait()
        except asyncio.CancelledError:
            await _stop(process)
            raise
        metadata = root / "out" / "metadata.json"
        return code, metadata.read_text(errors="replace") if metadata.exists() else ""


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Interrupt buildctl (it cancels the build on the daemon, and waits for that), then kill it if it lingers."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE)
    except TimeoutError:
        process.kill()
        await process.wait()
