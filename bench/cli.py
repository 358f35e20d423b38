"""How long the operator waits for the ``edgefleet`` command: wall time of
``edgefleet --version``, ``edgefleet --help`` and ``edgefleet devices ls`` (against a real
control plane with --devices enrolled), in the same run as ``python -c pass`` (the
interpreter's own start, the floor). Each is run --rounds times; the median is reported.

    python bench/cli.py [--rounds 7] [--devices 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.server.run import ServerThread
from edgefleet.server.settings import ServerSettings


def wall_seconds(argv: list[str], env: dict[str, str], rounds: int) -> float:
    """The median wall time of ``argv`` over ``rounds`` runs (each must succeed)."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--devices", type=int, default=50, help="bootstrap tokens listed by `tokens list` too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-cli-"))
    python = sys.executable
    try:
        settings = ServerSettings(data_dir=work / "server", port=0, attestation_required=False)
        init_server(settings, datetime.now(UTC))
        token = asyncio.run(create_admin_token(settings, name="bench", role=Role.OPERATOR, now=datetime.now(UTC),
                                               ttl=None))
        with ServerThread(settings) as server:
            with AdminClient(server.url, token, settings.pki.ca_cert) as client:
                for i in range(args.devices):
                    client.create_bootstrap_token(f"site-{i % 5}", {"n": str(i)}, 3600)
            env = {**os.environ, "EDGEFLEET_SERVER_URL": server.url, "EDGEFLEET_ADMIN_TOKEN": token,
                   "EDGEFLEET_CA_FILE": str(settings.pki.ca_cert)}
            figures = {
                "python_pass_s": wall_seconds([python, "-c", "pass"], env, args.rounds),
                "version_s": wall_seconds([python, "-m", "edgefleet", "--version"], env, args.rounds),
                "help_s": wall_seconds([python, "-m", "edgefleet", "--help"], env, args.rounds),
                "devices_ls_s": wall_seconds([python, "-m", "edgefleet", "devices", "ls"], env, args.rounds),
                "tokens_list_s": wall_seconds([python, "-m", "edgefleet", "tokens", "list"], env, args.rounds),
            }
        floor = figures["python_pass_s"]
        for name, seconds in figures.items():
            extra = "" if name == "python_pass_s" else f"  ({seconds - floor:+.3f} s over the interpreter's start)"
            print(f"{name:>15}: {seconds:.3f} s{extra}")
        print(f"goal: --version at or under 0.4 s: {'met' if figures['version_s'] <= 0.4 else 'NOT met'}")
        print(json.dumps({**{k: round(v, 4) for k, v in figures.items()}, "rounds": args.rounds}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
