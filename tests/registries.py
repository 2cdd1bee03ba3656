"""Real registries for tests: Debian's docker-registry (CNCF distribution) on 127.0.0.1.

`start_htpasswd_registry` gives Basic auth; `start_token_registry` gives the Bearer
flow every public registry uses, with a small token issuer that signs JWTs with a
test key and grants each user only the actions it is allowed.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from kiln.registry import MANIFEST_TYPES

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SERVICE = "kiln-test-registry"
ISSUER = "kiln-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not listen on {port} within {timeout}s")


@dataclass
class RunningRegistry:
    host: str  # 127.0.0.1:PORT
    users: dict[str, str]  # user -> password
    process: subprocess.Popen = field(repr=False)
    issuer: http.server.HTTPServer | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)  # for a TLS registry: the CA that signed its certificate

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.issuer:
            self.issuer.shutdown()


def _start(extra: dict, workdir: Path) -> tuple[str, subprocess.Popen]:
    """Run docker-registry on a free loopback port with `extra` config (auth, http.tls) over the defaults."""
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        **{k: v for k, v in extra.items() if k != "http"},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "kiln-test-http-secret", **extra.get("http", {})},
    }
    path = workdir / "config.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    # A file, not a pipe: nobody reads a pipe while tests run, and a full one would hang the registry.
    log = (workdir / "registry.log").open("wb")
    process = subprocess.Popen([REGISTRY_BINARY, "serve", str(path)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, process, workdir / "registry.log")
    return f"127.0.0.1:{port}", process


def start_htpasswd_registry(workdir: Path, users: dict[str, str], tls: bool = False) -> RunningRegistry:
    """Basic auth; with tls, HTTPS with a certificate from a private CA (RunningRegistry.ca_pem)."""
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                                for u, p in users.items()))
    config: dict = {"auth": {"htpasswd": {"realm": "kiln-test", "path": str(htpasswd)}}}
    ca_pem = None
    if tls:
        ca_pem, cert, key = _server_certificate(workdir)
        config["http"] = {"tls": {"certificate": str(cert), "key": str(key)}}
    host, process = _start(config, workdir)
    return RunningRegistry(host, users, process, ca_pem=ca_pem)


def _server_certificate(workdir: Path) -> tuple[str, Path, Path]:
    """A private CA and a certificate it signed for 127.0.0.1: (CA PEM, certificate file, key file)."""
    import ipaddress

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = workdir / "server.crt", workdir / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file


class TokenIssuer(http.server.ThreadingHTTPServer):
    """GET /token?service=...&scope=repository:NAME:ACTIONS with Basic auth -> a signed JWT."""

    def __init__(self, key: rsa.RSAPrivateKey, certificate: x509.Certificate, users: dict[str, tuple[str, set[str]]]):
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.key, self.certificate, self.users = key, certificate, users
        self.requests: list[dict] = []

    def token_for(self, user: str, scopes: list[str]) -> str:
        allowed = self.users[user][1] if user else set()
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        now = datetime.datetime.now(datetime.UTC)
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "iat": now, "nbf": now - datetime.timedelta(seconds=5),
                  "exp": now + datetime.timedelta(minutes=5), "jti": base64.b32encode(now.isoformat().encode()).decode(),
                  "access": access}
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"x5c": [base64.b64encode(der).decode()]})


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    server: TokenIssuer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        user = ""
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.server.users.get(user, ("",))[0] != password:
                self.send_response(401)
                self.end_headers()
                return
        self.server.requests.append({"user": user, "service": query.get("service"), "scope": query.get("scope", [])})
        body = json.dumps({"token": self.server.token_for(user, query.get("scope", []))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _signing_key(workdir: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    bundle = workdir / "token-ca.pem"
    bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate, bundle


def start_token_registry(workdir: Path, users: dict[str, tuple[str, set[str]]]) -> RunningRegistry:
    """users: name -> (password, allowed actions such as {"pull", "push"})."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, certificate, bundle = _signing_key(workdir)
    issuer = TokenIssuer(key, certificate, users)
    threading.Thread(target=issuer.serve_forever, daemon=True).start()
    realm = f"http://127.0.0.1:{issuer.server_address[1]}/token"
    auth = {"token": {"realm": realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(bundle)}}
    host, process = _start({"auth": auth}, workdir)
    return RunningRegistry(host, {u: p for u, (p, _) in users.items()}, process, issuer)


def silent_server() -> tuple[socket.socket, str]:
    """A port that accepts connections and never answers: a registry that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener, f"127.0.0.1:{listener.getsockname()[1]}"


def _http(method: str, url: str, auth: tuple[str, str], body: bytes = b"", content_type: str | None = None):
    request = urllib.request.Request(url, data=body if method in ("POST", "PUT") else None, method=method)
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(registry: RunningRegistry, user: str, repository: str, platforms: list[str],
               tag: str | None = None) -> tuple[str | None, dict[str, str]]:
    """Push a tiny image per platform by digest, plus an index under `tag` when given.

    Returns (index digest or None, {platform: manifest digest}): what BuildKit leaves in a registry.
    """
    auth = (user, registry.users[user])
    base = f"http://{registry.host}/v2/{repository}"
    digests, entries = {}, []
    for platform in platforms:
        os_name, arch = platform.split("/")[:2]
        layer = f"layer for {platform}".encode()
        config = json.dumps({"architecture": arch, "os": os_name,
                             "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
        for blob in (layer, config):
            status, headers, _ = _http("POST", f"{base}/blobs/uploads/", auth)
            assert status == 202, status
            location = headers["Location"]
            location = location if location.startswith("http") else f"http://{registry.host}{location}"
            separator = "&" if "?" in location else "?"
            status, _, _ = _http("PUT", f"{location}{separator}digest={_digest(blob)}", auth, blob, "application/octet-stream")
            assert status == 201, status
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(layer),
                        "size": len(layer)}],
        }).encode()
        status, _, _ = _http("PUT", f"{base}/manifests/{_digest(manifest)}", auth, manifest,
                             "application/vnd.oci.image.manifest.v1+json")
        assert status == 201, status
        digests[platform] = _digest(manifest)
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
                        "size": len(manifest), "platform": {"os": os_name, "architecture": arch}})
    if tag is None:
        return None, digests
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    status, _, _ = _http("PUT", f"{base}/manifests/{tag}", auth, index, "application/vnd.oci.image.index.v1+json")
    assert status == 201, status
    return _digest(index), digests


def read_manifest(registry: RunningRegistry, user: str, repository: str, reference: str) -> tuple[str, dict, str]:
    """(content type, manifest, digest) of a tag or digest."""
    request = urllib.request.Request(f"http://{registry.host}/v2/{repository}/manifests/{reference}")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{registry.users[user]}".encode()).decode())
    request.add_header("Accept", ", ".join(MANIFEST_TYPES))  # without the list types, distribution serves one platform
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], json.loads(response.read()), response.headers["Docker-Content-Digest"]
