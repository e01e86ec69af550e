"""Command line: ``runtime-core start MODEL_REPOSITORY`` and ``runtime-core runtimes``.

The composition root: it builds settings, the runtime registry, the scheduler,
the repository and the HTTP app, and runs them. No other module imports every
layer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import sys
import time
from pathlib import Path

from runtime_core import __version__
from runtime_core.dataplane import DataPlane, ServerState
from runtime_core.errors import RuntimeCoreError
from runtime_core.plugins import RuntimeRegistry, load_registry
from runtime_core.pools import ray as ray_pool
from runtime_core.processes import configure_logging
from runtime_core.repository import ModelRepository, ModelState
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import ServerSettings, load_server_settings
from runtime_core.stats import ServerStatistics

log = logging.getLogger("runtime_core")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runtime-core",
        description="Serve scikit-learn, XGBoost and other models over the V2 / Open Inference Protocol, "
        "each model in its own group of worker processes.",
    )
    parser.add_argument("--version", action="version", version=f"runtime-core {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    start = commands.add_parser(
        "start",
        help="serve every model found in a model repository",
        description="Find every model-settings.json under MODEL_REPOSITORY, load the models and serve them. "
        "Settings come from MODEL_REPOSITORY/settings.json, RUNTIME_CORE_* environment variables and "
        "these flags (flags win). SIGINT or SIGTERM stop the server after in-flight requests finish.",
    )
    start.add_argument("model_repository", metavar="MODEL_REPOSITORY", type=Path, help="folder holding model folders")
    start.add_argument("--host", help="address to bind (default 0.0.0.0)")
    start.add_argument("--http-port", type=int, help="HTTP port (default 8080; 0 picks a free port)")
    start.add_argument("--grpc-port", type=int, help="gRPC port (default 8081; 0 picks a free port)")
    start.add_argument(
        "--no-grpc",
        dest="grpc_enabled",
        action="store_false",
        default=None,
        help="serve REST only, no gRPC endpoint (setting grpc_enabled)",
    )
    start.add_argument(
        "--parallel-workers",
        type=int,
        help="default worker processes per model; 0 runs inference in the main process (default 4)",
    )
    start.add_argument(
        "--watch",
        action="store_true",
        default=None,
        help="reload a model when its files change, load new model folders, unload removed ones",
    )
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level (default info)")
    commands.add_parser(
        "runtimes",
        help="list installed runtime plugins",
        description="List the runtimes found through the 'runtime_core' entry-point group, "
        "with the distribution and version that provide each.",
    )
    return parser


def _print_runtimes(registry: RuntimeRegistry) -> None:
    rows = [("RUNTIME", "ALIASES", "DISTRIBUTION", "VERSION")]
    rows += [(e.name, ", ".join(e.aliases) or "-", e.distribution, e.version) for e in registry]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


#: Status lines go to stdout as text, or through the log as JSON (``log_format = "json"``).
_json_status = False


def _say(message: str, *, model: str | None = None, failed: bool = False) -> None:
    if not _json_status:
        print(message, flush=True)
        return
    text = message.strip().replace("  ", " ")
    log.log(logging.ERROR if failed else logging.INFO, "%s", text, extra={"model": model} if model else None)


#: Start-up prints a line per model for the first this many models, then one line per
#: ``PROGRESS_EVERY`` (every failure still has its line): 10,000 lines said nothing more.
PROGRESS_LINES = 100
PROGRESS_EVERY = 1000
_loaded = 0


def _progress(name: str, runtime: str, seconds: float, error: str | None) -> None:
    global _loaded
    if error is not None:
        _say(f"  FAILED  {name} ({runtime}): {error}", model=name, failed=True)
        return
    _loaded += 1
    if _loaded <= PROGRESS_LINES:
        _say(f"  loaded  {name} ({runtime}) in {seconds:.2f} s", model=name)
    elif _loaded % PROGRESS_EVERY == 0:
        _say(f"  ... {_loaded} models ready")


def _urls(host: str, http_port: int, grpc_port: int | None) -> str:
    """The addresses the server listens on, as the ready line says them; a wildcard address
    (every interface) is said as it is, with the loopback URL to try on this machine."""
    shown = f"[{host}]" if ":" in host else host
    urls = f"http://{shown}:{http_port}"
    if grpc_port is not None:
        urls += f" and grpc://{shown}:{grpc_port}"
    if host in ("0.0.0.0", "::"):
        local = "[::1]" if ":" in host else "127.0.0.1"
        urls += f", all interfaces; from this machine http://{local}:{http_port}"
    return urls


async def _run(settings: ServerSettings, scheduler: FairScheduler, repository: ModelRepository) -> int:
    # Imported here, after the runtimes' templates started importing their frameworks.
    from runtime_core.rest.app import create_app, serve, serve_metrics

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    state = ServerState()
    plane = DataPlane(settings, repository, scheduler, state)
    statistics = ServerStatistics(scheduler, repository)  # one observer, served by both front ends
    app = create_app(plane, statistics=statistics)
    try:
        http = await serve(app, settings.host, settings.http_port)
    except OSError as exc:
        print(f"runtime-core: cannot listen on {settings.host}:{settings.http_port}: {exc.strerror}", file=sys.stderr)
        return 1
    metrics_runner = None
    if settings.metrics_port is not None:
        try:
            metrics_runner, _ = await serve_metrics(app, settings.host, settings.metrics_port)
        except OSError as exc:
            where = f"{settings.host}:{settings.metrics_port}"
            print(f"runtime-core: cannot listen on {where} (metrics): {exc.strerror}", file=sys.stderr)
            await http.runner.cleanup()
            return 1
    grpc_server = None
    grpc_port: int | None = None
    if settings.grpc_enabled:
        from runtime_core.grpc.server import GrpcServer

        grpc_server = GrpcServer(plane, statistics)
        try:
            grpc_port = await grpc_server.start(settings.host, settings.grpc_port)
        except OSError:
            print(f"runtime-core: cannot listen on {settings.host}:{settings.grpc_port} (gRPC)", file=sys.stderr)
            await grpc_server.stop(0)
            await http.runner.cleanup()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            return 1
    if settings.load_models_at_startup:
        _say(f"runtime-core {__version__}: loading models from {settings.model_repository}")
        loading = loop.create_task(repository.load_all())
    else:
        _say(f"runtime-core {__version__}: models in {settings.model_repository} load through the repository API")
        loading = loop.create_task(asyncio.sleep(0))
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({loading, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        loading.result()
        records = repository.records()
        ready = sum(r.state is ModelState.READY for r in records)
        failed = len(records) - ready
        state.started = True
        # What start-up built (settings, records, pools, lanes: at 10,000 models, millions of
        # objects) lives as long as the server: kept out of the collector's full passes,
        # which at that size held the event loop 70-190 ms each (issue 23). A model unloaded
        # later frees what start-up made for it by reference counting; cycles among those
        # objects stay, at most once per model.
        gc.freeze()
        summary = f"{ready} model{'s' if ready != 1 else ''} ready" + (f", {failed} unavailable" if failed else "")
        if grpc_server is not None:
            await grpc_server.set_serving(True)
        _say(f"runtime-core ready at {_urls(*http.address, grpc_port)} ({summary})")
        watcher = loop.create_task(repository.watch(settings.watch_interval)) if settings.watch else None
        await stopper
        if watcher is not None:
            watcher.cancel()
    else:
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loading
    _say("runtime-core: stopping")
    state.draining = True
    if grpc_server is not None:
        await grpc_server.set_serving(False)
    scheduler.close()
    started = time.monotonic()
    if not await scheduler.drain(settings.shutdown_grace):
        log.warning("requests still running after shutdown_grace (%g s) are cancelled", settings.shutdown_grace)
    if grpc_server is not None:  # the drained calls' replies are sent; nothing new is accepted
        await grpc_server.stop(max(0.0, settings.shutdown_grace - (time.monotonic() - started)))
    await repository.aclose(max(0.0, settings.shutdown_grace - (time.monotonic() - started)))
    # Keep-alive clients get up to a second to send one more request, answered "shutting
    # down" with Connection: close, rather than meet a closed socket (issues 13 and 20).
    await http.close(min(1.0, max(0.0, settings.shutdown_grace - (time.monotonic() - started))))
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    _say("runtime-core: stopped")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _startup_warnings(settings: ServerSettings) -> None:
    """One line on stderr for each unsafe combination of settings."""
    if settings.repository_api and settings.repository_token is None and not _is_loopback(settings.host):
        print(
            f"runtime-core: warning: listening on {settings.host} with the repository API on and no "
            "repository_token: anyone who can reach the port can load and unload models",
            file=sys.stderr,
            flush=True,
        )


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.Runner()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "runtimes":
            _print_runtimes(load_registry())
            return 0
        if not sys.platform.startswith("linux"):
            # Workers rely on fork, /proc and Linux scheduling classes.
            print(f"runtime-core: the server runs on Linux only, not on {sys.platform}", file=sys.stderr)
            return 2
        # OpenMP threads (xgboost, some scikit-learn estimators) sleep when their work runs out
        # instead of spinning on a core (libgomp's default): spinning threads take the CPU the
        # main process and the other workers need, and on a busy machine they made an in-process
        # xgboost model cost several times its CPU per request (issue 9). Set before any framework loads;
        # templates and workers inherit it; a value set by the operator wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        repository: Path = args.model_repository
        if not repository.is_dir():
            print(f"runtime-core: model repository {repository} is not a folder", file=sys.stderr)
            return 2
        settings = load_server_settings(
            repository.resolve(),
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            grpc_enabled=args.grpc_enabled,
            parallel_workers=args.parallel_workers,
            log_level=args.log_level,
            watch=args.watch,
        )
        # Workers inherit the environment: they log in the same format.
        os.environ["RUNTIME_CORE_LOG_FORMAT"] = settings.log_format
        configure_logging("warning" if settings.log_level == "info" else settings.log_level, settings.log_format)
        logging.getLogger("runtime_core").setLevel(settings.log_level.upper())
        if settings.access_log:
            logging.getLogger("aiohttp.access").setLevel(logging.INFO)
        global _json_status
        _json_status = settings.log_format == "json"
        registry = load_registry()
        _startup_warnings(settings)
    except RuntimeCoreError as exc:
        print(f"runtime-core: {exc.message}", file=sys.stderr)
        return 2
    scheduler = FairScheduler(settings.max_inflight, cpu_priority=settings.cpu_priority)
    models = ModelRepository(settings.model_repository, settings, registry, scheduler, progress=_progress)
    models.prewarm()  # the slowest part of start-up (importing frameworks) begins now
    with _event_loop_runner() as runner:
        code = runner.run(_run(settings, scheduler, models))
    if ray_pool.disconnect():
        # Ray's threads can abort interpreter teardown: everything is closed and flushed, so
        # the process ends here, with the stop's own exit status.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
