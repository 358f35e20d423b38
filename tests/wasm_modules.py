"""Small WASI modules for workload tests and benches, in WebAssembly text (wasmtime
assembles them), and their targets signed with python-tuf like any release artifact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import wasmtime
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile, Targets

from edgefleet.protocol.workloads import WorkloadStatus
from edgefleet.workloads.supervisor import Supervisor

_PRELUDE = r"""
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "MESSAGE\n")
  (func $say (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $init (i32.store (i32.const 0) (i32.const 256)) (i32.store (i32.const 4) (i32.const LENGTH)))
  ;; sleep NAP ns (20 ms unless told): one clock subscription (monotonic, relative) at 64, its event at 128
  (func $nap
    (i64.store (i32.const 64) (i64.const 0))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const NAP))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    (drop (call $poll (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 192))))
"""

BODIES = {
    # prints once and exits 0
    "hello": "(call $say)",
    # prints, then exits with code 3
    "fails": "(call $say) (call $exit (i32.const 3))",
    # prints, then hits unreachable: a crash
    "crashes": "(call $say) unreachable",
    # spins forever (a CPU limit stops it)
    "spins": "(call $say) (loop $l (br $l))",
    # grows its memory a page at a time until refused, then aborts as allocators do
    "grows": "(call $say) (block $b (loop $l (br_if $b (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))"
             " (br $l))) unreachable",
    # a service: prints and sleeps, forever
    "serves": "(loop $l (call $say) (call $nap) (br $l))",
    # returns at once: what a per-invocation overhead is measured with
    "noop": "",
}


def wat(kind: str, message: str = "hello from wasm", nap_seconds: float = 0.02) -> str:
    prelude = _PRELUDE.replace("MESSAGE", message).replace("LENGTH", str(len(message) + 1))
    prelude = prelude.replace("NAP", str(round(nap_seconds * 1e9)))
    return f'(module {prelude} (func (export "_start") (call $init) {BODIES[kind]}))'


def module(kind: str, message: str = "hello from wasm", nap_seconds: float = 0.02) -> bytes:
    """``kind``'s module; a service (``serves``) sleeps ``nap_seconds`` between lines."""
    return bytes(wasmtime.wat2wasm(wat(kind, message, nap_seconds)))


def signed_target(path: str, data: bytes) -> TargetFile:
    """``data``'s target as a device gets it: in targets metadata signed with ed25519,
    serialized, parsed back and its signature verified."""
    signer = CryptoSigner(Ed25519PrivateKey.generate())
    md = Metadata(Targets(expires=datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)))
    md.signed.targets[path] = TargetFile.from_data(path, data, ["sha256", "sha512"])
    md.sign(signer)
    parsed = Metadata[Targets].from_bytes(md.to_bytes())
    signer.public_key.verify_signature(parsed.signatures[signer.public_key.keyid], parsed.signed_bytes)
    return parsed.signed.targets[path]


async def settled(supervisor: Supervisor, name: str, test: Callable[[WorkloadStatus], bool]) -> WorkloadStatus:
    """The workload's status once ``test`` holds (in the supervisor's own event loop)."""
    while True:
        found = [s for s in supervisor.status() if s.name == name]
        if found and test(found[0]):
            return found[0]
        await asyncio.sleep(0.02)
