"""Bytes a device downloads to go from v1 to v2 of a realistic Debian image, in one run:

    full zstd        zstd -19 of v2 (what a full download costs, compressed)
    ours: delta      edgefleet's known-base delta (bsdiff matches, zstd streams)
    ours: index      edgefleet's any-base fallback: content index + dictionary + the pieces
                     a device on v1 lacks (also shown without the dictionary)
    casync           casync make (64 KiB chunks); chunks of v2's store not in v1's + index
    zchunk           zck; zck_delta_size's bytes + v2's header
    zstd patch-from  zstd -19 --patch-from=v1 v2

The image pair is built once by ``bench/delta_images.py`` (debootstrap: bookworm minbase +
systemd, python3, openssh-server; v2 = v1 + security and point updates + curl, less, nano;
reproducible uncompressed erofs) and kept in ``~/.cache/edgefleet-bench/delta`` with every
artifact made from it (``--rebuild`` makes ours again).

Ours are also applied as a device would, each in a process of its own, measured by
/usr/bin/time: wall time and peak memory (maximum resident set, the Python interpreter
included). The delta applies from v1 read-only; the index rebuild seeds from v1 and reads
pieces from the local store (no network: the download is counted, not timed). Both check
the result against v2's SHA-256.

Goals (issue 12): delta <= 1.2x the best of the others within 256 MiB; fallback <= 30% of
the full image and <= half of casync within 64 MiB.

    sudo python bench/delta.py [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from delta_images import CACHE, image_pair
from edgefleet.delta.bsdelta import build_delta, file_sha256
from edgefleet.delta.index import build_index, dictionary_path, train_dictionary

MIB = 1 << 20


def cached(path: Path, make: list[str] | None = None, rebuild: bool = False) -> Path:
    if make is not None and (rebuild or not path.exists()):
        print("$", " ".join(make), flush=True)
        subprocess.run(make, check=True)
    return path


def tree_files(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file()}


def full_zstd(work: Path, v2: Path) -> int:
    return cached(work / "v2.img.zst", ["zstd", "-19", "-T0", "-q", "-f", str(v2), "-o", str(work / "v2.img.zst")]
                  ).stat().st_size


def patch_from(work: Path, v1: Path, v2: Path) -> int:
    out = work / "v1-v2.zstpatch"
    return cached(out, ["zstd", "-19", "-q", "-f", f"--patch-from={v1}", str(v2), "-o", str(out)]).stat().st_size


def casync(work: Path, v1: Path, v2: Path) -> int:
    if shutil.which("casync") is None:
        raise SystemExit("casync is missing: apt-get install casync")
    for name, image in (("v1", v1), ("v2", v2)):
        cached(work / f"{name}.caibx", ["casync", "make", f"--store={work / (name + '.castr')}",
                                        str(work / f"{name}.caibx"), str(image)])
    have = tree_files(work / "v1.castr")
    return sum(n for name, n in tree_files(work / "v2.castr").items() if name not in have) + \
        (work / "v2.caibx").stat().st_size


def zchunk(work: Path, v1: Path, v2: Path) -> int:
    if shutil.which("zck") is None:
        raise SystemExit("zchunk is missing: apt-get install zchunk")
    for name, image in (("v1", v1), ("v2", v2)):
        cached(work / f"{name}.zck", ["zck", "-o", str(work / f"{name}.zck"), str(image)])
    said = subprocess.run(["zck_delta_size", str(work / "v1.zck"), str(work / "v2.zck")], check=True,
                          capture_output=True, text=True).stdout
    header = subprocess.run(["zck_read_header", str(work / "v2.zck")], check=True, capture_output=True,
                            text=True).stdout
    download = int(said.split("Would download ")[1].split()[0])
    return download + int(header.split("Header size: ")[1].split()[0])


def measured(script: str, *args: str) -> tuple[float, float, str]:
    """Run ``script`` in a fresh Python; (seconds, peak MiB, what it printed)."""
    with tempfile.NamedTemporaryFile("r") as timing:
        result = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", timing.name, sys.executable, "-c", script,
                                 *args], check=True, capture_output=True, text=True)
        seconds, kib = timing.read().split()
    return float(seconds), int(kib) / 1024, result.stdout.strip()


APPLY_DELTA = """
import sys
from pathlib import Path
from edgefleet.delta.bsdelta import apply_delta
apply_delta(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
"""

APPLY_INDEX = """
import json, sys
from pathlib import Path
from edgefleet.delta.assemble import assemble
from edgefleet.delta.index import Index, piece_path
from edgefleet.delta.pieces import load_dictionary
index, store, seed, out = Index.load(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
def fetch(ident, limit):
    data = piece_path(store, index.namespace, ident).read_bytes()
    assert len(data) <= limit
    return data
out.unlink(missing_ok=True)
done = assemble(index, out, [(seed, None)], fetch, dictionary=load_dictionary(store, index.namespace))
print(json.dumps({"fetched": done.fetched_bytes, "pieces": done.pieces, "seeded": done.seeded_bytes}))
"""


def ours_delta(work: Path, v1: Path, v2: Path, rebuild: bool) -> dict[str, float]:
    delta = work / "ours" / "v1-v2.delta"
    delta.parent.mkdir(parents=True, exist_ok=True)
    built = None
    if rebuild or not delta.exists():
        started = time.perf_counter()
        build_delta(v1, v2, delta)
        built = time.perf_counter() - started
    out = work / "ours" / "v2.from-delta"
    seconds, peak, _ = measured(APPLY_DELTA, str(delta), str(v1), str(out))
    assert file_sha256(out) == file_sha256(v2), "the delta did not rebuild v2"
    out.unlink()
    return {"bytes": delta.stat().st_size, "apply_s": seconds, "peak_mib": peak,
            **({"build_s": built} if built is not None else {})}


def ours_index(work: Path, v1: Path, v2: Path, rebuild: bool, *, dictionary: bool) -> dict[str, float]:
    name = "dict" if dictionary else "raw"
    store, index = work / "ours" / f"pieces-{name}", work / "ours" / f"v2.{name}.index"
    built = None
    if rebuild or not index.exists():
        shutil.rmtree(store, ignore_errors=True)
        started = time.perf_counter()
        trained = train_dictionary(v2) if dictionary else None
        info = build_index(v2, index, store, dictionary=trained)
        built = time.perf_counter() - started
        print(f"  built the {name} index in {built:.0f} s: {info.entries} chunks, {info.pieces} pieces, "
              f"{info.pieces_bytes / MIB:.1f} MiB of pieces", flush=True)
    out = work / "ours" / "v2.from-index"
    seconds, peak, printed = measured(APPLY_INDEX, str(index), str(store), str(v1), str(out))
    assert file_sha256(out) == file_sha256(v2), "the index did not rebuild v2"
    out.unlink()
    done = json.loads(printed)
    namespaces = [p for p in store.iterdir() if p.is_dir()]
    dict_bytes = dictionary_path(store, namespaces[0].name).stat().st_size if dictionary else 0
    return {"bytes": index.stat().st_size + dict_bytes + done["fetched"], "index_bytes": index.stat().st_size,
            "dictionary_bytes": dict_bytes, "pieces_bytes": done["fetched"], "pieces": done["pieces"],
            "apply_s": seconds, "peak_mib": peak, **({"build_s": built} if built is not None else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="build our delta and indexes again")
    args = parser.parse_args()
    v1, v2 = image_pair()
    work = CACHE / "results"
    work.mkdir(parents=True, exist_ok=True)
    print(f"v1 {v1.stat().st_size / MIB:.1f} MiB, v2 {v2.stat().st_size / MIB:.1f} MiB (erofs, uncompressed)")
    sizes = {"full zstd -19": full_zstd(work, v2), "zstd --patch-from": patch_from(work, v1, v2),
             "casync": casync(work, v1, v2), "zchunk": zchunk(work, v1, v2)}
    delta = ours_delta(work, v1, v2, args.rebuild)
    index = ours_index(work, v1, v2, args.rebuild, dictionary=True)
    raw = ours_index(work, v1, v2, args.rebuild, dictionary=False)
    full = sizes["full zstd -19"]
    rows = [*sizes.items(), ("ours: known-base delta", int(delta["bytes"])),
            ("ours: index (with dictionary)", int(index["bytes"])),
            ("ours: index (no dictionary)", int(raw["bytes"]))]
    print(f"\n{'download v1 -> v2':32} {'MiB':>8} {'of full':>8}")
    for name, size in rows:
        print(f"{name:32} {size / MIB:8.2f} {size / full:8.1%}")
    print(f"\n{'applying ours on the device':32} {'seconds':>8} {'peak MiB':>9}")
    for name, figures in (("known-base delta", delta), ("index (with dictionary)", index),
                          ("index (no dictionary)", raw)):
        print(f"{name:32} {figures['apply_s']:8.1f} {figures['peak_mib']:9.0f}")
    best_other = min(v for k, v in sizes.items())
    print("\ngoals:")
    print(f"  delta {delta['bytes'] / best_other:.2f}x the best other ({min(sizes, key=lambda k: sizes[k])}) "
          f"[<= 1.2x], peak {delta['peak_mib']:.0f} MiB [<= 256]")
    print(f"  index {index['bytes'] / full:.1%} of full [<= 30%], {index['bytes'] / sizes['casync']:.2f}x casync "
          f"[<= 0.5x], peak {index['peak_mib']:.0f} MiB [<= 64]")
    figures = {
        "image_v2_bytes": v2.stat().st_size, "full_zstd_bytes": full,
        "zstd_patch_from_bytes": sizes["zstd --patch-from"],
        "casync_bytes": sizes["casync"], "zchunk_bytes": sizes["zchunk"],
        "delta_bytes": int(delta["bytes"]), "delta_apply_s": delta["apply_s"], "delta_peak_mib": delta["peak_mib"],
        "index_bytes": int(index["bytes"]), "index_index_bytes": int(index["index_bytes"]),
        "index_dictionary_bytes": int(index["dictionary_bytes"]), "index_pieces_bytes": int(index["pieces_bytes"]),
        "index_apply_s": index["apply_s"], "index_peak_mib": index["peak_mib"],
        "index_raw_bytes": int(raw["bytes"]), "index_raw_apply_s": raw["apply_s"],
        "index_raw_peak_mib": raw["peak_mib"],
        "delta_vs_best_other_ratio": delta["bytes"] / best_other, "index_vs_full_ratio": index["bytes"] / full,
        "index_vs_casync_ratio": index["bytes"] / sizes["casync"],
    }
    for key in ("build_s",):
        if key in delta:
            figures["delta_build_s"] = delta[key]
        if key in index:
            figures["index_build_s"] = index[key]
    print(json.dumps(figures))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
