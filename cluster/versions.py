"""The pinned upstream releases, and where their builds are cached (outside the checkout)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln")


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    version: str
    commands: tuple[str, ...]  # package paths below the module
    tools: str | None = None  # a tools go.mod (cluster/tools/<name>) for modules with replace directives
    tags: str = ""
    ldflags: str = ""
    cgo: bool = False  # links C code (and the host's libraries): built for this machine only

    def packages(self, commands: tuple[str, ...] | None = None) -> list[str]:
        return [f"{self.module}/{c}" if c else self.module for c in commands or self.commands]

    def binaries(self, commands: tuple[str, ...] | None = None) -> list[str]:
        """The binaries' file names (a module-root package is named for the component)."""
        return [c.rsplit("/", 1)[-1] if c else self.name for c in commands or self.commands]


_K8S_VERSION = "k8s.io/component-base/version"
KUBERNETES = Component(
    "kubernetes", "k8s.io/kubernetes", "v1.37.2",
    ("cmd/kube-apiserver", "cmd/kube-controller-manager", "cmd/kube-scheduler", "cmd/kubelet", "cmd/kube-proxy",
     "cmd/kubectl"),
    tools="kubernetes",
    ldflags=f"-X {_K8S_VERSION}.gitVersion=v1.37.2 -X {_K8S_VERSION}.gitMajor=1 -X {_K8S_VERSION}.gitMinor=37 "
            f"-X {_K8S_VERSION}.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=v1.37.2",
)
# Rendered objects and manifests are validated against the schemas of the Kubernetes the local cluster runs.
KUBERNETES_MINOR = KUBERNETES.version.removeprefix("v").rsplit(".", 1)[0]
ETCD = Component("etcd", "go.etcd.io/etcd/server/v3", "v3.7.3", ("",), tools="etcd")
CONTAINERD = Component(
    "containerd", "github.com/containerd/containerd/v2", "v2.4.2",
    ("cmd/containerd", "cmd/containerd-shim-runc-v2", "cmd/ctr"),
    tags="urfave_cli_no_docs no_btrfs osusergo netgo static_build",
    ldflags="-X github.com/containerd/containerd/v2/version.Version=v2.4.2",
)
# BuildKit's own image build uses these tags for buildkitd (Dockerfile, stage buildkitd).
BUILDKIT = Component(
    "buildkit", "github.com/moby/buildkit", "v0.34.2", ("cmd/buildkitd", "cmd/buildctl"), tools="buildkit",
    tags="osusergo netgo static_build seccomp",
    ldflags="-X github.com/moby/buildkit/version.Version=v0.34.2",
)
# The rootlesskit release BuildKit v0.34.2's image ships (its Dockerfile, ROOTLESSKIT_VERSION).
ROOTLESSKIT = Component("rootlesskit", "github.com/rootless-containers/rootlesskit/v3", "v3.2.0", ("cmd/rootlesskit",))
# The nodes' OCI runtime. Debian 12's runc 1.1.5 cannot give a pod its own user namespace (hostUsers: false needs
# idmapped mounts, runc 1.2 or newer), which rootless BuildKit with its process sandbox needs. Its nsenter is C,
# and seccomp needs libseccomp-dev.
RUNC = Component("runc", "github.com/opencontainers/runc", "v1.5.3", ("",), tags="seccomp", cgo=True,
                 ldflags="-X main.version=1.5.3")

# Supply chain: the operator signs with cosign (its image ships it); the tests verify with it, and build an SBOM
# generator image around syft.
COSIGN = Component("cosign", "github.com/sigstore/cosign/v3", "v3.1.3", ("cmd/cosign",))
SYFT = Component("syft", "github.com/anchore/syft", "v1.57.2", ("cmd/syft",))

COMPONENTS = (ETCD, KUBERNETES, CONTAINERD, RUNC, BUILDKIT, ROOTLESSKIT)  # the local cluster's
TOOLS = (COSIGN, SYFT)
BUILDKIT_IMAGE = f"moby/buildkit:{BUILDKIT.version}-rootless"
PAUSE_IMAGE = "localhost/kiln/pause:catatonit"
DEBIAN_SUITE = "bookworm"


def bin_dir(component: Component, goarch: str = "amd64") -> Path:
    return CACHE / "bin" / f"{component.name}-{component.version}-{goarch}"
