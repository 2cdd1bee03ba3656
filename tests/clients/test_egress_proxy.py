"""The operator's proxy for buildctl's token fetches: it tunnels and forwards to what kiln's registry guard
allows, and refuses the rest before connecting, saying why."""
import asyncio
import ipaddress

import pytest

from kiln.clients.egress_proxy import REFUSED, EgressProxy
from kiln.clients.registry import AddressGuard


@pytest.fixture
async def upstream():
    """A server on loopback that records each connection's first bytes and answers a fixed HTTP response."""
    seen = []

    async def serve(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\ntoken")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], seen
    server.close()


async def exchange(proxy: EgressProxy, request: bytes) -> bytes:
    url = await proxy.url()
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_a_connect_to_an_allowed_address_is_tunnelled(upstream):
    port, seen = upstream
    proxy = EgressProxy(AddressGuard())
    url = await proxy.url()
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection established\r\n\r\n"
    writer.write(b"GET /token HTTP/1.1\r\nHost: x\r\n\r\n")  # what TLS would carry, here in the clear
    assert (await asyncio.wait_for(reader.read(), 10)).endswith(b"\r\n\r\ntoken")
    assert seen == [b"GET /token HTTP/1.1\r\nHost: x\r\n\r\n"]
    await proxy.close()


async def test_a_plain_http_request_is_forwarded_in_origin_form_without_the_proxys_headers(upstream):
    port, seen = upstream
    proxy = EgressProxy(AddressGuard())
    answer = await exchange(proxy, f"GET http://127.0.0.1:{port}/token?scope=a HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                   "Proxy-Authorization: Basic c2VjcmV0\r\nConnection: keep-alive\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"token")
    assert seen == [f"GET /token?scope=a HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()]
    await proxy.close()


@pytest.mark.parametrize(("guard", "target", "why"), [
    (AddressGuard(), "169.254.169.254:80", "169.254.169.254 (169.254.169.254), which is a link-local or cloud metadata"),
    (AddressGuard(), "[fd00:ec2::254]:443", "fd00:ec2::254 (fd00:ec2::254), which is a link-local or cloud metadata"),
    (AddressGuard(deny=(ipaddress.ip_network("127.0.0.0/8"),)), "localhost:5000",
     "localhost (127.0.0.1), which is in 127.0.0.0/8, which the operator setting KILN_REGISTRY_DENY_CIDRS denies"),
])
async def test_a_fetch_the_registry_guard_refuses_gets_403_naming_the_address_and_the_setting(guard, target, why):
    proxy = EgressProxy(guard)
    for request in (f"CONNECT {target} HTTP/1.1\r\n\r\n", f"POST http://{target}/token HTTP/1.1\r\n\r\n"):
        status = (await exchange(proxy, request.encode())).split(b"\r\n")[0].decode()
        assert status.startswith(f"HTTP/1.1 403 {REFUSED} {why}"), status
    await proxy.close()
