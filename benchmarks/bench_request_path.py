"""The request path against its floors (issue 23): runtime-core's server CPU per request on the
light model, side by side with the least any server on the same stacks can spend.

Servers, all started once and loaded in turn:

* ``rest-floor``: ``bare_http.py``, a bare aiohttp app on uvloop that reads the body and
  answers runtime-core's own reply bytes for the light model (same size, same headers' weight);
* ``grpc-floor``: ``grpc_load.py bare-server``, a bare grpc.aio server on uvloop answering
  runtime-core's own ``ModelInferResponse`` bytes;
* runtime-core, serving the light model twice: ``light-inproc`` (``parallel_workers: 0``,
  inference in the main process) and ``light`` (the default pool settings).

Cases: ``rest-floor``, ``rest-inproc``, ``rest-pool`` (V2 JSON, wrk closed loop), and
``grpc-floor``, ``grpc-inproc``, ``grpc-pool`` (a ``ModelInferRequest`` with the row in
``raw_input_contents``, ``grpc_load.py`` closed loop), C requests in flight each. One round is
one window of every case, in an order that rotates from round to round (so no case always
follows the same neighbour); every window has a short warm-up of its own. The figure is
**server CPU per request** (user + system of the server's whole process tree over the window
/ requests answered); each case's ratio to its floor is taken per round (the two windows a
few seconds apart) and the median over the rounds is reported, beside the ratio of the
medians.

``--baseline REF`` also runs runtime-core from the git revision REF (its ``runtime_core``
package, extracted to a temporary folder and put first on ``PYTHONPATH``) with the same
models, and adds its cases (``rest-inproc@REF``...) to every round: the paired comparison a
change's saving is measured by. ``--rate R`` adds the REST cases, floor included, at one fixed rate (open loop,
``loadgen.OpenLoop``; cases ``...-rate``): CPU per request falls as the rate rises (fewer
wake-ups per request, more work per system call), and in the closed loop the floor runs at
several times runtime-core's rate, so this is the comparison that leaves the rate out.
``--cases`` keeps only some cases (floors are kept); ``--ref REF`` runs the
main runtime-core from a revision too (the work tree can then change while it runs).

Results: ``benchmarks/results/request-path-*.{json,md}``.

Examples::

    python benchmarks/bench_request_path.py                  # 5 rounds of 5 s windows, ~4 min
    python benchmarks/bench_request_path.py --quick          # 3 rounds of 2 s windows
    python benchmarks/bench_request_path.py --cases rest-inproc --baseline main -r 7
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import models
from bench_grpc import grpc_body
from common import HERE, environment, infer_url, median, progress, publish, table, verdict, windowed
from grpc_load import METHOD, GrpcClosedLoop
from loadgen import ClosedLoop, OpenLoop
from servers import RuntimeCoreServer, free_port

#: What each runtime-core case loads: protocol and model name.
RC_CASES = {
    "rest-inproc": ("rest", "light-inproc"),
    "rest-pool": ("rest", "light"),
    "grpc-inproc": ("grpc", "light-inproc"),
    "grpc-pool": ("grpc", "light"),
}
FLOORS = {"rest": "rest-floor", "grpc": "grpc-floor"}
#: Ends the name of a REST case loaded at ``--rate`` (open loop) rather than closed loop.
RATE_SUFFIX = "-rate"
#: The ratio to the floor each runtime-core case is held to (issue 23).
TARGET = 1.5


class Bare:
    """A floor server: ``cmd`` prints READY once listening."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"READY":
            self.stop()
            raise RuntimeError(f"{cmd[1]} did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def extract(ref: str, into: Path) -> Path:
    """The ``runtime_core`` package of git revision ``ref``, extracted under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", ref, "runtime_core"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def rest_reply(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


def grpc_reply(target: str, body: bytes) -> bytes:
    with grpc.insecure_channel(target) as channel:
        return bytes(channel.unary_unary(METHOD)(body, timeout=30))


def window(load: Callable[[float], list[Any]], pid: int, args: argparse.Namespace) -> dict[str, Any]:
    (result,), cpu = windowed(load, pid, args.warmup, args.duration)
    done = result.requests or float("nan")
    return {
        **result.as_dict(),
        "cpu_ms_per_req": 1000 * cpu.seconds / done,
        "cpu_main_ms_per_req": 1000 * cpu.root_seconds / done,
        "machine_idle_cores": cpu.machine_idle / cpu.wall if cpu.wall else float("nan"),
    }


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


Load = Callable[[float], list[Any]]
#: Name -> (the load of one window, given its seconds; the pid of the server's process tree).
Cases = dict[str, tuple[Load, int]]
REST_BODY = models.request_body("light")
#: The gRPC request for each model name (the same row).
GRPC_BODIES = {m: grpc_body(m, models.request_array("light")) for m in ("light", "light-inproc")}


def start_floors(server: Any, folder: Path, stack: contextlib.ExitStack) -> dict[str, tuple[str, int]]:
    """Start the two floors answering ``server``'s own replies; ``{"rest": (url, pid), "grpc":
    (target, pid)}``, stopped by ``stack``."""
    reply = rest_reply(infer_url(server.url, "light"), REST_BODY)
    (folder / "reply.json").write_bytes(reply)
    (folder / "reply.pb").write_bytes(grpc_reply(server.grpc_target, GRPC_BODIES["light"]))
    http_port, grpc_port = free_port(), free_port()
    bare_http = Bare([sys.executable, str(HERE / "bare_http.py"), str(http_port), str(folder / "reply.json")])
    stack.callback(bare_http.stop)
    bare_grpc = Bare(
        [sys.executable, str(HERE / "grpc_load.py"), "bare-server", str(grpc_port), str(folder / "reply.pb")]
    )
    stack.callback(bare_grpc.stop)
    url = f"http://127.0.0.1:{http_port}/v2/models/light/infer"
    if rest_reply(url, REST_BODY) != reply:
        raise RuntimeError("the bare aiohttp server does not answer runtime-core's reply")
    return {"rest": (url, bare_http.pid), "grpc": (f"127.0.0.1:{grpc_port}", bare_grpc.pid)}


def make_cases(args: argparse.Namespace, servers: dict[str, Any], floors: dict[str, tuple[str, int]]) -> Cases:
    """Every case of a round: the floors, then each runtime-core (``servers`` by revision, ""
    for the main one) per :data:`RC_CASES`, then with ``--rate`` the REST ones at that rate."""

    def closed(url: str) -> Load:
        return lambda d: [ClosedLoop(url, REST_BODY, concurrency=args.concurrency, duration=d)]

    def grpc_calls(target: str, body: bytes) -> Load:
        return lambda d: [
            GrpcClosedLoop(target, body, concurrency=args.concurrency, duration=d, processes=args.clients)
        ]

    (floor_url, http_pid), (floor_target, grpc_pid) = floors["rest"], floors["grpc"]
    cases: Cases = {"rest-floor": (closed(floor_url), http_pid)}
    if not args.no_grpc:
        cases["grpc-floor"] = (grpc_calls(floor_target, GRPC_BODIES["light"]), grpc_pid)
    for ref, server in servers.items():
        for case, (protocol, model) in RC_CASES.items():
            if case not in args.cases or (protocol == "grpc" and args.no_grpc):
                continue
            load = (
                closed(infer_url(server.url, model))
                if protocol == "rest"
                else grpc_calls(server.grpc_target, GRPC_BODIES[model])
            )
            cases[case + (f"@{ref}" if ref else "")] = (load, server.pid)
    if args.rate:  # the REST cases again at one fixed rate, the floor's too
        for name, (_, pid) in list(cases.items()):
            base, _, ref = name.partition("@")
            if base.startswith("rest"):
                url = floor_url if base == "rest-floor" else infer_url(servers[ref].url, RC_CASES[base][1])
                load = (lambda u: lambda d: [OpenLoop(u, REST_BODY, rate=args.rate, duration=d)])(url)
                cases[base + RATE_SUFFIX + (f"@{ref}" if ref else "")] = (load, pid)
    return cases


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"load_start": uptime(), "windows": []}
    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        repo = folder / "repo"
        models.write_model(repo, "light")  # the default pool settings
        models.write_model(repo, "light", model_name="light-inproc", workers=0)
        source = extract(args.ref, folder / "current") if args.ref else None
        servers = {"": stack.enter_context(RuntimeCoreServer(repo, python_path=source))}
        progress(f"runtime-core ready in {servers[''].ready_seconds:.2f} s")
        if args.baseline:
            source = extract(args.baseline, folder / "baseline")
            servers[args.baseline] = stack.enter_context(RuntimeCoreServer(repo, python_path=source))
            progress(f"runtime-core {args.baseline} ready in {servers[args.baseline].ready_seconds:.2f} s")
        cases = make_cases(args, servers, start_floors(servers[""], folder, stack))
        out["reply_bytes"] = {
            "rest": (folder / "reply.json").stat().st_size,
            "grpc": (folder / "reply.pb").stat().st_size,
        }
        names = list(cases)
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                load, pid = cases[name]
                row = {"case": name, "round": round_, **window(load, pid, args)}
                out["windows"].append(row)
                progress(
                    f"round {round_} {name}: {row['rps']:.0f} req/s, "
                    f"CPU {row['cpu_ms_per_req']:.4f} ms/req (main {row['cpu_main_ms_per_req']:.4f}), "
                    f"errors {row['errors']}"
                )
    out["load_end"] = uptime()
    return out


def _paired(rows: list[dict[str, Any]], case: str, against: str, key: str = "cpu_ms_per_req") -> float:
    """Median over rounds of ``case``'s figure divided by ``against``'s in the same round."""
    by_round = {(r["case"], r["round"]): r[key] for r in rows}
    ratios = [
        by_round[(case, n)] / by_round[(against, n)]
        for (c, n) in by_round
        if c == case and (against, n) in by_round and by_round[(against, n)]
    ]
    return median(ratios)


def summarize(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = data["windows"]
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        floor = FLOORS[case.split("-", 1)[0]] + (RATE_SUFFIX if RATE_SUFFIX in case else "")
        base = case.split("@", 1)[0]
        entry = {
            "case": case,
            "windows": len(mine),
            "rps": median([r["rps"] for r in mine]),
            "p50_ms": median([r["p50_ms"] for r in mine]),
            "cpu_ms_per_req": median([r["cpu_ms_per_req"] for r in mine]),
            "cpu_main_ms_per_req": median([r["cpu_main_ms_per_req"] for r in mine]),
            "errors": sum(r["errors"] for r in mine),
            "floor_ratio": _paired(rows, case, floor) if case != floor else 1.0,
        }
        if "@" not in case and any(r["case"].startswith(base + "@") for r in rows):
            other = next(r["case"] for r in rows if r["case"].startswith(base + "@"))
            entry["vs_baseline"] = _paired(rows, case, other)
            entry["baseline_saving_ms"] = median(
                [
                    b["cpu_ms_per_req"] - a["cpu_ms_per_req"]
                    for a in mine
                    for b in rows
                    if b["case"] == other and b["round"] == a["round"]
                ]
            )
        out.append(entry)
    return out


def render(data: dict[str, Any]) -> str:
    summary = data["summary"]
    a = data["args"]
    lines = [
        f"### Server CPU per request against the floors: light model, C = {a['concurrency']}, "
        f"{a['rounds']} rounds of {a['duration']:g} s windows",
        f"Load average {data['load_start']} at the start, {data['load_end']} at the end.",
        table(
            ["case", "windows", "req/s", "p50 ms", "CPU ms/req", "main ms/req", "x floor (paired)", "errors"],
            [
                [
                    s["case"],
                    s["windows"],
                    s["rps"],
                    s["p50_ms"],
                    f"{s['cpu_ms_per_req']:.4f}",
                    f"{s['cpu_main_ms_per_req']:.4f}",
                    f"{s['floor_ratio']:.2f}",
                    s["errors"],
                ]
                for s in summary
            ],
        ),
    ]
    paired = [s for s in summary if "vs_baseline" in s]
    if paired:
        lines += [
            f"### Against {a['baseline']} (paired by round)",
            table(
                ["case", "x baseline", "saved ms/req (median of rounds)"],
                [[s["case"], f"{s['vs_baseline']:.3f}", f"{s['baseline_saving_ms']:.4f}"] for s in paired],
            ),
        ]
    targets = [
        [
            f"{s['case']}: server CPU per request <= {TARGET}x its floor",
            f"{s['floor_ratio']:.2f}x",
            verdict(s["floor_ratio"] <= TARGET),
        ]
        for s in summary
        if s["case"] in RC_CASES
    ]
    lines += ["### Targets", table(["target", "measured (median of paired rounds)", "verdict"], targets)]
    return "\n\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-w", "--warmup", type=float, default=1.0, help="warm-up before every window")
    parser.add_argument("-r", "--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=1, help="gRPC generator processes sharing C")
    parser.add_argument("--cases", default=",".join(RC_CASES), help="runtime-core cases to run")
    parser.add_argument("--baseline", help="also run runtime-core from this git revision")
    parser.add_argument("--ref", help="run runtime-core from this git revision, not the work tree")
    parser.add_argument("--no-grpc", action="store_true")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="also load the REST cases at this many req/s, open loop (0: not)"
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s windows")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2.0, 3
    args.cases = set(args.cases.split(","))
    data = run(args)
    data["args"] = {**vars(args), "cases": sorted(args.cases)}
    data["environment"] = environment()
    data["summary"] = summarize(data)
    publish("request-path", data, render(data))


if __name__ == "__main__":
    main()
