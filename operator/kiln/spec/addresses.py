"""Addresses no request kiln makes or asks for may reach: link-local and the cloud metadata services, in every
spelling a URL or a resolver may carry them (pure)."""
from __future__ import annotations

import ipaddress
import socket

# Cloud metadata services reachable at ordinary addresses, beside all of link-local: Alibaba's, AWS's IPv6
# one, Azure's wire server.
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254", "168.63.129.16")}
# Names the clouds give their metadata services.
METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                            "instance-data.ec2.internal"})


_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
# Where RFC 6052 puts the IPv4 address's four bytes for each prefix length a local-use NAT64 prefix may have
# (byte 8 is reserved, so the address steps over it).
_RFC6052_BYTES = {48: (6, 7, 9, 10), 56: (7, 9, 10, 11), 64: (9, 10, 11, 12), 96: (12, 13, 14, 15)}


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address may stand for: IPv4-mapped, -compatible and -translated, 6to4,
    Teredo (server and client) and NAT64 (the well-known prefix, and every RFC 6052 layout of local-use ones)."""
    found = []
    if ip.ipv4_mapped:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found += list(ip.teredo)
    packed = ip.packed
    if packed[:12] == bytes(12) and int.from_bytes(packed[12:], "big") > 1:  # ::a.b.c.d, but not :: and ::1
        found.append(ipaddress.IPv4Address(packed[12:]))
    if ip in _NAT64_WELL_KNOWN or ip in _IPV4_TRANSLATED:
        found.append(ipaddress.IPv4Address(packed[12:]))
    if ip in _NAT64_LOCAL_USE:
        found += [ipaddress.IPv4Address(bytes(packed[i] for i in where)) for where in _RFC6052_BYTES.values()]
    return found


def candidates(address: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    ip = ipaddress.ip_address(address.split("%")[0].strip("[]"))
    return [ip, *(embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else [])]


def forbidden_address(address: str) -> bool:
    """Link-local or a cloud metadata address, directly or inside any IPv6 form that carries an IPv4 one."""
    return any(c.is_link_local or c in METADATA_ADDRESSES for c in candidates(address))


def forbidden_host(host: str) -> bool:
    """A URL's host that is a metadata name, or an address forbidden_address refuses in any spelling a resolver
    takes: dotted or not, decimal, octal or hex parts (inet_aton's), IPv6 in brackets."""
    host = host.strip("[]").rstrip(".").lower()
    if host in METADATA_NAMES:
        return True
    try:
        return forbidden_address(str(ipaddress.ip_address(host.split("%")[0])))
    except ValueError:
        pass
    try:
        return forbidden_address(socket.inet_ntoa(socket.inet_aton(host)))
    except OSError:
        return False
