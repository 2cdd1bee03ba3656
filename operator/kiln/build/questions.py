"""The questions decide asks of a registry (or of the cluster's logs and events), and a failed answer.

decide stays pure by asking: the controller answers (controller/answers.py) and decide runs again
with the answer in Facts.answers.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PushCheck:
    """Do these repositories accept a push with the build's credentials?"""
    repositories: tuple[str, ...]


@dataclass(frozen=True)
class TagDigest:
    """Which digest and media type does this tag have (a build that pushed but reported no digest)?"""
    image: str
    tag: str


@dataclass(frozen=True)
class ImageContents:
    """(platform, manifest digest) of each image in what was pushed under this digest."""
    image: str
    digest: str
    platforms: tuple[str, ...]


@dataclass(frozen=True)
class AssembleIndex:
    """Verify every child is in the registry, push one index of them under every tag; answer its digest."""
    image: str
    children: tuple[tuple[str, str, str], ...]  # (platform, digest, media type)
    tags: tuple[str, ...]


@dataclass(frozen=True)
class SignImage:
    """Sign image@digest with the cosign key in this Secret, and push the signature; answer a Signature."""
    image: str
    digest: str
    key_secret: str


@dataclass(frozen=True)
class JobEvents:
    """What the Job controller said about a Job that has made no pod: (reason, message) of its events."""
    job: str


@dataclass(frozen=True)
class BuildLog:
    """Keep the log of a unit's pod that ended (build/logs.py); answer a KeptLog."""
    job: str
    pod: str


@dataclass(frozen=True)
class KeptLog:
    """What a kept log says of the cache, and the ConfigMap that keeps it (None when the log was gone)."""
    cached_steps: int
    total_steps: int
    config_map: str | None


Question = PushCheck | TagDigest | ImageContents | AssembleIndex | SignImage | BuildLog | JobEvents


@dataclass(frozen=True)
class Attestation:
    """The attestation manifest BuildKit attached to one platform's image, and what its layers attest."""
    digest: str
    predicate_types: tuple[str, ...]


@dataclass(frozen=True)
class PlatformImage:
    """One platform's image in what was pushed (ImageContents and AssembleIndex answer a list of them)."""
    platform: str
    digest: str
    attestation: Attestation | None = None


@dataclass(frozen=True)
class Signature:
    """What signing pushed: where the signature is, and which key made it."""
    reference: str
    key_fingerprint: str


@dataclass(frozen=True)
class RegistryProblem:
    """A registry's answer that was not the fact asked for."""
    reason: str
    message: str
    transient: bool
