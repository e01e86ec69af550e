"""The V2 gRPC API on grpcio's asyncio server: the only package that imports grpcio."""
