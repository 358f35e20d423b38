"""Workloads on the device: WebAssembly modules (wasmtime), supervised."""
