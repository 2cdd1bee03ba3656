"""The operator image, built here without Docker (`make image`).

The base is a Debian rootfs made with mmdebstrap: python3 and pip from Debian, and kiln's pinned
dependencies (operator-requirements.txt) installed from their wheels. It is written as an OCI layout,
and the repository's Dockerfile is built FROM it by the pinned BuildKit, as Docker builds it FROM
python:3.11-slim. The base says in its environment that pip must not reach for an index, so the
Dockerfile's `pip install` installs kiln alone, offline: the same Dockerfile builds in a cluster whose
build pods reach no package index (manifests/samples/kiln-builds-kiln.yaml).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import registry, up
from cluster.build import build
from cluster.images import DPKG_EXCLUDES, IMAGES, MIRRORS, write_oci_layout
from cluster.versions import BUILDKIT, COSIGN, DEBIAN_SUITE, HERE

ROOT = HERE.parent
REQUIREMENTS = HERE / "operator-requirements.txt"
BASE_NAME = "kiln-base"  # the Dockerfile's BASE build argument names the base by this
PYTHON = "3.11"  # Debian bookworm's python3
SITE = f"usr/local/lib/python{PYTHON}/dist-packages"  # where Debian's python3 looks for what is not Debian's
PACKAGES = ("python3", "python3-pip", "ca-certificates")
USER = "65532"  # the Deployment's runAsUser
ENV = [
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1",
    # Everything kiln needs is installed: pip takes kiln from the context and nothing from an index, builds it
    # with the base's setuptools (PIP_NO_BUILD_ISOLATION=0 turns isolation off: pip's names for negative flags),
    # and installs into /usr/local, beside Debian's packages.
    "PIP_NO_INDEX=1", "PIP_NO_BUILD_ISOLATION=0", "PIP_BREAK_SYSTEM_PACKAGES=1", "PIP_ROOT_USER_ACTION=ignore",
    "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_CACHE_DIR=1",
]


def version() -> str:
    """kiln's one version (operator/kiln/__init__.py), without importing the package."""
    for line in (ROOT / "operator" / "kiln" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise SystemExit("operator/kiln/__init__.py has no __version__")


def base_layout() -> Path:
    """The base's OCI layout, made once per set of pinned dependencies and Debian packages."""
    key = hashlib.sha256("\n".join([REQUIREMENTS.read_text(), DEBIAN_SUITE, *PACKAGES, *ENV, COSIGN.version,
                                    BUILDKIT.version])
                         .encode()).hexdigest()[:12]
    layout = IMAGES / f"{BASE_NAME}-{key}"
    if (layout / "index.json").exists():
        return layout
    print(f"image: making the base {BASE_NAME} (Debian {DEBIAN_SUITE} with python3, mmdebstrap; "
          f"kiln's dependencies from {REQUIREMENTS.name})", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="kiln-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["mmdebstrap", "--quiet", "--variant=essential", f"--include={','.join(PACKAGES)}",
                        *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES], DEBIAN_SUITE, str(rootfs), *MIRRORS],
                       check=True)
        # Wheels for the image's platform and Python, whatever this machine's Python is.
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--root-user-action=ignore", "--no-deps",
                        "--only-binary=:all:", "--platform=manylinux2014_x86_64", f"--python-version={PYTHON}",
                        "--implementation=cp", f"--target={rootfs / SITE}", "--requirement", str(REQUIREMENTS)], check=True)
        # kiln signs images with cosign (spec.signing); the Dockerfile takes it from here (COSIGN_FROM).
        shutil.copy2(build(COSIGN) / "cosign", rootfs / "usr/local/bin/cosign")
        # and it is the BuildKit client of warm builders (spec.builder.warm): BUILDCTL_FROM.
        shutil.copy2(build(BUILDKIT) / "buildctl", rootfs / "usr/bin/buildctl")
        with (rootfs / "etc/passwd").open("a") as passwd:
            passwd.write(f"kiln:x:{USER}:{USER}:kiln operator:/nonexistent:/usr/sbin/nologin\n")
        with (rootfs / "etc/group").open("a") as group:
            group.write(f"kiln:x:{USER}:\n")
        write_oci_layout(layout, "latest", rootfs, {"Env": ENV, "Cmd": ["python3"]})
    return layout


def _daemon(state: Path) -> tuple[subprocess.Popen | None, str]:
    """BUILDKIT_HOST's daemon, or the pinned buildkitd started as root with its state in the cache (so that a
    second `make image` reuses the first one's layers)."""
    if os.environ.get("BUILDKIT_HOST"):
        return None, os.environ["BUILDKIT_HOST"]
    if os.geteuid() != 0:
        raise SystemExit("image: buildkitd is started as root here; run as root, or set BUILDKIT_HOST to a BuildKit "
                         "daemon of yours")
    state.mkdir(parents=True, exist_ok=True)
    address = f"unix://{state}/buildkitd.sock"
    with (state / "buildkitd.log").open("ab") as log:
        daemon = subprocess.Popen([str(build(BUILDKIT) / "buildkitd"), f"--root={state}/root", f"--addr={address}"],
                                  stdout=log, stderr=subprocess.STDOUT)
    buildctl = str(build(BUILDKIT) / "buildctl")
    for _ in range(150):
        if subprocess.run([buildctl, f"--addr={address}", "debug", "workers"], capture_output=True).returncode == 0:
            return daemon, address
        if daemon.poll() is not None:
            break
        time.sleep(0.2)
    daemon.terminate()
    raise SystemExit(f"image: buildkitd did not start; its log: {state / 'buildkitd.log'}")


def buildctl_args(base: Path, name: str, archive: Path, push: bool, insecure: bool) -> list[str]:
    """`buildctl build` of the repository's Dockerfile FROM the base layout, to an OCI archive and, when asked,
    to the registry of `name`."""
    outputs = ["--output", f"type=oci,dest={archive},name={name}"]
    if push:
        outputs += ["--output", f"type=image,name={name},push=true" + (",registry.insecure=true" if insecure else "")]
    (manifest,) = json.loads((base / "index.json").read_text())["manifests"]  # buildctl names it by digest only
    return ["build", "--progress=plain", "--frontend=dockerfile.v0", f"--local=context={ROOT}",
            f"--metadata-file={archive.with_suffix('.json')}",
            f"--local=dockerfile={ROOT}", f"--opt=build-arg:BASE={BASE_NAME}", f"--opt=build-arg:COSIGN_FROM={BASE_NAME}",
            f"--opt=build-arg:BUILDCTL_FROM={BASE_NAME}",
            f"--oci-layout={BASE_NAME}={base}",
            f"--opt=context:{BASE_NAME}=oci-layout://{BASE_NAME}@{manifest['digest']}", *outputs]


def build_image(name: str, archive: Path, push: bool = False) -> Path:
    """The operator image `name` as an OCI archive at `archive`, its digest beside it (.digest); pushed too when
    asked, with the credentials of DOCKER_CONFIG as docker's. To the local registry (cluster/registry.py) with its
    login, and with the base beside it as registry.BASE, which an in-cluster build of kiln builds FROM."""
    base = base_layout()
    archive.parent.mkdir(parents=True, exist_ok=True)
    local = name.startswith(f"{registry.HOST}/")
    env = None
    if local and push:
        env = {**os.environ, "DOCKER_CONFIG": str(registry.docker_config(up.REGISTRY_STATE))}
        registry.push_layout(base, registry.BASE)
    daemon, address = _daemon(IMAGES.parent / "buildkitd-image")
    try:
        subprocess.run([str(build(BUILDKIT) / "buildctl"), f"--addr={address}",
                        *buildctl_args(base, name, archive, push, insecure=local)], check=True, env=env)
    finally:
        if daemon:
            daemon.terminate()
            daemon.wait(timeout=30)
    digest = json.loads(archive.with_suffix(".json").read_text())["containerimage.digest"]
    archive.with_suffix(".digest").write_text(digest)
    print(f"image: {name}@{digest} written to {archive}" + (" and pushed" if push else ""), file=sys.stderr)
    return archive
