"""What running a WebAssembly workload through edgefleet costs, next to wasmtime itself.

- cold start: from the module's bytes to the end of its first run (verify against the
  signed target, compile, store with limits, WASI, instantiate, run), against compiling and
  running the same bytes with the ``wasmtime`` package directly (no verification, limits
  or output files);
- per-invocation overhead: one more run of an already compiled module that returns at
  once, both ways;
- the agent's RSS with 10 modules loaded and serving under the supervisor, against the
  same process before.

    python bench/wasm.py [--runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

sys.path.insert(0, str(Path(__file__).parent.parent))
from tests.wasm_modules import module, signed_target

from edgefleet.protocol.workloads import WasmWorkload
from edgefleet.workloads.supervisor import Supervisor
from edgefleet.workloads.wasm import WasmModule


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spec(name: str) -> WasmWorkload:
    return WasmWorkload(name=name, kind="wasm", target=f"workloads/{name}.wasm")


def direct_run(engine: wasmtime.Engine, compiled: wasmtime.Module) -> None:
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    entry = linker.instantiate(store, compiled).exports(store)["_start"]
    assert isinstance(entry, wasmtime.Func)
    entry(store)


def median_ms(samples: list[float]) -> float:
    return round(1000 * statistics.median(samples), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    data = module("noop")
    target = signed_target("workloads/noop.wasm", data)
    with tempfile.TemporaryDirectory(prefix="edgefleet-wasm-") as tmp:
        work = Path(tmp)
        cold_ours, cold_direct = [], []
        for n in range(20):
            started = time.perf_counter()
            ours = WasmModule(spec(f"cold{n}"), [(data, target)])
            assert ours.run(work / "data", work / "logs").reason == "exited"
            cold_ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            engine = wasmtime.Engine()
            direct_run(engine, wasmtime.Module(engine, data))
            cold_direct.append(time.perf_counter() - started)
        warm = WasmModule(spec("warm"), [(data, target)])
        engine = wasmtime.Engine()
        compiled = wasmtime.Module(engine, data)
        runs_ours, runs_direct = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            warm.run(work / "data", work / "logs")
            runs_ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            direct_run(engine, compiled)
            runs_direct.append(time.perf_counter() - started)

        async def loaded() -> tuple[float, float]:
            supervisor = Supervisor(work / "data", work / "logs")
            before = rss_mib()
            services = [module("serves", f"service {n} serving") for n in range(10)]
            await supervisor.apply([(spec(f"svc{n}"), [(m, signed_target(f"workloads/svc{n}.wasm", m))])
                                    for n, m in enumerate(services)])
            await asyncio.sleep(1.0)
            assert all(s.state == "running" for s in supervisor.status())
            after = rss_mib()
            await supervisor.close()
            return before, after

        before, after = asyncio.run(loaded())
    figures = {
        "cold_start_ms": median_ms(cold_ours), "cold_start_direct_ms": median_ms(cold_direct),
        "invocation_ms": median_ms(runs_ours), "invocation_direct_ms": median_ms(runs_direct),
        "invocation_overhead_ms": round(median_ms(runs_ours) - median_ms(runs_direct), 3),
        "rss_before_mib": round(before, 1), "rss_10_modules_mib": round(after, 1),
        "rss_per_module_mib": round((after - before) / 10, 2),
    }
    print(f"cold start (verify, compile, limits, WASI, instantiate, run): {figures['cold_start_ms']} ms; "
          f"wasmtime directly: {figures['cold_start_direct_ms']} ms (medians of 20)")
    print(f"one more run of a compiled module: {figures['invocation_ms']} ms; wasmtime directly: "
          f"{figures['invocation_direct_ms']} ms; overhead {figures['invocation_overhead_ms']} ms "
          f"(medians of {args.runs})")
    print(f"agent RSS: {figures['rss_before_mib']} MiB, with 10 modules serving {figures['rss_10_modules_mib']} MiB "
          f"({figures['rss_per_module_mib']} MiB per module)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
