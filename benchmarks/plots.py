"""Plots of benchmark results (matplotlib), drawn from the JSON files the benchmarks write.

Every ``bench_*.py`` run draws its plots beside its results (``benchmarks/results/
parallel-<stamp>.json`` -> ``parallel-<stamp>-throughput.png`` ...). This script redraws
them from stored results without running anything:

    .venv/bin/python benchmarks/plots.py                      # the plots of docs/benchmarks.md
    .venv/bin/python benchmarks/plots.py benchmarks/results/parallel-20261130-120000.json

With no argument it reads the results published in ``benchmarks/published/`` and writes
``docs/img/bench-<kind>-<plot>.png``. The kind of a results file is the start of its name
(``parallel``, ``fairness``, ``isolation``, ``batching``, ``binary``, ``density``, ``grpc``, ``ray``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PUBLISHED = HERE / "published"
DOCS_IMG = HERE.parent / "docs" / "img"

RC, MLS = "#2563eb", "#9ca3af"
COLORS = {"runtime-core": RC, "mlserver": MLS}
LABELS = {"runtime-core": "runtime-core", "mlserver": "MLServer 1.7.1"}
MODELS = ("light", "heavy", "xgb")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig: Any, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def _subtitle(data: dict[str, Any]) -> str:
    env = data.get("env") or data.get("environment") or {}
    return f"{env.get('cpus', '?')} CPUs, {str(env.get('time', ''))[:10]}"


# --------------------------------------------------------------------------- bench_parallel


def plot_parallel(data: dict[str, Any], prefix: Path) -> list[Path]:
    plt = _pyplot()
    rows = data.get("servers", [])
    names = [m for m in MODELS if any(r["model"] == m for r in rows)]
    out: list[Path] = []
    if not names:
        return out
    bound = {r["model"]: r["rps_1core"] for r in data.get("in_process", []) if r.get("threads", 1) == 1}

    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for server in ("runtime-core", "mlserver"):
            points = sorted((r["workers"], r["rps"]) for r in rows if r["model"] == name and r["server"] == server)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, "o-", color=COLORS[server], label=LABELS[server])
        if name in bound:
            ax.axhline(bound[name], color="#111827", linestyle=":", linewidth=1, label="plain predict loop, 1 core")
        ax.set_title(f"{name}")
        ax.set_xlabel("workers (parallel_workers)")
        ax.set_xticks(sorted({r["workers"] for r in rows if r["model"] == name}))
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("requests/s (closed loop, C = 16)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Throughput against worker count ({_subtitle(data)})", fontsize=10)
    out.append(_save(fig, prefix.with_name(prefix.name + "-throughput.png")))

    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        workers = sorted({r["workers"] for r in rows if r["model"] == name})
        for k, server in enumerate(("runtime-core", "mlserver")):
            by = {r["workers"]: r for r in rows if r["model"] == name and r["server"] == server}
            xs = [i + (k - 0.5) * 0.38 for i, w in enumerate(workers) if w in by]
            total = [by[w]["cpu_ms_per_req"] for w in workers if w in by]
            main = [by[w].get("cpu_main_ms_per_req", 0.0) for w in workers if w in by]
            ax.bar(xs, total, width=0.38, color=COLORS[server])
            ax.bar(xs, main, width=0.38, color="none", edgecolor="#111827", hatch="///", linewidth=0)
        ax.set_xticks(range(len(workers)), [str(w) for w in workers])
        ax.set_title(name)
        ax.set_xlabel("workers")
    axes[0][0].set_ylabel("server CPU ms per request")
    from matplotlib.patches import Patch

    handles = [Patch(color=COLORS[s], label=LABELS[s]) for s in ("runtime-core", "mlserver")]
    handles.append(Patch(facecolor="white", edgecolor="#111827", hatch="///", label="of which main process"))
    axes[0][0].legend(handles=handles, fontsize=8)
    fig.suptitle(f"CPU per request, whole process tree ({_subtitle(data)})", fontsize=10)
    out.append(_save(fig, prefix.with_name(prefix.name + "-cpu.png")))

    memory = data.get("memory") or []
    if memory:
        fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.8))
        labels = [LABELS.get(r["server"], r["server"]) for r in memory]
        colors = [COLORS.get(r["server"], RC) for r in memory]
        for ax, key, title in ((axes[0], "pss_mib", "memory (PSS, MiB)"), (axes[1], "ready_s", "start to ready (s)")):
            values = [r[key] for r in memory]
            ax.bar(labels, values, color=colors)
            for i, v in enumerate(values):
                ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
            ax.set_title(title)
        fig.suptitle(f"Three models x 4 workers ({_subtitle(data)})", fontsize=10)
        out.append(_save(fig, prefix.with_name(prefix.name + "-memory.png")))
    return out


# --------------------------------------------------------------------------- bench_fairness


def _short(server: str) -> str:
    return server.replace("MLServer ", "MLServer\n").replace(", ", ",\n").replace("parallel_workers=", "workers ")


def plot_fairness(data: dict[str, Any], prefix: Path) -> list[Path]:
    plt = _pyplot()
    rows = data.get("light_heavy", [])
    out: list[Path] = []
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        probes = (("open", "light open loop, 100 req/s"), ("closed", "light closed loop, C = 1"))
        for ax, (probe, title) in zip(axes, probes, strict=True):
            xs = range(len(rows))
            bars = (
                ("alone_p50", "p50 alone", "#93c5fd", -1.5),
                ("alone_p99", "p99 alone", "#2563eb", -0.5),
                ("loaded_p50", "p50 under heavy flood", "#fca5a5", 0.5),
                ("loaded_p99", "p99 under heavy flood", "#b91c1c", 1.5),
            )
            for key, label, color, offset in bars:
                values = [r[f"light_{probe}_{key}"] for r in rows]
                ax.bar([x + offset * 0.2 for x in xs], values, width=0.2, color=color, label=label)
            ax.set_yscale("log")
            ax.set_xticks(list(xs), [_short(r["server"]) for r in rows], fontsize=7)
            ax.set_title(title)
        axes[0].set_ylabel("light model latency, ms (log scale)")
        axes[0].legend(fontsize=7)
        fig.suptitle(
            f"Fairness: a light model's latency alone and under a heavy flood ({_subtitle(data)})", fontsize=10
        )
        out.append(_save(fig, prefix.with_name(prefix.name + "-latency.png")))
    weights = (data.get("weights") or {}).get("models") or []
    if weights:
        fig, ax = plt.subplots(figsize=(4.2, 2.8))
        labels = [f"{w['model']}\nweight {w['weight']:g}" for w in weights]
        shares = [100 * w["cpu_share"] for w in weights]
        ax.bar(labels, shares, color=[RC, "#93c5fd"][: len(weights)])
        total = sum(w["weight"] for w in weights)
        for i, w in enumerate(weights):
            ax.hlines(100 * w["weight"] / total, i - 0.4, i + 0.4, colors="#111827", linestyles="--")
            ax.text(i, shares[i], f"{shares[i]:.1f} %", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("CPU share, %")
        ax.set_title("Weights 2:1, both flooded (dashed: 2/3 and 1/3)", fontsize=9)
        out.append(_save(fig, prefix.with_name(prefix.name + "-weights.png")))
    return out


# --------------------------------------------------------------------------- bench_isolation


def plot_isolation(data: dict[str, Any], prefix: Path) -> list[Path]:
    """Light p99 in each loaded phase over light p99 alone, one group of bars per phase and one
    bar per server, on a log scale, with the 2x target drawn."""
    plt = _pyplot()
    servers = [s for s in data.get("servers", []) if s.get("rows")]
    if not servers:
        return []
    phases = [r["phase"] for r in servers[0]["rows"]]
    shades = [RC, "#9ca3af", "#6b7280", "#374151"]
    width = 0.8 / len(servers)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for k, s in enumerate(servers):
        by = {r["phase"]: r["light_p99_ratio"] for r in s["rows"]}
        xs = [i + (k - (len(servers) - 1) / 2) * width for i, p in enumerate(phases) if p in by]
        ax.bar(xs, [by[p] for p in phases if p in by], width=width, color=shades[k % 4], label=_short(s["server"]))
    ax.axhline(2.0, color="#b91c1c", linestyle="--", linewidth=1, label="target: 2x alone")
    ax.set_yscale("log")
    ax.set_xticks(range(len(phases)), [f"beside {p}" for p in phases], fontsize=8)
    ax.set_ylabel("light p99 / light p99 alone")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"Isolation: light model (100 req/s) beside a busy or a sleeping one ({_subtitle(data)})", fontsize=9)
    return [_save(fig, prefix.with_name(prefix.name + ".png"))]


# --------------------------------------------------------------------------- bench_batching


def plot_batching(data: dict[str, Any], prefix: Path) -> list[Path]:
    plt = _pyplot()
    rows = data.get("rows", [])
    if not rows:
        return []
    groups = list(dict.fromkeys((r["server"], r["workers"]) for r in rows))
    modes = list(dict.fromkeys(r["batching"] for r in rows))
    shades = ["#9ca3af", "#60a5fa", "#1d4ed8", "#1e3a8a"]
    width = 0.8 / len(modes)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "rps", "requests/s"), (axes[1], "p99_ms", "p99 latency, ms")):
        for k, mode in enumerate(modes):
            by = {(r["server"], r["workers"]): r for r in rows if r["batching"] == mode}
            xs = [i + (k - (len(modes) - 1) / 2) * width for i, g in enumerate(groups) if g in by]
            label = "batching off" if mode == "off" else f"batching {mode}"
            ax.bar(xs, [by[g][key] for g in groups if g in by], width=width, color=shades[k % 4], label=label)
        names = [
            f"{LABELS.get(server, server)}\n{workers} worker{'s' if workers != 1 else ''}" for server, workers in groups
        ]
        ax.set_xticks(range(len(groups)), names, fontsize=8)
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()  # below the plots: no bar is hidden
    fig.legend(handles, labels, loc="lower center", ncol=len(modes), fontsize=8, frameon=False)
    fig.suptitle(f"Adaptive batching: light model, 1-row requests, C = 32 ({_subtitle(data)})", fontsize=10)
    return [_save(fig, prefix.with_name(prefix.name + ".png"), rect=(0, 0.07, 1, 1))]


# --------------------------------------------------------------------------- bench_binary


def plot_binary(data: dict[str, Any], prefix: Path) -> list[Path]:
    plt = _pyplot()
    rows = data.get("rows", [])
    if not rows:
        return []
    models = list(dict.fromkeys(r["model"] for r in rows))
    bodies = list(dict.fromkeys(r["body"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 3))
    shades = ["#9ca3af", "#60a5fa", "#1d4ed8"]
    for k, body in enumerate(bodies):
        by = {r["model"]: r for r in rows if r["body"] == body}
        xs = [i + (k - (len(bodies) - 1) / 2) * 0.25 for i, m in enumerate(models) if m in by]
        ax.bar(xs, [by[m]["cpu_ms_per_req"] for m in models if m in by], width=0.25, color=shades[k % 3], label=body)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("server CPU ms per request")
    ax.legend(fontsize=8)
    ax.set_title(f"[64, 20] FP32 per request: JSON vs binary tensors ({_subtitle(data)})", fontsize=9)
    return [_save(fig, prefix.with_name(prefix.name + ".png"))]


# --------------------------------------------------------------------------- bench_density


def plot_density(data: dict[str, Any], prefix: Path) -> list[Path]:
    plt = _pyplot()
    rows = data.get("rows", [])
    if not rows:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    panels = ((axes[0], "pss_mib", "memory (PSS, MiB)"), (axes[1], "ready_all_s", "until every model is READY (s)"))
    for ax, key, title in panels:
        for server in ("runtime-core", "mlserver"):
            points = sorted((r["models"], r[key]) for r in rows if r.get("server") == server and r.get(key) is not None)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, "o-", color=COLORS[server], label=LABELS[server])
        ax.set_xscale("log")
        ax.set_xlabel("models")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Many models: memory and time to ready ({_subtitle(data)})", fontsize=10)
    return [_save(fig, prefix.with_name(prefix.name + ".png"))]


# --------------------------------------------------------------------------- bench_grpc


def plot_grpc(data: dict[str, Any], prefix: Path) -> list[Path]:
    plt = _pyplot()
    rows = data.get("windows", [])
    if not rows:
        return []
    same = data.get("same_rate") or []
    groups = list(dict.fromkeys((r["server"], r["model"]) for r in rows))
    protocols = (("rest-json", "REST JSON", "#9ca3af"), ("grpc", "gRPC", "#2563eb"))
    fig, axes = plt.subplots(1, 3 if same else 2, figsize=(13 if same else 9, 3.2))
    for ax, key, title in (
        (axes[0], "cpu_ms_per_req", "closed loop: server CPU ms/request (log)"),
        (axes[1], "rps", "closed loop: requests/s"),
    ):
        for k, (protocol, label, color) in enumerate(protocols):
            by = {(r["server"], r["model"]): r for r in rows if r["protocol"] == protocol}
            xs = [i + (k - 0.5) * 0.38 for i, g in enumerate(groups) if g in by]
            ax.bar(xs, [by[g][key] for g in groups if g in by], width=0.38, color=color, label=label)
        ax.set_xticks(range(len(groups)), [f"{LABELS.get(s, s)}\n{m}" for s, m in groups], fontsize=8)
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    if same:  # runtime-core at one fixed rate over both protocols: medians of the rounds, main + workers
        models = list(dict.fromkeys(r["model"] for r in same))

        def mid(model: str, protocol: str, key: str) -> float:
            found = sorted(r[key] for r in same if (r["model"], r["protocol"]) == (model, protocol))
            if not found:
                return 0.0
            half = len(found) // 2
            return found[half] if len(found) % 2 else (found[half - 1] + found[half]) / 2

        for k, (protocol, label, color) in enumerate(protocols):
            xs = [i + (k - 0.5) * 0.38 for i in range(len(models))]
            main = [mid(m, protocol, "cpu_main_ms_per_req") for m in models]
            workers = [mid(m, protocol, "cpu_workers_ms_per_req") for m in models]
            axes[2].bar(xs, main, width=0.38, color=color, label=f"{label}: main process")
            axes[2].bar(
                xs, workers, width=0.38, bottom=main, color=color, alpha=0.45, hatch="//", label=f"{label}: workers"
            )
        axes[2].set_xticks(range(len(models)), [f"runtime-core\n{m}" for m in models], fontsize=8)
        axes[2].set_title(f"same rate, {data['args']['rate']:g} req/s: server CPU ms/request")
        axes[2].set_ylim(top=1.5 * max(r["cpu_ms_per_req"] for r in same))
        axes[2].legend(fontsize=7, loc="upper center", ncol=2)
    fig.suptitle(f"REST JSON and gRPC, one run ({_subtitle(data)})", fontsize=10)
    return [_save(fig, prefix.with_name(prefix.name + ".png"))]


# --------------------------------------------------------------------------- bench_ray


def plot_ray(data: dict[str, Any], prefix: Path) -> list[Path]:
    plt = _pyplot()
    rows = data.get("rows", [])
    if not rows:
        return []
    models = list(dict.fromkeys(r["model"] for r in rows))
    backends = (("process", "local worker processes", RC), ("ray", "Ray actors", "#f59e0b"))

    def median(backend: str, model: str, key: str) -> float | None:
        values = sorted(r[key] for r in rows if r.get("backend") == backend and r["model"] == model)
        if not values:
            return None
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    panels = ((axes[0], "cpu_ms_per_req_total", "CPU ms per request (log scale)"), (axes[1], "rps", "requests/s"))
    for ax, key, title in panels:
        for k, (backend, label, color) in enumerate(backends):
            values = {m: median(backend, m, key) for m in models}
            shown = [m for m in models if values[m] is not None]
            xs = [i + (k - 0.5) * 0.38 for i, m in enumerate(models) if m in shown]
            ax.bar(xs, [values[m] for m in shown], width=0.38, color=color, label=label)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    rounds = len({r.get("round", 0) for r in rows})
    fig.suptitle(f"Ray backend against local workers, one machine, median of {rounds} ({_subtitle(data)})", fontsize=10)
    return [_save(fig, prefix.with_name(prefix.name + ".png"))]


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], list[Path]]] = {
    "parallel": plot_parallel,
    "fairness": plot_fairness,
    "isolation": plot_isolation,
    "batching": plot_batching,
    "binary": plot_binary,
    "density": plot_density,
    "grpc": plot_grpc,
    "ray": plot_ray,
}


def plot_file(path: Path, prefix: Path | None = None) -> list[Path]:
    """Draw the plots of one results file; ``prefix`` (default: the file without ``.json``)
    starts the names of the PNG files."""
    kind = path.name.split("-", 1)[0]
    plotter = PLOTTERS.get(kind)
    if plotter is None:
        return []
    data = json.loads(path.read_text())
    return plotter(data, prefix or path.with_suffix(""))


def plot_after_run(path: Path) -> None:
    """What the benchmark scripts call after writing a results file: draw its plots, or say
    why not (matplotlib missing) without failing the run."""
    try:
        written = plot_file(path)
    except ImportError:
        print("[plots] matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr, flush=True)
        return
    for p in written:
        print(f"[plots] wrote {p}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", type=Path, help="results JSON files (default: the published ones)")
    args = parser.parse_args()
    if args.results:
        for path in args.results:
            for written in plot_file(path):
                print(written)
        return
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    for path in sorted(PUBLISHED.glob("*.json")):
        kind = path.name.split("-", 1)[0]
        for written in plot_file(path, DOCS_IMG / f"bench-{kind}"):
            print(written.relative_to(HERE.parent))


if __name__ == "__main__":
    main()
