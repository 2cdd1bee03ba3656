"""Build the pinned components from their Go modules into the cache, once per version and architecture."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cluster.versions import CACHE, COMPONENTS, ETCD, HERE, KUBERNETES, Component, bin_dir

NO_GO = ("the Go toolchain (1.26 or newer, https://go.dev/doc/install) builds the pinned components once; "
         "`go` is not on PATH")


def _go(args: list[str], goarch: str, cwd: Path | None = None, gobin: Path | None = None, cgo: bool = False) -> None:
    if not shutil.which("go"):
        raise SystemExit(f"cluster: {NO_GO}, and {CACHE} does not hold {cwd.name if cwd else args[-1]} yet")
    # GOTOOLCHAIN=local: a module's `toolchain` line must not make go fetch another Go.
    env = {**os.environ, "CGO_ENABLED": "1" if cgo else "0", "GOTOOLCHAIN": "local", "GOOS": "linux", "GOARCH": goarch}
    if gobin:
        env["GOBIN"] = str(gobin)
    subprocess.run(["go", *args], cwd=cwd, env=env, check=True)


def _host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def _flags(component: Component) -> list[str]:
    flags = ["-trimpath", "-ldflags", f"-s -w {component.ldflags}".strip()]
    return flags + (["-tags", component.tags] if component.tags else [])


def built(component: Component, goarch: str = "amd64", commands: tuple[str, ...] | None = None) -> bool:
    """The cache holds the component's binaries (a cache from before a command joined the component does not)."""
    out = bin_dir(component, goarch)
    return (out / ".built").exists() and all((out / name).exists() for name in component.binaries(commands))


def build(component: Component, goarch: str = "amd64", commands: tuple[str, ...] | None = None) -> Path:
    """The directory holding the component's binaries; built first when the cache lacks them."""
    out = bin_dir(component, goarch)
    if built(component, goarch, commands):
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.monotonic()
    packages = component.packages(commands)
    print(f"cluster: building {component.name} {component.version} ({goarch}) from its Go module; "
          "this happens once per version", file=sys.stderr, flush=True)
    if component is ETCD:  # the package is the module root: name the binary
        _go(["build", *_flags(component), "-o", str(partial / "etcd"), *packages], goarch, HERE / "tools" / "etcd")
    elif component.tools:
        _go(["build", *_flags(component), "-o", f"{partial}/", *packages], goarch, HERE / "tools" / component.tools)
    elif goarch == _host_arch():  # no replace directives: the ordinary `go install module/cmd@version`
        _go(["install", *_flags(component), *[f"{p}@{component.version}" for p in packages]], goarch, gobin=partial,
            cgo=component.cgo)
    else:  # go install refuses GOBIN for another architecture: it installs into GOPATH/bin/linux_<arch>
        _go(["install", *_flags(component), *[f"{p}@{component.version}" for p in packages]], goarch)
        gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True, check=True).stdout.strip()
        for name in component.binaries(commands):
            shutil.move(Path(gopath.split(os.pathsep)[0]) / "bin" / f"linux_{goarch}" / name, partial / name)
    (partial / ".built").write_text(f"{component.module}@{component.version} in {time.monotonic() - started:.0f}s\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


ARM64_KUBELET = (KUBERNETES, "arm64", ("cmd/kubelet",))  # the second node's


def build_all() -> dict[str, Path]:
    """Every component for this machine, plus an arm64 kubelet for the second (arm64) node."""
    dirs = {c.name: build(c) for c in COMPONENTS}
    dirs["kubelet-arm64"] = build(*ARM64_KUBELET)
    return dirs


def all_built() -> bool:
    return all(built(c) for c in COMPONENTS) and built(*ARM64_KUBELET)
