"""A real OpenID Provider for tests: panva's oidc-provider (OpenID Certified, from npm) run
by node with its development login and consent pages (``tests/oidc/provider.mjs``). The
package is installed once into ``~/.cache/edgefleet`` (keyed on its version), outside the
clone, so a rerun does not fetch it again."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from tests.conftest import need

VERSION = "9.13.3"
SCRIPT = Path(__file__).resolve().parent / "oidc" / "provider.mjs"


def _installed() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        need("node", "node and npm are not installed (Debian: nodejs npm)")
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefleet" / f"oidc-provider-{VERSION}"
    if not (home / "node_modules" / "oidc-provider" / "package.json").exists():
        home.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(home),
                               f"oidc-provider@{VERSION}"], capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            need("oidc-provider", f"npm could not install it: {done.stderr.strip()[-300:]}")
    # ES modules resolve packages from the script's own directory.
    shutil.copyfile(SCRIPT, home / "provider.mjs")
    return home


@contextmanager
def oidc_provider(port: int, clients: list[dict[str, Any]], accounts: dict[str, dict[str, Any]]) -> Iterator[str]:
    """Run the provider on 127.0.0.1:``port`` until the block ends; yields its issuer."""
    home = _installed()
    process = subprocess.Popen(["node", "provider.mjs", str(port), json.dumps(clients), json.dumps(accounts)],
                               cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the OIDC provider did not start"
            time.sleep(0.2)
        yield issuer
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def sign_in_at_provider(client: httpx.Client, url: str, login: str, back_to: str) -> str:
    """Follow ``url`` through the provider as a person would (its login form, then its
    consent form) until it sends the browser to ``back_to``; returns that address."""
    answer = client.get(url)
    for _ in range(20):
        if answer.status_code in (302, 303):
            location = urljoin(str(answer.url), answer.headers["location"])
            if location.startswith(back_to):
                return location
            answer = client.get(location)
            continue
        assert answer.status_code == 200, answer.text[:500]
        form = re.search(r'<form[^>]*action="([^"]+)"', answer.text)
        assert form is not None, answer.text[:500]
        names = re.findall(r'<input[^>]*name="([^"]+)"', answer.text)
        values = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', answer.text))
        data = {name: values.get(name, "") for name in names}
        if "login" in data:
            data.update(login=login, password="any password (development sign-in)")
        answer = client.post(urljoin(str(answer.url), form.group(1)), data=data)
    raise AssertionError("the provider never sent the browser back")
