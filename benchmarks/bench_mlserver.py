"""MLServer's own MLModel runtimes on runtime-core (runtimes/mlserver) against MLServer 1.7.1.

Measured in one run, on the same machine, so that the ratios hold however busy it is:

* a custom ``MLModel`` (a sum over the row's 4 features, written beside its
  ``model-settings.json``) and an ``mlserver-lightgbm`` model (5 trees, trained here), each
  under 8 concurrent clients (wrk, closed loop, 1-row JSON requests): req/s, p99 and server
  CPU per request (every process of the server's tree), on runtime-core and on MLServer;
* the adapter's cost: the same sum written as a native runtime-core runtime (a plugin made
  here, found by its entry point, declared like the mlserver runtime: no coalescing, no
  shared load), same load, its CPU per request against the adapter's;
* density: PSS of the server's process tree with 200 custom ``MLModel`` models loaded
  (each its own folder and module copy), runtime-core against MLServer.

    python benchmarks/bench_mlserver.py                       # about 4 min
    python benchmarks/bench_mlserver.py --duration 4 --warmup 1 --models 50   # quicker

MLServer is found through ``MLSERVER_BIN`` (see ``servers.py``; its environment needs
``mlserver-lightgbm``); without it its rows are skipped. Results go to
``benchmarks/results/mlserver-*.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import closed_window, environment, infer_url, progress, table, write_results
from measure import tree_pids, tree_pss_mib
from servers import MLServerServer, RuntimeCoreServer, mlserver_available

FEATURES = 4
ROW = [0.25, -1.5, 0.75, 2.0]
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": ROW}]}).encode()

#: The custom MLModel, as an MLServer user writes it beside model-settings.json.
SUM_MODEL = textwrap.dedent("""
    import numpy as np
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse


    class SumModel(MLModel):
        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            x = NumpyCodec.decode_input(payload.inputs[0])
            total = np.asarray(x, dtype=np.float64).sum(axis=1, keepdims=True)
            return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("total", total)])
""")

#: The same sum as a native runtime-core runtime, and the entry point that finds it.
NATIVE = textwrap.dedent("""
    import numpy as np
    from runtime_core import InferenceResponse, Runtime, Tensor, hookimpl


    class BenchSum(Runtime):
        # Declared like the mlserver runtime (no coalescing of waiting requests, each
        # worker loads for itself): the difference measured is the adapter's own cost.
        name = "bench-sum"

        async def load(self):
            pass

        async def predict(self, request):
            x = request.inputs[0].data.astype(np.float64)
            return InferenceResponse([Tensor("total", x.sum(axis=1, keepdims=True), "FP64")])


    @hookimpl
    def rc_register_runtimes():
        return [BenchSum]
""")


def native_plugin(site: Path) -> None:
    """A ``runtime_core`` entry point for :data:`NATIVE`, as an installed distribution's metadata."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "rc_bench_sum.py").write_text(NATIVE)
    info = site / "rc_bench_sum-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rc-bench-sum\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[runtime_core]\nbench_sum = rc_bench_sum\n")


def write_sum_model(root: Path, name: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "summodel.py").write_text(SUM_MODEL)
    (folder / "model-settings.json").write_text(json.dumps({"name": name, "implementation": "summodel.SumModel"}))


def write_lightgbm(root: Path, name: str) -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, FEATURES))
    params = {"objective": "binary", "num_leaves": 8, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, (x[:, 0] + x[:, 1] > 0).astype(float)), num_boost_round=5)
    folder = root / name
    folder.mkdir(parents=True)
    booster.save_model(str(folder / "model.bst"))
    settings = {"name": name, "implementation": "mlserver_lightgbm.LightGBMModel", "parameters": {"uri": "./model.bst"}}
    (folder / "model-settings.json").write_text(json.dumps(settings))


def index_ready(base: str, count: int, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = urllib.request.Request(base + "/v2/repository/index", data=b"{}", method="POST")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as resp:
            rows = json.loads(resp.read())
        if sum(1 for r in rows if r.get("state") == "READY") >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{count} models not READY after {timeout} s")


def check_answer(base: str, model: str) -> None:
    req = urllib.request.Request(infer_url(base, model), data=BODY, method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as resp:
        doc = json.loads(resp.read())
    if model.startswith("sum") and doc["outputs"][0]["data"] != [sum(ROW)]:
        raise AssertionError(f"{model} answered {doc}")


def throughput(server: Any, models: list[str], args: argparse.Namespace, label: str) -> list[dict[str, Any]]:
    rows = []
    for model in models:
        check_answer(server.url, model)
        row = closed_window(
            infer_url(server.url, model),
            BODY,
            server.pid,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
        )
        row.update(server=label, model=model)
        progress(f"{label} {model}: {row['rps']:.0f} req/s, {row['cpu_ms_per_req']:.3f} ms CPU/req")
        rows.append(row)
    return rows


def density(server_cls: Any, root: Path, count: int, label: str, **kw: Any) -> dict[str, Any]:
    for i in range(count):
        write_sum_model(root, f"sum{i:04d}")
    with server_cls(root, **kw) as server:
        index_ready(server.url, count)
        check_answer(server.url, f"sum{count - 1:04d}")
        time.sleep(2.0)  # the last loads' follow-up work (gc, page faults) settles
        row = {"server": label, "models": count, "processes": len(tree_pids(server.pid))}
        row["pss_mib"] = tree_pss_mib(server.pid)
    progress(f"{label}: {count} models, {row['pss_mib']:.0f} MiB PSS in {row['processes']} processes")
    return row


def _cpu(row: dict[str, Any]) -> list[float]:
    return [row["cpu_ms_per_req"], row["cpu_main_ms_per_req"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each window")
    parser.add_argument("--concurrency", "-c", type=int, default=8)
    parser.add_argument("--models", type=int, default=200, help="custom models in the density run")
    parser.add_argument("--no-mlserver", action="store_true", help="skip MLServer")
    args = parser.parse_args()
    with_mlserver = mlserver_available() and not args.no_mlserver
    if not with_mlserver:
        progress("MLServer not found (MLSERVER_BIN): its rows are skipped")

    rows: list[dict[str, Any]] = []
    dense: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-mlserver-") as tmp:
        scratch = Path(tmp)
        site = scratch / "site"
        native_plugin(site)
        rc_repo, ml_repo = scratch / "rc", scratch / "ml"
        for repo in (rc_repo, ml_repo):
            write_sum_model(repo, "sum")
            write_lightgbm(repo, "gbm")
        (rc_repo / "native").mkdir()
        (rc_repo / "native" / "model-settings.json").write_text(json.dumps({"name": "native", "runtime": "bench-sum"}))

        progress("runtime-core: sum (adapter), native sum, lightgbm")
        with RuntimeCoreServer(rc_repo, python_path=site) as server:
            index_ready(server.url, 3)
            rows += throughput(server, ["sum", "native", "gbm"], args, "runtime-core")
        if with_mlserver:
            progress("MLServer 1.7.1: sum, lightgbm")
            with MLServerServer(ml_repo) as ml:
                index_ready(ml.url, 2)
                rows += throughput(ml, ["sum", "gbm"], args, "MLServer")

        progress(f"density: {args.models} custom MLModels")
        dense.append(density(RuntimeCoreServer, scratch / "rc-many", args.models, "runtime-core"))
        if with_mlserver:
            dense.append(density(MLServerServer, scratch / "ml-many", args.models, "MLServer"))

    by = {(r["server"], r["model"]): r for r in rows}
    ratios: dict[str, float] = {}
    adapter, native = by[("runtime-core", "sum")], by[("runtime-core", "native")]
    ratios["adapter_cpu_vs_native"] = adapter["cpu_ms_per_req"] / native["cpu_ms_per_req"]
    if with_mlserver:
        for model in ("sum", "gbm"):
            ratios[f"{model}_rps_vs_mlserver"] = by[("runtime-core", model)]["rps"] / by[("MLServer", model)]["rps"]
            ours, theirs = by[("runtime-core", model)], by[("MLServer", model)]
            ratios[f"{model}_cpu_vs_mlserver"] = ours["cpu_ms_per_req"] / theirs["cpu_ms_per_req"]
        ratios["pss_vs_mlserver"] = dense[0]["pss_mib"] / dense[1]["pss_mib"]

    markdown = "\n\n".join(
        [
            table(
                ["server", "model", "req/s", "p50 ms", "p99 ms", "server CPU ms/req", "main ms/req"],
                [[r["server"], r["model"], r["rps"], r["p50_ms"], r["p99_ms"], *_cpu(r)] for r in rows],
            ),
            table(
                ["server", "custom models", "processes", "PSS MiB"],
                [[d["server"], d["models"], d["processes"], d["pss_mib"]] for d in dense],
            ),
            table(["ratio", "value"], [[k, f"{v:.2f}"] for k, v in ratios.items()]),  # 1.26 and 1.34 differ here
        ]
    )
    data = {"environment": environment(), "args": vars(args), "rows": rows, "density": dense, "ratios": ratios}
    json_path, md_path = write_results("mlserver", data, markdown)
    print()
    print(markdown)
    print()
    progress(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
