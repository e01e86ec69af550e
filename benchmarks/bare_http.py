"""The REST floor: a bare aiohttp app on uvloop that reads each request's body and answers a
constant V2 JSON reply.

It does what any aiohttp front end must do per request (parse the request, read the body,
write a JSON answer) and nothing else: no routing beyond one route, no middleware, no
model. ``bench_request_path.py`` loads it beside runtime-core, with the reply bytes of
runtime-core's own answer, so both write the same number of bytes.

Usage: ``python benchmarks/bare_http.py PORT REPLY_FILE``; prints ``READY`` once listening
on 127.0.0.1:PORT, serves ``POST /v2/models/{model}/infer`` until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


async def _serve(port: int, reply: bytes) -> None:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("READY", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    import uvloop

    port, reply = int(sys.argv[1]), Path(sys.argv[2]).read_bytes()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(port, reply))


if __name__ == "__main__":
    main()
