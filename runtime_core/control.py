"""Typed control messages between the main process, the root template, hosts and workers.

They are rare (loads, forks, exits), so they cross as pickled dataclasses: on a
template's ``SOCK_SEQPACKET`` control socket (one message per packet, worker sockets
attached as ``SCM_RIGHTS`` file descriptors) or in ``CONTROL`` frames on a data socket.
Every message is one of the classes below; nothing is keyed by strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------- main -> root template


@dataclass(frozen=True, slots=True)
class ForkHost:
    """Fork a host for one runtime (its socket travels as a file descriptor)."""

    import_path: str
    log_level: str
    main_pid: int
    answer_hold: float


# ---------------------------------------------------------------- root template -> main


@dataclass(frozen=True, slots=True)
class RootReady:
    fork_safe: bool


@dataclass(frozen=True, slots=True)
class HostForked:
    pid: int


@dataclass(frozen=True, slots=True)
class HostExited:
    """A host the root forked has exited; ``status`` is its wait status (the root reaps it,
    so only the root can tell how it ended)."""

    pid: int
    status: int


# ---------------------------------------------------------------- main -> host


@dataclass(frozen=True, slots=True)
class LoadModel:
    """Load the model of ``spec`` (a :class:`~runtime_core.spec.WorkerSpec`) as ``slot``."""

    slot: int
    spec: Any


@dataclass(frozen=True, slots=True)
class UnloadModel:
    slot: int


@dataclass(frozen=True, slots=True)
class SpawnWorker:
    """Fork a dedicated worker of ``slot`` onto the attached socket."""

    slot: int
    index: int


@dataclass(frozen=True, slots=True)
class Stop:
    pass


# ---------------------------------------------------------------- host -> main


@dataclass(frozen=True, slots=True)
class HostReady:
    pid: int


@dataclass(frozen=True, slots=True)
class ModelLoaded:
    slot: int
    metadata: Any
    seconds: float
    memory: int
    """Bytes the host's resident set grew by while loading (an estimate of the model's cost)."""


@dataclass(frozen=True, slots=True)
class ModelLoadFailed:
    slot: int
    error: str


@dataclass(frozen=True, slots=True)
class WorkerSpawned:
    slot: int
    index: int
    pid: int


@dataclass(frozen=True, slots=True)
class WorkerExited:
    pid: int
    status: int


# ---------------------------------------------------------------- worker <-> main (data socket)


@dataclass(frozen=True, slots=True)
class WorkerReady:
    pid: int
    index: int
    seconds: float
    metadata: Any = None


@dataclass(frozen=True, slots=True)
class WorkerLoadFailed:
    error: str


@dataclass(frozen=True, slots=True)
class Unload:
    """Finish what is running, unload and exit."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Heartbeat to an idle worker: it answers :class:`Pong` at once unless it is stalled."""

    sent: float


@dataclass(frozen=True, slots=True)
class Pong:
    sent: float
