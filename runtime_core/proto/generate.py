"""Regenerate the ``*_pb2.py`` and ``*_pb2.pyi`` modules from the ``.proto`` files here.

Usage: ``python -m runtime_core.proto.generate [OUTPUT_FOLDER]`` (default: this package's
folder). Needs grpcio-tools (the ``lint`` extra). Only message code is generated, no
service stubs: the service is registered by :mod:`runtime_core.grpc` with grpcio's
generic handlers, so these modules import ``google.protobuf`` alone.

One edit follows protoc: the modules add their descriptors to a pool of their own
instead of protobuf's default pool. tritonclient's and KServe's generated modules
register the same ``inference.*`` names in the default pool, and a second
registration there fails with "duplicate symbol"; with a pool of our own, a process
(a test, or a runtime that is itself a Triton client) can import theirs and ours.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
PROTOS = ("grpc_service.proto", "routing.proto")


def generate(output: Path) -> list[Path]:
    """Write the generated modules into ``output``; returns their paths."""
    from grpc_tools import protoc  # the lint/test extra, not a runtime dependency

    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name in PROTOS:
            # Compile from a copy so that the output does not depend on where the package lives.
            (Path(scratch) / name).write_bytes((HERE / name).read_bytes())
            code = protoc.main(
                ["protoc", f"--proto_path={scratch}", f"--python_out={output}", f"--pyi_out={output}", name]
            )
            if code != 0:
                raise RuntimeError(f"protoc failed on {name} with exit code {code}")
    stems = [name.removesuffix(".proto") + "_pb2" for name in PROTOS]
    for stem in stems:
        module = output / f"{stem}.py"
        code_text = module.read_text()
        if code_text.count(_DEFAULT_POOL) != 1:
            raise RuntimeError(f"{module.name}: protoc's output changed shape; cannot give it its own pool")
        module.write_text(code_text.replace(_DEFAULT_POOL, _OWN_POOL))
    return [output / f"{stem}{ext}" for stem in stems for ext in (".py", ".pyi")]


_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
# See the module docstring: a pool of our own, so other generated inference.* modules can coexist.
_OWN_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for path in generate(Path(args[0]) if args else HERE):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
