"""The processes the latency benches run side by side, and what they read of them: the operators (kiln, and
kopf alone making the bare client's writes), the clients that create the ImageBuilds, the CPU time they use.

The server (the emulator, or a real API server) notes when it saw each ImageBuild and each build Job
created; `latency` reads that from anything with `build_created` and `job_created` ((namespace, name) -> time).
"""
import asyncio
import contextlib
import os
import pathlib
import statistics
import subprocess
import sys

BENCH = pathlib.Path(__file__).parent
BARE_CLIENT = BENCH / "bare_client.py"
FLOOR = [sys.executable, "-m", "kopf", "run", "--standalone", str(BENCH / "kopf_floor.py")]
KILN = [sys.executable, "-m", "kiln", "run", "--standalone"]
CLIENTS = ("bare", "create", "floor")  # the bare client; kiln; kopf with the bare client's writes


def turns(run: int, clients: tuple[str, ...] = CLIENTS) -> tuple[str, ...]:
    """The clients in the order of this run: each goes first in turn, as the server warms up too."""
    return clients[run % len(clients):] + clients[:run % len(clients)]


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(command: list[str], namespace: str, env: dict, log: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([*command, f"--namespace={namespace}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


@contextlib.asynccontextmanager
async def client(mode: str, server: str, namespace: str, count: int, image: str, prefix: str, env: dict | None = None):
    """The client's writes are answered on entry; it exits on leaving, after what is measured (bare_client.py)."""
    process = await asyncio.create_subprocess_exec(sys.executable, str(BARE_CLIENT), mode, server, namespace,
                                                   str(count), image, prefix, stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.PIPE, env=env)
    try:
        assert await process.stdout.readline() == b"written\n", "the client failed: its stderr is above"
        yield
    finally:
        process.stdin.close()
        assert await process.wait() == 0


def latency(seen, namespace: str, prefix: str, count: int) -> tuple[float, float] | None:
    """(seconds from the first ImageBuild to the last Job, median seconds per build), once every Job exists."""
    names = [(namespace, f"{prefix}-{i}") for i in range(count)]
    if not all(name in seen.job_created for name in names):
        return None
    per_build = [seen.job_created[name] - seen.build_created[name] for name in names]
    return (max(seen.job_created[name] for name in names) - min(seen.build_created[name] for name in names),
            statistics.median(per_build))


def record_latency(figures, name: str, runs: list[dict], floors: dict[str, tuple[str, str]], **detail) -> None:
    """One N's figures: kiln's latency (mode "create") and each floor's (mode -> (row name, unit)), each the
    median of the runs and set as a ratio to the bare client's of the same run; each run maps a mode to
    (first create to last Job, median per build, ...) in seconds."""
    ratios = {mode: sorted(r[mode][0] / r["bare"][0] for r in runs) for mode in ("create", *floors)}
    bare, kiln = (statistics.median(r[mode][0] for r in runs) for mode in ("bare", "create"))
    ratio = statistics.median(ratios["create"])
    figures.record(name, round(kiln * 1000, 1), "ms, first create to last Job", baseline=round(bare * 1000, 1),
                   goal=f"<= 1.5x bare (is {ratio:.1f}x)", met=ratio <= 1.5, runs=len(runs),
                   ratios=[round(r, 2) for r in ratios["create"]],
                   median_per_build_ms=round(statistics.median(r["create"][1] for r in runs) * 1000, 1),
                   bare_median_per_build_ms=round(statistics.median(r["bare"][1] for r in runs) * 1000, 1), **detail)
    for mode, (row, unit) in floors.items():
        figures.record(f"{name}, {row}", round(statistics.median(r[mode][0] for r in runs) * 1000, 1), f"ms, {unit}",
                       baseline=round(bare * 1000, 1), goal=f"(is {statistics.median(ratios[mode]):.1f}x)",
                       ratios=[round(r, 2) for r in ratios[mode]])
