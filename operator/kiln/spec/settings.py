"""Operator settings, from the environment (set them on the Deployment)."""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from kiln.spec.references import IMAGE_REF_PATTERN, PLATFORM_PATTERN

DEFAULT_BUILDKIT_IMAGE = "moby/buildkit:v0.34.2-rootless"
DEFAULT_SBOM_GENERATOR = "docker/buildkit-syft-scanner:stable-1"  # BuildKit's own default
DEFAULT_BUILDER_ID = "kiln://cluster.local"


@dataclass(frozen=True)
class Settings:
    buildkit_image: str = DEFAULT_BUILDKIT_IMAGE
    # How often Ready logins are checked against their registry again, in seconds.
    verify_interval: float = 600.0
    registry_timeout: float = 10.0
    # How often every object is looked at again without an event, in seconds.
    resync_interval: float = 30.0
    # Verification may not reach link-local or cloud metadata addresses unless allowed.
    allow_link_local: bool = False
    # Address ranges the operator never connects to for a registry (login, token realm, upload), for clusters
    # where it must not reach internal services.
    registry_deny_cidrs: tuple[str, ...] = ()
    # What a build that names no platform builds for; empty: the platform of the node its pod lands on.
    default_platform: str = ""
    # How long a build pod may fail to pull the BuildKit image (the kubelet keeps trying) before the build fails.
    image_pull_grace: float = 300.0
    # The namespaces served (`kiln run -n NS`); empty: every namespace.
    namespaces: tuple[str, ...] = ()
    # Where Prometheus scrapes /metrics; 0 turns the endpoint off.
    metrics_port: int = 9090
    # The address it listens on: every one in a pod; 127.0.0.1 where the operator runs on a shared host.
    metrics_address: str = "0.0.0.0"
    # How many builds may run at once in one namespace (0: no limit); the others wait in line, Queued.
    max_builds_per_namespace: int = 0
    # How many ImageBuilds are reconciled at once; a burst of creates queues in the operator. As many as the
    # connections kiln keeps to the API server (clients.kube.CONNECTIONS): fewer made a burst wait on kiln's own
    # slots (docs/benchmarks.md).
    max_concurrent_reconciles: int = 100
    # The SBOM generator of builds that name none: an air-gapped site mirrors one and names it here.
    sbom_generator: str = DEFAULT_SBOM_GENERATOR
    # Provenance names each build <this>/namespaces/NS/imagebuilds/NAME/builds/ID as its builder: a URI that
    # tells this cluster's kiln apart from others'.
    builder_id: str = DEFAULT_BUILDER_ID
    # The cosign binary kiln signs with (spec.signing); the operator image ships one.
    cosign: str = "cosign"
    # The buildctl binary kiln runs builds on warm builders with (spec.builder.warm); the operator image ships one.
    buildctl: str = "buildctl"
    # Seconds a warm builder stays up after its last build before kiln scales it to zero.
    builder_idle: float = 600.0
    # Builds one warm builder runs at once before kiln starts another of the same kind (on another node, where
    # there is one), and how many builders a namespace may have up at most; past both, builds share them.
    builds_per_builder: int = 4
    max_builders_per_namespace: int = 4
    # Seconds a build waits for its warm builder to be ready (pulling the BuildKit image, a node for it) before
    # it fails, retryably.
    builder_start_timeout: float = 300.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            buildkit_image=env.get("KILN_BUILDKIT_IMAGE", DEFAULT_BUILDKIT_IMAGE),
            verify_interval=float(env.get("KILN_VERIFY_INTERVAL", cls.verify_interval)),
            registry_timeout=float(env.get("KILN_REGISTRY_TIMEOUT", cls.registry_timeout)),
            resync_interval=float(env.get("KILN_RESYNC_INTERVAL", cls.resync_interval)),
            allow_link_local=env.get("KILN_ALLOW_LINK_LOCAL", "").lower() in ("1", "true", "yes"),
            registry_deny_cidrs=_networks(env.get("KILN_REGISTRY_DENY_CIDRS", "")),
            default_platform=_platform(env.get("KILN_DEFAULT_PLATFORM", "")),
            image_pull_grace=float(env.get("KILN_IMAGE_PULL_GRACE", cls.image_pull_grace)),
            namespaces=tuple(n for n in env.get("KILN_NAMESPACES", "").split(",") if n),
            metrics_port=int(env.get("KILN_METRICS_PORT", cls.metrics_port)),
            metrics_address=env.get("KILN_METRICS_ADDRESS", cls.metrics_address),
            max_builds_per_namespace=int(env.get("KILN_MAX_BUILDS_PER_NAMESPACE", cls.max_builds_per_namespace)),
            max_concurrent_reconciles=int(env.get("KILN_MAX_CONCURRENT_RECONCILES", cls.max_concurrent_reconciles)),
            sbom_generator=_image(env.get("KILN_SBOM_GENERATOR", DEFAULT_SBOM_GENERATOR)),
            builder_id=env.get("KILN_BUILDER_ID", DEFAULT_BUILDER_ID).rstrip("/"),
            cosign=env.get("KILN_COSIGN", cls.cosign),
            buildctl=env.get("KILN_BUILDCTL", cls.buildctl),
            builder_idle=float(env.get("KILN_BUILDER_IDLE", cls.builder_idle)),
            builds_per_builder=max(1, int(env.get("KILN_BUILDS_PER_BUILDER", cls.builds_per_builder))),
            max_builders_per_namespace=max(1, int(env.get("KILN_MAX_BUILDERS_PER_NAMESPACE",
                                                          cls.max_builders_per_namespace))),
            builder_start_timeout=float(env.get("KILN_BUILDER_START_TIMEOUT", cls.builder_start_timeout)),
        )


def _networks(text: str) -> tuple[str, ...]:
    """Comma-separated CIDRs, each checked now: a typo must stop the operator, not open the range."""
    networks = tuple(item.strip() for item in text.split(",") if item.strip())
    for item in networks:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"KILN_REGISTRY_DENY_CIDRS: {item!r} is not an address range (CIDR)") from None
    return networks


def _platform(text: str) -> str:
    if text and not re.fullmatch(PLATFORM_PATTERN.strip("^$"), text):
        raise ValueError(f"KILN_DEFAULT_PLATFORM: {text!r} is not a platform such as linux/amd64")
    return text


def _image(text: str) -> str:
    if not re.fullmatch(IMAGE_REF_PATTERN.strip("^$"), text):
        raise ValueError(f"KILN_SBOM_GENERATOR: {text!r} is not an image reference")
    return text
