"""Real git repositories with real SSH commit signatures (ssh-keygen keys) for GitOps tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.conftest import need


def tools() -> None:
    for tool, package in (("git", "git"), ("ssh-keygen", "openssh-client"), ("ignition-validate", "ignition")):
        if shutil.which(tool) is None:
            need(tool, f"package {package} is not installed")


class FleetRepo:
    """A working repository that plays the remote; people sign with their own keys."""

    def __init__(self, root: Path) -> None:
        tools()
        self.root = root
        self.path = root / "fleet"
        self.keys = root / "keys"
        self.keys.mkdir(parents=True)
        for person in ("alice", "bob", "mallory"):  # platform team, app team, nobody we trust
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", person, "-f",
                            str(self.keys / person)], check=True)
        self.git("init", "-q", "-b", "main", str(self.path), cwd=root)
        self.git("config", "user.name", "fleet")
        self.git("config", "user.email", "fleet@example.invalid")
        self.git("config", "gpg.format", "ssh")

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return subprocess.run(["git", *args], cwd=cwd or self.path, check=True, capture_output=True,
                              text=True).stdout.strip()

    def allowed_signers(self, *people: str) -> Path:
        """What the server pins: principal, namespaces and public key per line."""
        path = self.root / f"allowed-{'-'.join(people)}"
        path.write_text("".join(f'{p}@example.invalid namespaces="git" {(self.keys / f"{p}.pub").read_text()}'
                                for p in people))
        return path

    def commit(self, files: Mapping[str, str | None], message: str, *, signer: str | None) -> str:
        """Write (or, with None, delete) files and commit, signed by ``signer``'s key."""
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        self.git("add", "-A")
        sign = (["-c", f"user.signingkey={self.keys / signer}", "commit", "-S"] if signer
                else ["commit", "--no-gpg-sign"])
        self.git(*sign, "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def force_reset(self, sha: str) -> None:
        """What a force push does to the remote branch."""
        self.git("reset", "-q", "--hard", sha)

    def commit_app(self, files: Mapping[str, str | None], message: str) -> str:
        """A commit of the application team (bob) on its own branch, ``apps``."""
        self.git("checkout", "-q", "apps")
        try:
            return self.commit(files, message, signer="bob")
        finally:
            self.git("checkout", "-q", "main")

    def with_apps(self, root: Mapping[str, str], apps: Mapping[str, str]) -> None:
        """The platform team's ``root`` files on main (alice), the app team's on ``apps``."""
        self.commit(root, "fleet", signer="alice")
        self.git("branch", "apps")
        self.commit_app(apps, "apps")

    def syncs(self) -> list[dict[str, Any]]:
        """The server's syncs of ``with_apps``: root on main, app on apps."""
        return [{"name": "platform", "kind": "root", "url": str(self.path), "branch": "main",
                 "allowed_signers": str(self.allowed_signers("alice"))},
                {"name": "apps", "kind": "app", "url": str(self.path), "branch": "apps",
                 "allowed_signers": str(self.allowed_signers("bob"))}]
