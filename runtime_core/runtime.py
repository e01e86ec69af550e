"""The :class:`Runtime` base class that every runtime plugin subclasses.

A runtime wraps one framework (scikit-learn, XGBoost, your own). The server
creates one instance per worker process of a model (or one in the main process
when ``parallel_workers`` is 0) and calls, in that process:

1. ``await load()`` once, before any request;
2. ``await predict(request)`` for each request (never concurrently within one
   instance unless the runtime awaits inside ``predict``);
3. ``await unload()`` once, when the model is unloaded or the server stops.

``load`` runs once in every worker of the model's group. A runtime whose loaded
state is safe to share across ``fork`` (plain Python and numpy objects, no
threads, sockets or GPU contexts) sets ``share_loaded_model = True``: then
``load`` runs once in a template process and the workers are forked from it
after loading, sharing the model's memory pages copy-on-write.
"""

from __future__ import annotations

import abc
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from runtime_core.envelope import Envelope, Wire
from runtime_core.errors import InvalidRequest
from runtime_core.sanitize import quoted
from runtime_core.types import InferenceRequest, InferenceResponse, TensorSpec

if TYPE_CHECKING:
    from runtime_core.settings import ModelSettings


@dataclass(frozen=True, slots=True)
class RuntimeContext:
    """Where and how a runtime instance runs."""

    model_name: str
    """The model's name in URLs."""

    version: str | None
    """``parameters.version`` from the model settings."""

    folder: Path
    """The folder holding the model's files: the one holding ``model-settings.json``, or the
    version's numeric folder in Triton's layout (``<model>/<version>/``)."""

    uri: Path | None
    """The model artifact: ``parameters.uri`` resolved and confined to the repository, or the
    first of the runtime's ``artifact_names`` found in the folder, or ``None``."""

    threads: int
    """Threads this instance may use for compute (BLAS, OpenMP, the framework's own pool).
    The server already capped BLAS/OpenMP with threadpoolctl; pass it to frameworks that
    take a thread count of their own."""

    worker_index: int | None
    """Index of the worker within the model's group; ``None`` in the main process."""


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What ``GET /v2/models/{name}`` shows for inputs and outputs."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    platform: str = ""
    endpoints: tuple[tuple[str, str], ...] = ()
    """The model's own REST endpoints, as ``(method, path)``: the server routes them to
    :meth:`Runtime.infer_raw` as :attr:`~runtime_core.envelope.Wire.CUSTOM` calls (runtimes
    with ``raw_requests`` only)."""


@dataclass(frozen=True, slots=True)
class RawReply:
    """What :meth:`Runtime.infer_raw` answers for one request: the response bytes as sent."""

    body: bytes
    wire: Wire = Wire.JSON
    header_length: int = 0
    """For :attr:`Wire.BINARY`: length of the JSON header of ``body``."""


def with_shared_strings(metadata: ModelMetadata) -> ModelMetadata:
    """``metadata``, as it came from the process that loaded the model, with its tensors' names
    and datatypes interned: every model's copy of ``FP64`` or ``predict`` is then one string,
    not one per model (0.3 KB a model at ten thousand, issue 23). Changes ``metadata``'s own
    tensor specs, which nothing else holds."""
    for spec in (*metadata.inputs, *metadata.outputs):
        spec.name = sys.intern(spec.name)
        spec.datatype = sys.intern(spec.datatype)
    return metadata


def declared_metadata(settings: ModelSettings) -> ModelMetadata:
    """The inputs, outputs and platform that ``model-settings.json`` declares."""
    return ModelMetadata(
        inputs=[TensorSpec(t.name, t.datatype, list(t.shape)) for t in settings.inputs],
        outputs=[TensorSpec(t.name, t.datatype, list(t.shape)) for t in settings.outputs],
        platform=settings.platform,
    )


class Runtime(abc.ABC):
    """Base class of runtime plugins. Subclass it and return the class from the
    ``rc_register_runtimes`` hook of your plugin module."""

    name: ClassVar[str]
    """Name users write in ``model-settings.json`` as ``"runtime"``."""

    aliases: ClassVar[tuple[str, ...]] = ()
    """Other names that select this runtime, e.g. MLServer's ``"implementation"`` paths."""

    artifact_names: ClassVar[tuple[str, ...]] = ()
    """File names looked for in the model folder when ``parameters.uri`` is not set."""

    share_loaded_model: ClassVar[bool] = False
    """True if a loaded instance may be forked into workers (see the module docstring)."""

    supports_batching: ClassVar[bool] = False
    """True if ``predict`` is row-wise: running requests concatenated along the first axis
    gives each request's outputs as the matching rows. Then requests waiting in a worker
    are merged into one call (and ``max_batch_size``/``max_batch_time`` batch adaptively)."""

    mlserver_envelope: bool = False
    """True: answers are framed as MLServer frames them (issue 21): a request without an
    ``id`` is answered with a fresh random UUID as its ``id``, and a REST answer always has a
    ``parameters`` object, ``{}`` when empty. Read once, when the server builds its handler
    for the instance, so set it in ``__init__`` at the latest."""

    predict_never_waits: ClassVar[bool] = False
    """True if ``predict`` (and ``infer_raw``) only compute: they await nothing that
    suspends (no I/O, no sleep) and need no current task (``asyncio.timeout``, anyio).
    A host then runs such a runtime's requests without a turn of its event loop, a few
    microseconds less per wake-up; should one wait after all, the loop takes over from
    there. Leave it False when unsure: nothing else changes."""

    raw_requests: ClassVar[bool] = False
    """True if the runtime reads the request bytes itself: the worker then calls
    :meth:`infer_raw` with the requests as they came (and their headers) instead of
    decoding them, calling :meth:`predict` and encoding the reply. For runtimes that wrap
    another server's types (MLServer's ``MLModel``), whose replies must pass unchanged."""

    @classmethod  # noqa: B027 (optional hook, empty by default)
    def preload(cls) -> None:
        """Import heavy modules (the framework) ahead of any model. Called once per runtime in
        the process that all of this runtime's model templates are forked from, so that they
        start without importing again and share those pages. Must not start threads."""

    def __init__(self, settings: ModelSettings, context: RuntimeContext) -> None:
        self.settings = settings
        self.context = context

    @abc.abstractmethod
    async def load(self) -> None:
        """Load the model. Runs once per worker (or once in the template, see above).
        Raise any exception to fail the load; its message is shown to the operator."""

    @abc.abstractmethod
    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request. Raise :class:`runtime_core.InvalidRequest` for input the model
        cannot take (answered 400); any other exception is answered 500."""

    async def infer_raw(self, envelopes: list[Envelope]) -> list[RawReply | Exception]:
        """Run requests that were not decoded (``raw_requests`` runtimes): one reply or one
        exception per envelope, in order. An exception is answered as :meth:`predict`'s
        are. The envelopes are the ones that arrived together (a batch under
        ``max_batch_size``); their deadlines were checked."""
        raise NotImplementedError(f"{type(self).__qualname__} sets raw_requests but has no infer_raw")

    async def unload(self) -> None:  # noqa: B027 (optional hook, empty by default)
        """Release resources. Runs once per instance when the model is unloaded."""

    def metadata(self) -> ModelMetadata:
        """Inputs and outputs shown in model metadata. Defaults to the declared ones."""
        return declared_metadata(self.settings)

    # Helpers for subclasses -------------------------------------------------

    def require_uri(self) -> Path:
        """The artifact path, or a clear load error naming the model and folder."""
        if self.context.uri is None or not self.context.uri.exists():
            expected = ", ".join(self.artifact_names) or "parameters.uri"
            raise FileNotFoundError(
                f"model {self.context.model_name!r}: no model file in {self.context.folder} (looked for {expected});"
                " save the trained model there under one of these names, or set parameters.uri"
                " (the bundled examples: run examples/train_models.py)"
            )
        return self.context.uri


def check_requested_outputs(request: InferenceRequest, available: list[str] | tuple[str, ...]) -> list[str]:
    """The names of outputs to produce: the requested ones, checked against ``available``
    (an unknown one is a 400), or ``available[:1]`` when none was requested."""
    if not request.outputs:
        return list(available[:1])
    names = request.output_names
    for name in names:
        if name not in available:
            raise InvalidRequest(f"unknown output {quoted(name)}; this model has {', '.join(available)}")
    return names
