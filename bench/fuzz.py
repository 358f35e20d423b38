"""Fuzz the parsers that take bytes from outside (tests/fuzz_targets.py) with atheris
(libFuzzer, coverage-guided), each for a fixed time.

    .venv/bin/python bench/fuzz.py --seconds 600            # every target, 10 minutes each
    .venv/bin/python bench/fuzz.py --target event_log --seconds 60

Each target runs in a child process seeded with valid inputs (and the corpus it grew
before, kept in ~/.cache/edgefleet/fuzz/<target>). A crash (an exception that is not a
typed refusal) is copied to tests/fuzz_corpus/<target>/ with its traceback's last line,
and the child starts again for the time that is left; tests/test_fuzz_regressions.py
replays every kept crash. ``--keep N`` also copies N inputs of the grown corpus there
(small to large) (inputs that reached new code), so the tests replay what the fuzzer learned.
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CACHE = Path(os.environ.get("EDGEFLEET_CACHE", Path.home() / ".cache" / "edgefleet")) / "fuzz"
STATS = re.compile(r"stat::(number_of_executed_units|average_exec_per_sec):\s*(\d+)")


def child(name: str, seconds: int, corpus: Path, artifacts: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=["edgefleet"]):
        from tests.fuzz_targets import check

    def one(data: bytes) -> None:
        check(name, data)

    atheris.Setup([sys.argv[0], str(corpus), f"-max_total_time={seconds}", "-print_final_stats=1",
                   f"-artifact_prefix={artifacts}/", "-max_len=65536", "-rss_limit_mb=2048", "-timeout=30"], one)
    atheris.Fuzz()


def run_target(name: str, seconds: int) -> dict[str, object]:
    from tests.fuzz_targets import CORPUS, TARGETS

    corpus, artifacts = CACHE / name / "corpus", CACHE / name / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    for seed in TARGETS[name].seeds():
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)  # noqa: S324 - a name
    executions, crashes, started = 0, [], time.monotonic()
    while (left := seconds - int(time.monotonic() - started)) > 5:
        before = set(artifacts.iterdir())
        result = subprocess.run([sys.executable, __file__, "--child", name, "--seconds", str(left)],
                                capture_output=True, text=True, check=False, cwd=ROOT)
        found = dict(STATS.findall(result.stderr))
        executions += int(found.get("number_of_executed_units", 0))
        new = sorted(set(artifacts.iterdir()) - before)
        if result.returncode == 0 and not new:
            continue
        if not new:
            print(f"  {name}: the fuzzer stopped with {result.returncode} and no input:\n{result.stderr[-2000:]}")
            break
        why = next((line for line in reversed(result.stderr.splitlines()) if re.match(r"^\w*(Error|Exception)", line)),
                   "unknown")
        for path in new:
            kept = CORPUS / name / path.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, kept)
            crashes.append({"input": str(kept.relative_to(ROOT)), "error": why[:200]})
            print(f"  {name}: CRASH {why[:120]} -> {kept.relative_to(ROOT)}")
    elapsed = time.monotonic() - started
    return {"seconds": round(elapsed), "executions": executions, "exec_per_s": round(executions / elapsed, 1),
            "crashes": crashes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", help="a target of tests/fuzz_targets.py (repeat; default all)")
    parser.add_argument("--seconds", type=int, default=600, help="per target")
    parser.add_argument("--keep", type=int, default=0, help="copy this many corpus inputs per target to the tests")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("bench/fuzz.py needs atheris (pip install atheris; Python 3.11 or older wheels)")
        print(json.dumps({"skipped": "atheris missing"}))
        return
    if args.child:
        child(args.child, args.seconds, CACHE / args.child / "corpus", CACHE / args.child / "artifacts")
        return
    from tests.fuzz_targets import TARGETS

    names = args.target or list(TARGETS)
    figures: dict[str, object] = {}
    for name in names:
        print(f"fuzzing {name} for {args.seconds} s ...", flush=True)
        result = run_target(name, args.seconds)
        crashes = result["crashes"]
        assert isinstance(crashes, list)
        print(f"  {name}: {result['executions']} executions in {result['seconds']} s "
              f"({result['exec_per_s']}/s), {len(crashes)} crashes", flush=True)
        figures[f"{name}_exec_per_s"] = result["exec_per_s"]
        figures[f"{name}_seconds"] = result["seconds"]
        figures[f"{name}_crashes"] = len(crashes)
        if args.keep:
            print(f"  {name}: kept {keep_corpus(name, args.keep)} corpus inputs in tests/fuzz_corpus/{name}/")
    print(json.dumps(figures))


def keep_corpus(name: str, count: int) -> int:
    from tests.fuzz_targets import CORPUS

    ordered = sorted((p for p in (CACHE / name / "corpus").iterdir() if not p.name.startswith("seed-")),
                     key=lambda p: (p.stat().st_size, p.name))
    grown = ordered[::max(1, len(ordered) // count)][:count]  # small to large
    (CORPUS / name).mkdir(parents=True, exist_ok=True)
    for path in grown:
        shutil.copyfile(path, CORPUS / name / f"corpus-{path.name[:16]}")
    return len(grown)


if __name__ == "__main__":
    main()
