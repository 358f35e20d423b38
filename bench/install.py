"""Writing an image into an A/B slot with streaming verification, against the shell
baseline on the same file in the same run.

    ours:      write_slot(): stream the image into the slot, fsync, read the slot back and
               check its SHA-256 against the signed hash (what the agent does before a slot
               may ever be booted)
    baseline:  dd if=IMAGE of=SLOT bs=4M conv=fsync  then  sha256sum SLOT
    also:      the same dd, then  openssl dgst -sha256 SLOT  (coreutils' sha256sum does
               not use the CPU's SHA extensions, OpenSSL and Python's hashlib do; this
               second baseline keeps the comparison honest)

Both start with the image in the page cache and an existing slot file of the same size
(a partition is never created, only overwritten). Each is run --rounds times, alternating,
and the best round counts (the least disturbed by the rest of the machine).

    python bench/install.py [--size-mib 1024] [--rounds 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from edgefleet.agent.abupdate import write_slot


def make_image(path: Path, size: int) -> str:
    """A file of incompressible-looking bytes; returns its SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for i in range(size >> 20):
            chunk = block[i % 251:] + block[:i % 251]  # cheap variation per MiB
            handle.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def ours(image: Path, slot: Path, size: int, sha256: str) -> float:
    started = time.perf_counter()
    write_slot(image, slot, size, sha256, size)
    return time.perf_counter() - started


def baseline(image: Path, slot: Path, sha256: str, hasher: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(["dd", f"if={image}", f"of={slot}", "bs=4M", "conv=fsync,notrunc", "status=none"], check=True)
    out = subprocess.run([*hasher, str(slot)], check=True, capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - started
    assert sha256 in out, out
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="edgefleet-install-") as tmp:
        image, slot = Path(tmp) / "image.erofs", Path(tmp) / "slot-b"
        sha256 = make_image(image, size)
        with open(slot, "wb") as handle:
            handle.truncate(size)
        times: dict[str, list[float]] = {"ours": [], "dd+sha256sum": [], "dd+openssl": []}
        for _ in range(args.rounds):
            times["dd+sha256sum"].append(baseline(image, slot, sha256, ["sha256sum"]))
            times["dd+openssl"].append(baseline(image, slot, sha256, ["openssl", "dgst", "-sha256"]))
            times["ours"].append(ours(image, slot, size, sha256))
    mib = size / (1 << 20)
    rates = {name: mib / min(runs) for name, runs in times.items()}
    ratio = rates["ours"] / rates["dd+sha256sum"]
    ratio_openssl = rates["ours"] / rates["dd+openssl"]
    print(f"image {mib:.0f} MiB, {args.rounds} rounds each, best round:")
    for name, runs in times.items():
        print(f"  {name:14s} {rates[name]:8.1f} MiB/s   (rounds: {', '.join(f'{t:.2f}s' for t in runs)})")
    print(f"  ours / (dd + sha256sum): {ratio:.0%} (goal: at least 80%);  ours / (dd + openssl): {ratio_openssl:.0%}")
    print(json.dumps({"image_mib": mib, "ours_mib_per_s": round(rates["ours"], 1),
                      "dd_sha256sum_mib_per_s": round(rates["dd+sha256sum"], 1),
                      "dd_openssl_mib_per_s": round(rates["dd+openssl"], 1), "ratio_vs_sha256sum": round(ratio, 3),
                      "ratio_vs_openssl": round(ratio_openssl, 3)}))


if __name__ == "__main__":
    main()
