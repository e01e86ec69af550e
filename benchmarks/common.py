"""Shared pieces of the bench_* scripts: windows of load with CPU accounting, tables, output files."""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadgen import ClosedLoop, Load, LoadResult, run_loads
from measure import CpuWindow

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
_T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {message}", flush=True)


def infer_url(base: str, model: str) -> str:
    return f"{base}/v2/models/{model}/infer"


def windowed(make_loads: Any, root_pid: int, warmup: float, duration: float) -> tuple[list[LoadResult], CpuWindow]:
    """Run ``make_loads(seconds)`` once for ``warmup`` seconds (discarded), then for ``duration``
    seconds inside a CPU window over the process tree of ``root_pid``."""
    if warmup > 0:
        run_loads(make_loads(warmup))
    loads: list[Load] = make_loads(duration)
    for load in loads:
        load.prepare()
    try:
        with CpuWindow(root_pid) as cpu:
            for load in loads:
                load.go()
            results = [load.wait() for load in loads]
    finally:
        for load in loads:
            load.kill()
    return results, cpu


def closed_window(
    url: str,
    body: bytes,
    root_pid: int,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One closed-loop measurement with server CPU per request."""
    (result,), cpu = windowed(
        lambda d: [ClosedLoop(url, body, concurrency=concurrency, duration=d, headers=headers)],
        root_pid,
        warmup,
        duration,
    )
    row = result.as_dict()
    row["cpu_s"] = cpu.seconds
    row["cpu_cores"] = cpu.seconds / cpu.wall if cpu.wall else math.nan
    row["cpu_ms_per_req"] = 1000 * cpu.seconds / result.requests if result.requests else math.nan
    row["cpu_main_ms_per_req"] = 1000 * cpu.root_seconds / result.requests if result.requests else math.nan
    row["machine_idle_cores"] = cpu.machine_idle / cpu.wall if cpu.wall else math.nan
    return row


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}" if abs(value) >= 1 else f"{value:.{max(digits, 2)}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import os

    import sklearn
    import xgboost

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "sklearn": sklearn.__version__,
        "xgboost": xgboost.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_results(stem: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = RESULTS / f"{stem}-{stamp}.json"
    md_path = RESULTS / f"{stem}-{stamp}.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md_path.write_text(markdown + "\n")
    return json_path, md_path


def publish(stem: str, data: dict[str, Any], markdown: str) -> None:
    """Write the results files, print the tables and say where they went."""
    json_path, md_path = write_results(stem, data, markdown)
    print()
    print(markdown)
    print()
    progress(f"wrote {json_path} and {md_path}")
    from plots import plot_after_run  # the plots go beside the results

    plot_after_run(json_path)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")
