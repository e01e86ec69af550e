"""The HTTP server's listening sockets, made here so that the server can close them without
resetting a connection (issue 20).

aiohttp would make them itself, but closing a listening socket resets every connection the
kernel completed and the server had not accepted yet, and each handshake still under way:
those clients' requests would go unanswered. :meth:`HttpServer.close
<runtime_core.rest.app.HttpServer.close>` first stops new handshakes with
:func:`refuse_new_connections`, lets the ones under way complete, waits for
:func:`accept_queue` to be empty and only then closes the port. Linux only, as the server is.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct

__all__ = ["BACKLOG", "accept_queue", "listening_sockets", "refuse_new_connections"]

log = logging.getLogger("runtime_core.rest")

BACKLOG = 128

#: ``struct tcp_info`` of a listening socket: ``tcpi_unacked`` (offset 24) is its accept queue's length.
_TCP_INFO_UNACKED = struct.Struct("24xI")

#: ``SO_ATTACH_FILTER`` (Linux; the socket module does not name it).
_SO_ATTACH_FILTER = 26

#: A classic BPF socket filter, run on the TCP header of each segment for the socket: drop a
#: segment whose flags have SYN without ACK (a new handshake), keep any other.
_DROP_SYN = (
    (0x30, 0, 0, 13),  # load the byte of the TCP flags
    (0x54, 0, 0, 0x12),  # keep SYN and ACK
    (0x15, 0, 1, 0x02),  # SYN alone: the next instruction, else the one after
    (0x06, 0, 0, 0),  # drop
    (0x06, 0, 0, 0xFFFFFFFF),  # keep the whole segment
)


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets on ``host:port``, one per address ``host`` resolves to (as
    asyncio's own server binds them). Port 0: the port the first one got, for all."""
    sockets: list[socket.socket] = []
    try:
        seen = set()
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def accept_queue(sock: socket.socket) -> int:
    """Connections the kernel completed for ``sock`` that the server has not accepted yet."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_UNACKED.size)
    return int(_TCP_INFO_UNACKED.unpack_from(info)[0])


def refuse_new_connections(sock: socket.socket) -> None:
    """Drop the SYNs that reach ``sock`` from now on: handshakes under way still complete
    (their last segment is an ACK), and connections already made are untouched (a SYN
    without ACK never comes on one). A client whose SYN is dropped sends it again a second
    later, and by then finds the port closed: refused, so it knows nothing was sent."""
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in _DROP_SYN))
    fprog = struct.pack("HL", len(_DROP_SYN), ctypes.addressof(program))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as exc:  # a kernel without socket filters: the port closes as it is
        log.debug("cannot filter new connections: %s", exc)
