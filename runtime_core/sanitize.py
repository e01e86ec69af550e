"""One sanitiser for every message a client sees: :func:`client_message`.

The server, its workers and runtime plugins all pass error text through it
before it leaves the process. It turns a message into one bounded line with no
file paths, no secrets (``token=...``, ``Authorization: Bearer ...``, passwords
in URLs), no log prefixes or stack traces of native libraries, and no internal
Python type names. It is exported as ``runtime_core.client_message`` for
plugins. :func:`quoted` is how an error quotes a name the client sent (a model,
version, input or output name): bounded, so that a name of a megabyte cannot
make the error itself too large to send. Imports nothing from the package.
"""

from __future__ import annotations

import re
import uuid

__all__ = ["client_message", "error_id", "quoted"]

#: Longest message a client gets, in characters.
MAX_LENGTH = 500
#: Longest client-supplied name an error quotes, in characters (ellipsis included).
NAME_LENGTH = 120

# "[12:34:56] /src/learner.cc:123: " -- the prefix of native (xgboost, dmlc) log and error lines.
_LOG_PREFIX = re.compile(r"\[\d{1,2}:\d{2}:\d{2}\]\s*(?:\S+?\.(?:cc|cu|cuh|h|hpp|cpp|c):\d+:\s*)?")
# user:password@ in a URL.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@")
# Bearer / Basic credentials.
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*")
# key=value or key: value where the key names a secret (token, api_key, password, ...).
_SECRET_PAIR = re.compile(
    r"(?i)\b([\w\-]*(?:token|secret|passw(?:or)?d|pwd|api[_\-]?key|access[_\-]?key|private[_\-]?key|credentials?|"
    r"auth(?:orization)?|session[_\-]?id|cookie)[\w\-]*)(['\"]?\s*[=:]\s*['\"]?)([^\s'\",;&]+)"
)
# An absolute POSIX or Windows path with at least one directory part, not part of a URL.
_PATH = re.compile(r"(?<![\w:/<])(?:[A-Za-z]:)?[\\/](?:[\w.\-]+[\\/])+[\w.\-]*")
# Python's spelling of types: "<class 'pkg.Name'>", "'NoneType' object", module-qualified names.
_CLASS_REPR = re.compile(r"<class '[\w.]+'>")
_OBJECT_OF_TYPE = re.compile(r"'(\w+)' object")
_INTERNAL_NAMES = re.compile(
    r"\b(?:NoneType|InferenceResponse|InferenceRequest|RequestedOutput|TensorSpec|RuntimeContext|ModelMetadata|"
    r"Envelope|Outcome|ModelHandler|BatchLoop|runtime_core(?:\.\w+)+)\b"
)


def quoted(name: object, limit: int = NAME_LENGTH) -> str:
    """``name`` quoted for an error message, as ``repr`` quotes it, cut to at most ``limit``
    characters with an ellipsis: a client may send any name, and a gRPC error's message
    travels in metadata whose size is limited (a 1 MiB echo would fail the call with
    RESOURCE_EXHAUSTED instead of the error it should get)."""
    text = name if isinstance(name, str) else str(name)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def error_id() -> str:
    """A short random id that ties a client's error message to the server's log line."""
    return uuid.uuid4().hex[:12]


def client_message(text: str | BaseException, limit: int = MAX_LENGTH) -> str:
    """``text`` (or an exception's message) fit for a client: one line of at most ``limit``
    characters, without stack traces, native log prefixes, secrets, server paths or internal
    type names. Returns ``""`` for an empty message; callers say what failed around it."""
    lines = []
    for line in str(text).splitlines():
        stripped = line.strip()
        if stripped.startswith(("Stack trace", "[bt]", "Traceback (most recent call last)")):
            break
        if stripped:
            lines.append(stripped)
    message = _LOG_PREFIX.sub("", " ".join(" ".join(lines).split()))
    message = _URL_CREDENTIALS.sub(r"\1<redacted>@", message)
    message = _AUTH_SCHEME.sub(r"\1 <redacted>", message)
    message = _SECRET_PAIR.sub(r"\1\2<redacted>", message)
    message = _PATH.sub("<path>", message)
    message = _CLASS_REPR.sub("a value", message)
    message = _OBJECT_OF_TYPE.sub(lambda m: "None" if m.group(1) == "NoneType" else "an object", message)
    message = _INTERNAL_NAMES.sub("a value", message).strip()
    if len(message) > limit:
        message = message[: limit - 3].rstrip() + "..."
    return message
