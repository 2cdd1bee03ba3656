"""Container images the local cluster needs, built here without a registry or a Docker engine.

- BuildKit's rootless image, in the layout of the official moby/buildkit:<version>-rootless
  (Dockerfile stage `rootless`: user 1000, the same paths, environment and entrypoint), from
  the binaries built from BuildKit's and rootlesskit's Go modules at the pinned versions, on a
  Debian rootfs (mmdebstrap) instead of Alpine, with Debian's runc and QEMU user emulators.
- The pod sandbox ("pause") image: Debian's static catatonit in pause mode, as podman uses it.

Each is written once per version as a docker-archive tar that `ctr images import` reads.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cluster.build import build
from cluster.versions import BUILDKIT, BUILDKIT_IMAGE, CACHE, DEBIAN_SUITE, PAUSE_IMAGE, ROOTLESSKIT

IMAGES = CACHE / "images"
MIRRORS = (f"deb http://deb.debian.org/debian {DEBIAN_SUITE} main",
           f"deb http://deb.debian.org/debian-security {DEBIAN_SUITE}-security main")
# What the official rootless image installs with apk, in Debian's names; runc is BuildKit's OCI runtime.
PACKAGES = ("git", "openssh-client", "uidmap", "fuse3", "fuse-overlayfs", "pigz", "xz-utils", "openssl",
            "ca-certificates", "runc")
# The emulators the official image ships as buildkit-qemu-<arch> (from tonistiigi/binfmt), here Debian's.
EMULATED = ("aarch64", "arm", "riscv64", "ppc64le", "s390x")
USER_DIRS = ("/run/user/1000", "/home/user", "/home/user/.local", "/home/user/.local/tmp",
             "/home/user/.local/share", "/home/user/.local/share/buildkit")
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/home/user", "USER=user",
       "XDG_RUNTIME_DIR=/run/user/1000", "TMPDIR=/home/user/.local/tmp",
       "BUILDKIT_HOST=unix:///run/user/1000/buildkit/buildkitd.sock"]
# Debian installs newuidmap and newgidmap setuid root; they then open /proc/PID/uid_map as root, which
# the kernel allows only with CAP_SYS_ADMIN, and a pod has none ("write to uid_map failed: Operation
# not permitted"). With file capabilities instead (as Fedora ships them) they run as the calling user,
# the owner of the new user namespace, and need only CAP_SETUID / CAP_SETGID, which a pod keeps.
# vfs_cap_data revision 2, effective flag set, one permitted capability.
FILE_CAPABILITIES = {"usr/bin/newuidmap": struct.pack("<5I", 0x02000001, 1 << 7, 0, 0, 0),  # CAP_SETUID
                     "usr/bin/newgidmap": struct.pack("<5I", 0x02000001, 1 << 6, 0, 0, 0)}  # CAP_SETGID
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# Docs, manuals and translations make no difference to a build daemon.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


def buildkit_image() -> Path:
    """The rootless BuildKit image archive, named as the official one."""
    archive = IMAGES / f"buildkit-{BUILDKIT.version}-rootless-amd64.tar"
    if archive.exists():
        return archive
    buildkit, rootlesskit = build(BUILDKIT), build(ROOTLESSKIT)
    print(f"cluster: building image {BUILDKIT_IMAGE} (Debian {DEBIAN_SUITE} rootfs with mmdebstrap)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kiln-image-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["mmdebstrap", "--quiet", "--variant=essential", f"--include={','.join(PACKAGES)}",
                        *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES], DEBIAN_SUITE, str(rootfs), *MIRRORS],
                       check=True)
        for name in ("buildkitd", "buildctl"):
            _install(buildkit / name, rootfs / "usr/bin" / name)
        _install(rootlesskit / "rootlesskit", rootfs / "usr/bin/rootlesskit")
        _install(_module_dir(BUILDKIT) / "examples/buildctl-daemonless/buildctl-daemonless.sh",
                 rootfs / "usr/bin/buildctl-daemonless.sh")
        for arch in EMULATED:
            _install(Path(f"/usr/bin/qemu-{arch}-static"), rootfs / f"usr/bin/buildkit-qemu-{arch}")
        with (rootfs / "etc/passwd").open("a") as passwd:
            passwd.write("user:x:1000:1000::/home/user:/bin/sh\n")
        with (rootfs / "etc/group").open("a") as group:
            group.write("user:x:1000:\n")
        for name in ("subuid", "subgid"):
            (rootfs / "etc" / name).write_text("user:100000:65536\n")
        for directory in USER_DIRS:
            (rootfs / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        config = {"User": "1000:1000", "Env": ENV, "Entrypoint": ["rootlesskit", "buildkitd"],
                  "Volumes": {"/home/user/.local/share/buildkit": {}}}
        _write_archive(archive, BUILDKIT_IMAGE, rootfs, config, owned_by_user=USER_DIRS)
    return archive


# Applets the busybox base links: what the quick start's and the tests' Dockerfiles run.
APPLETS = ("sh", "cat", "echo", "uname", "sleep", "ls", "mkdir", "true", "false", "env", "wc", "head")


def busybox_layer(arch: str) -> bytes:
    """A layer with Debian's static busybox for `arch` (a Debian architecture name) and a few applets: the
    smallest base image with a shell, for every platform the cluster builds."""
    cache = IMAGES / f"busybox-{arch}.tar"
    if not cache.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["mmdebstrap", "--quiet", "--variant=extract", f"--architectures={arch}",
                            "--include=busybox-static", DEBIAN_SUITE, tmp, MIRRORS[0]], check=True)
            cache.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(cache.with_suffix(".partial"), "w") as tar:
                tar.add(Path(tmp) / "bin" / "busybox", arcname="bin/busybox")
                for applet in APPLETS:
                    link = tarfile.TarInfo(f"bin/{applet}")
                    link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                    tar.addfile(link)
                scratch = tarfile.TarInfo("tmp")
                scratch.type, scratch.mode = tarfile.DIRTYPE, 0o1777
                tar.addfile(scratch)
            cache.with_suffix(".partial").rename(cache)
    return cache.read_bytes()


def pause_image() -> Path:
    archive = IMAGES / "pause-catatonit-amd64.tar"
    if archive.exists():
        return archive
    with tempfile.TemporaryDirectory(prefix="kiln-pause-") as tmp:
        subprocess.run(["apt-get", "download", "-q", "catatonit"], cwd=tmp, check=True)
        (deb,) = Path(tmp).glob("catatonit_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/pkg"], check=True)
        rootfs = Path(tmp) / "rootfs"
        _install(Path(tmp) / "pkg/usr/bin/catatonit", rootfs / "catatonit")
        _write_archive(archive, PAUSE_IMAGE, rootfs, {"Entrypoint": ["/catatonit", "-P"]})
    return archive


def _module_dir(component) -> Path:
    found = subprocess.run(["go", "mod", "download", "-json", f"{component.module}@{component.version}"],
                           check=True, capture_output=True, text=True, env={"GOTOOLCHAIN": "local", **_go_env()})
    return Path(json.loads(found.stdout)["Dir"])


def _go_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _install(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    target.chmod(0o755)


def _layer(rootfs: Path, out: Path, owned_by_user: tuple[str, ...]) -> str:
    """rootfs as an uncompressed layer tar; returns its sha256 (the diff ID)."""
    def entry(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""
        if "/" + info.name in owned_by_user:
            info.uid = info.gid = 1000
        if info.name in FILE_CAPABILITIES:  # a PAX xattr record, which containerd applies when unpacking
            info.mode &= 0o755
            info.pax_headers["SCHILY.xattr.security.capability"] = \
                FILE_CAPABILITIES[info.name].decode("utf-8", "surrogateescape")
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.iterdir()):
            tar.add(path, arcname=path.name, filter=entry)
    return _sha256(out)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _image_config(config: dict, diff_id: str) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                       "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
                       "history": [{"created_by": "kiln cluster/images.py"}]}, sort_keys=True).encode()


def _write_archive(archive: Path, name: str, rootfs: Path, config: dict, owned_by_user: tuple[str, ...] = ()) -> None:
    """A docker-archive (what `docker save` writes) with one layer: manifest.json, config, layer.tar."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    layer = rootfs.parent / "layer.tar"
    diff_id = _layer(rootfs, layer, owned_by_user)
    image_config = _image_config(config, diff_id)
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [name], "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        for member, data in ((config_name, image_config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(layer, arcname=f"{diff_id}/layer.tar")
    partial.rename(archive)


def write_oci_layout(layout: Path, tag: str, rootfs: Path, config: dict) -> None:
    """An OCI image layout directory with one image of one gzip layer, its index naming it `tag`: what BuildKit
    takes as a named context (oci-layout://), so a Dockerfile's FROM needs no registry."""
    layer = rootfs.parent / "layer.tar"
    diff_id = _layer(rootfs, layer, ())
    blobs = layout.with_name(layout.name + ".partial") / "blobs" / "sha256"
    shutil.rmtree(blobs.parent.parent, ignore_errors=True)
    blobs.mkdir(parents=True)
    with layer.open("rb") as raw, gzip.GzipFile(blobs / "layer.partial", "wb", 6, mtime=0) as packed:
        shutil.copyfileobj(raw, packed, 1 << 20)
    layer_digest = _sha256(blobs / "layer.partial")
    (blobs / "layer.partial").rename(blobs / layer_digest)

    def blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    image_config = _image_config(config, diff_id)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": blob(image_config),
                   "size": len(image_config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{layer_digest}",
                    "size": (blobs / layer_digest).stat().st_size}],
    }, sort_keys=True).encode()
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": blob(manifest), "size": len(manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    root = blobs.parent.parent
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    shutil.rmtree(layout, ignore_errors=True)
    root.rename(layout)
