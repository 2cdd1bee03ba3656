"""The cluster's certificates and keys, made with Debian's openssl: one CA, a cert per client and server."""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

DAYS = "3650"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _key(path: Path) -> None:
    if not path.exists():
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
        path.chmod(0o600)


def ca(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "ca.crt", directory / "ca.key"
    directory.mkdir(parents=True, exist_ok=True)
    _key(key)
    if not cert.exists():
        _openssl("req", "-x509", "-new", "-key", str(key), "-subj", "/CN=kiln-local-cluster-ca", "-days", DAYS,
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-out", str(cert))
    return cert, key


def issue(directory: Path, name: str, common_name: str, organization: str | None = None,
          ips: tuple[str, ...] = (), dns: tuple[str, ...] = (), server: bool = False) -> tuple[Path, Path]:
    """A certificate signed by the CA in `directory`: for a client (CN = user, O = group) or a server (SANs)."""
    ca_cert, ca_key = ca(directory)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _key(key)
    if cert.exists():
        return cert, key
    subject = f"/CN={common_name}" + (f"/O={organization}" if organization else "")
    sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{name}" for name in dns]
    extensions = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                  f"extendedKeyUsage={'serverAuth,clientAuth' if server else 'clientAuth'}"]
    if sans:
        extensions.append("subjectAltName=" + ",".join(sans))
    with tempfile.NamedTemporaryFile("w", suffix=".ext") as ext:
        ext.write("\n".join(extensions) + "\n")
        ext.flush()
        csr = directory / f"{name}.csr"
        _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-days", DAYS, "-extfile", ext.name, "-out", str(cert))
        csr.unlink()
    return cert, key


def service_account_key(directory: Path) -> tuple[Path, Path]:
    """The key pair that signs ServiceAccount tokens (`kubectl create token`) and verifies them."""
    key, public = directory / "sa.key", directory / "sa.pub"
    _key(key)
    if not public.exists():
        _openssl("pkey", "-in", str(key), "-pubout", "-out", str(public))
    return key, public
