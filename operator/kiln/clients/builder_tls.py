"""Certificates for a warm builder's mutual TLS: a certificate authority of its own, the daemon's pair (named for
the builder, which the client checks) and the operator's client pair. The CA's key is not kept: nothing else is
ever signed by it."""
from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)  # a builder is deleted with its namespace, or by hand to renew


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert(subject: str, key, issuer: x509.Name, signer, now: datetime.datetime, **extensions) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY))
    for extension, critical in extensions.values():
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def issue(builder: str) -> dict[str, str]:
    """ca.crt, tls.crt and tls.key (the daemon's, for the name `builder`), client.crt and client.key, as PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = _name(f"kiln {builder} CA")
    ca = _cert(f"kiln {builder} CA", ca_key, ca_name, ca_key, now,
               basic=(x509.BasicConstraints(ca=True, path_length=0), True))
    server = _cert(builder, server_key, ca_name, ca_key, now,
                   san=(x509.SubjectAlternativeName([x509.DNSName(builder)]), False),
                   usage=(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False))
    client = _cert("kiln-operator", client_key, ca_name, ca_key, now,
                   usage=(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False))
    pem = lambda cert: cert.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
    return {"ca.crt": pem(ca), "tls.crt": pem(server), "tls.key": _pem(server_key),
            "client.crt": pem(client), "client.key": _pem(client_key)}
