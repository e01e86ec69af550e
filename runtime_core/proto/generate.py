"""Regenerate the ``*_pb2.py`` and ``*_pb2.pyi`` modules from the ``.proto`` files here.

Usage: ``python -m runtime_core.proto.generate [OUTPUT_FOLDER]`` (default: this package's
folder). Needs grpcio-tools (the ``lint`` extra). Only message code is generated, no
service stubs: the service is registered by :mod:`runtime_core.grpc` with grpcio's
generic handlers, so these modules import ``google.protobuf`` alone.
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
    return [output / f"{stem}{ext}" for stem in stems for ext in (".py", ".pyi")]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for path in generate(Path(args[0]) if args else HERE):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
