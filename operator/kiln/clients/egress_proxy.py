"""An HTTP proxy in the operator for what buildctl fetches itself on a warm build: registry tokens.

BuildKit's daemon asks its client, through the build's session, for a token from the realm a registry's challenge
names: the registry's choice, so a tenant's choice. buildctl runs in the operator, so without this its fetch would
go wherever that realm points, from the operator's network position. Through this proxy (buildctl's HTTP_PROXY and
HTTPS_PROXY) it reaches only what kiln's own registry client may (AddressGuard): never a link-local or cloud
metadata address, never a range of KILN_REGISTRY_DENY_CIDRS. Go never proxies loopback, where only the operator's
own servers listen.

A CONNECT (https) is tunnelled; a request in absolute form (plain http) is forwarded, one per connection. The
address checked is the one connected to: a name is resolved once, here.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from urllib.parse import urlsplit

from kiln.clients.registry import AddressGuard

LOG = logging.getLogger("kiln.egress")
REFUSED = "kiln refuses to connect to"  # in the status line buildctl's error quotes (build/outcomes.py reads it)
HEAD_TIMEOUT = 30.0  # seconds a client has to send its request's head
_HOP_BY_HOP = ("connection", "proxy-connection", "proxy-authorization", "keep-alive")


class Refused(Exception):
    pass


class EgressProxy:
    def __init__(self, guard: AddressGuard):
        self.guard = guard
        self._server: asyncio.Server | None = None

    async def url(self) -> str:
        """The proxy's URL, on loopback; started the first time."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            head = (await asyncio.wait_for(client.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)).decode("latin-1")
            method, target, version = head.split("\r\n", 1)[0].split(" ", 2)
            host, port, request = _destination(method, target, version, head)
            upstream, to_upstream = await self._connect(host, port)
        except Refused as exc:
            LOG.warning("refused a token fetch: %s", exc)
            await _answer(to_client, f"403 {REFUSED} {exc}")
            return
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            await _answer(to_client, f"502 kiln could not connect ({type(exc).__name__})")
            return
        if request is None:
            to_client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            to_upstream.write(request.encode("latin-1"))
        await asyncio.gather(_pipe(client, to_upstream), _pipe(upstream, to_client))

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [info[4][0] for info in found]
        for address in addresses:
            if refusal := self.guard.refusal(address):
                raise Refused(f"{host} ({address}), which {refusal}")
        return await asyncio.open_connection(addresses[0], port)


def _destination(method: str, target: str, version: str, head: str) -> tuple[str, int, str | None]:
    """(host, port, the request to send there: None for a tunnel)."""
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return host.strip("[]"), int(port), None
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ValueError("not an absolute http URL")
    headers = [line for line in head.split("\r\n")[1:] if line and line.split(":", 1)[0].strip().lower()
               not in _HOP_BY_HOP]
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return url.hostname, url.port or 80, "\r\n".join([f"{method} {path} {version}", *headers,
                                                       "Connection: close", "", ""])


async def _answer(writer: asyncio.StreamWriter, status: str) -> None:
    with contextlib.suppress(OSError):
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode("latin-1", "replace"))
        await writer.drain()
    writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(64 * 1024):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()
