"""cosign, run by the operator to sign what a build pushed (spec.signing.cosign).

The operator holds the key, never a build pod: a build pod shares its process namespace with the build's RUN
steps, which run the Dockerfile's code. The key and its password reach cosign in its environment (`env://`),
never on its command line, which `ps` shows; the registry credentials in a docker config in a private
directory that is removed afterwards. What cosign prints is cut to its error and has every secret taken out.

Signatures are Sigstore bundles attached to the image (OCI 1.1 referrers, or the referrers tag sha256-<hex>
where a registry has no referrers API), cosign v3's own format; no transparency log: a key pair needs none.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kiln.spec import reasons

KEY, PASSWORD = "cosign.key", "cosign.password"  # the keys `cosign generate-key-pair k8s://` writes
TIMEOUT = 120.0
# Failures worth trying again: the registry or the network, not the key or a refusal.
_TRANSIENT = re.compile(r"connection refused|connection reset|i/o timeout|timeout|TLS handshake|EOF|"
                        r"TOOMANYREQUESTS|status code 5\d\d|: 5\d\d |Service Unavailable|Bad Gateway", re.IGNORECASE)


class SigningError(Exception):
    """Why signing failed, in words that hold no secret; transient if trying again may help."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.reason = reasons.SIGNING_FAILED
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class SigningKey:
    key: str = field(repr=False)
    password: str = field(repr=False)
    has_password: bool = True


def signing_key(secret: dict | None, name: str) -> SigningKey:
    """The cosign key pair in a Secret; a clear error naming what is missing (never a value)."""
    if secret is None:
        raise SigningError(f"Secret {name!r} with the cosign key does not exist")
    data = secret.get("data") or {}
    if KEY not in data:
        raise SigningError(f"Secret {name!r} has no {KEY} (cosign generate-key-pair k8s://NAMESPACE/{name} "
                           "writes one)")
    key, password = _text(data, KEY, name), _text(data, PASSWORD, name) if PASSWORD in data else ""
    if "PRIVATE KEY-----" not in key:
        raise SigningError(f"{KEY} in Secret {name!r} is not a PEM private key")
    return SigningKey(key, password, PASSWORD in data)


def _text(data: dict, key: str, name: str) -> str:
    try:
        return base64.b64decode(data[key], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
        raise SigningError(f"{key} in Secret {name!r} is not text") from None


def fingerprint(public_pem: str) -> str:
    """SHA256:<hex> of the public key's DER (SubjectPublicKeyInfo)."""
    body = "".join(line for line in public_pem.strip().splitlines() if not line.startswith("-----"))
    return "SHA256:" + hashlib.sha256(base64.b64decode(body)).hexdigest()


@dataclass(frozen=True)
class Target:
    """Where the signature goes, and how cosign talks to that registry."""
    reference: str  # registry/repository@sha256:...
    docker_config: dict = field(repr=False)  # {"auths": ...} for the registry
    insecure: bool = False  # plain http, or TLS without a trusted certificate
    ca_pem: str | None = field(default=None, repr=False)


async def sign(cosign: str, target: Target, key: SigningKey, timeout: float = TIMEOUT) -> str:
    """Sign target.reference and push the signature; the key's fingerprint."""
    secrets = [key.key, *key.key.splitlines(), key.password, *_passwords(target.docker_config)]
    with tempfile.TemporaryDirectory(prefix="kiln-cosign-") as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "DOCKER_CONFIG": home,
               "TUF_ROOT": f"{home}/tuf", "COSIGN_KEY": key.key, "COSIGN_PASSWORD": key.password}
        _private_file(Path(home, "config.json"), json.dumps(target.docker_config))
        registry = ["--allow-insecure-registry", "--allow-http-registry"] if target.insecure else []
        if target.ca_pem and not target.insecure:
            Path(home, "ca.crt").write_text(target.ca_pem)
            registry = [f"--registry-cacert={home}/ca.crt"]
        public = await _run([cosign, "public-key", "--key", "env://COSIGN_KEY"], env, secrets, key, timeout)
        await _run([cosign, *sign_args(target.reference, registry)], env, secrets, key, timeout)
    return fingerprint(public)


def sign_args(reference: str, registry: list[str] = ()) -> list[str]:
    """`cosign sign`'s arguments: the key from the environment, no transparency log, no prompt."""
    return ["sign", "--key", "env://COSIGN_KEY", "--yes", "--use-signing-config=false", "--tlog-upload=false",
            *registry, reference]


def _private_file(path: Path, text: str) -> None:
    """A file only the operator's user reads, whatever its umask."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)


def _passwords(docker_config: dict) -> list[str]:
    return [value for auth in docker_config.get("auths", {}).values()
            for name, value in auth.items() if name in ("password", "auth") and value]


async def _run(argv: list[str], env: dict, secrets: list[str], key: SigningKey, timeout: float) -> str:
    try:
        process = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise SigningError(f"{argv[0]} is not installed where the operator runs (KILN_COSIGN names it)") from None
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise SigningError(f"cosign {argv[1]} did not finish within {timeout:g}s", transient=True) from None
    if process.returncode != 0:
        raise _failure(err.decode(errors="replace"), secrets, key)
    return out.decode(errors="replace")


def _failure(stderr: str, secrets: list[str], key: SigningKey) -> SigningError:
    """What cosign said went wrong, in kiln's words where kiln knows them, and never a secret."""
    if "decryption failed" in stderr:
        if not key.has_password:
            return SigningError(f"{KEY} is encrypted and the Secret has no {PASSWORD}")
        return SigningError(f"{PASSWORD} does not decrypt {KEY}")
    if "invalid pem block" in stderr or "unsupported pem type" in stderr:
        return SigningError(f"{KEY} is not a cosign private key")
    lines = stderr.strip().splitlines()
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    message = errors[-1] if errors else lines[-1] if lines else "cosign failed without a message"
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        message = message.replace(secret, "***")
    return SigningError(f"cosign: {message[:400]}", transient=bool(_TRANSIENT.search(message)))
