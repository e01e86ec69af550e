"""The TCP listener a :class:`~runtime_core.pools.ray.RayPool`'s actors connect back to.

One listener per pool, on the driver node's IP (as Ray gives it) and an ephemeral port::

    actor --connect--> accept --> greet: preamble + token? --yes--> the waiting actor's future
                                                        \\--no---> closed, and a warning

An actor, once placed, connects and first sends a preamble with a random token of its own
(made by the pool, handed to the actor in its constructor). A connection whose first bytes
are not a waiting actor's token within ``_GREETING_WAIT`` is closed, so no stranger can
attach (the frames that follow include pickled control messages). Tokens are compared in
constant time.

Bounds: at most ``_GREETERS`` connections wait for their preamble at a time; more are closed
at once. Nothing else queues here.

Cancel: the accept loop and the greetings run as the pool's background tasks and end with
them; :meth:`ActorListener.close` closes the listening socket. An actor that stops waiting
(its start failed or timed out) is forgotten: a connection with its token is then closed
like a stranger's.

Timeout: ``_GREETING_WAIT`` per connection, for its preamble; the wait for an actor to be
placed and to connect at all is the pool's (``startup_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from runtime_core.pools.ray_actor import _PREAMBLE, _TOKEN_BYTES

__all__ = ["ActorListener"]

# The pool's logger: these lines are the Ray pool's, wherever the code that writes them lives.
log = logging.getLogger("runtime_core.pools.ray")

#: Seconds a new connection has to send its preamble and token before it is closed.
_GREETING_WAIT = 10.0

#: Connections that may wait for their preamble at the same time; more are closed at once.
_GREETERS = 64


class ActorListener:
    """Hands each connection to the actor whose token it sends first (see the module
    docstring). ``name`` is the model's, for log lines; ``background`` runs the accept loop
    and the greetings as the pool's background tasks."""

    def __init__(self, name: str, background: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.name = name
        self.address: tuple[str, int] = ("", 0)
        self._background = background
        self._sock: socket.socket | None = None
        self._greeters = 0
        self._waiting: dict[bytes, asyncio.Future[socket.socket]] = {}  # token -> its actor's socket

    def open(self, host: str) -> None:
        """Listen on ``host`` (this node's IP as Ray knows it: where other nodes reach it)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, 0))
        listener.listen(128)
        listener.setblocking(False)
        self._sock = listener
        self.address = (host, listener.getsockname()[1])
        log.info("model %r: listening for its Ray actors on %s port %d", self.name, *self.address)
        self._background(self._accept(listener))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    @contextlib.contextmanager
    def expecting(self, token: bytes) -> Iterator[asyncio.Future[socket.socket]]:
        """While open, a connection that sends ``token`` resolves the future with its socket."""
        waiter: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()
        self._waiting[token] = waiter
        try:
            yield waiter
        finally:
            self._waiting.pop(token, None)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _peer = await loop.sock_accept(listener)
            except OSError:
                return  # the listener was closed
            if self._greeters >= _GREETERS:
                sock.close()
                continue
            self._greeters += 1
            self._background(self._greet(sock))

    async def _greet(self, sock: socket.socket) -> None:
        """Hand ``sock`` to the actor whose token it sends first; close it otherwise."""
        try:
            peer = sock.getpeername()
            wanted = len(_PREAMBLE) + _TOKEN_BYTES
            try:
                first = await asyncio.wait_for(self._read(sock, wanted), _GREETING_WAIT)
            except (TimeoutError, OSError):
                first = b""
            preamble, token = first[: len(_PREAMBLE)], first[len(_PREAMBLE) :]
            waiter = None
            if len(first) == wanted and preamble == _PREAMBLE:
                waiter = next((w for t, w in self._waiting.items() if hmac.compare_digest(t, token)), None)
            if waiter is None or waiter.done():
                log.warning("model %r: closed a connection from %s that sent no actor's token", self.name, peer[0])
                sock.close()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            waiter.set_result(sock)
        finally:
            self._greeters -= 1

    @staticmethod
    async def _read(sock: socket.socket, size: int) -> bytes:
        """Exactly ``size`` bytes (never more: what follows is the actor's frames), or fewer
        if the peer closed."""
        loop = asyncio.get_running_loop()
        data = b""
        while len(data) < size:
            chunk = await loop.sock_recv(sock, size - len(data))
            if not chunk:
                break
            data += chunk
        return data
