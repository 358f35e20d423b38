"""The real ``git`` CLI behind a small interface: a bare mirror per sync, commit signatures
(SSH, checked against an allowed-signers file the server pins), ancestry, and file reads
at a commit. Nothing here decides what to accept; ``sync.py`` does."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import ConfigError, TransportError

GIT_TIMEOUT = 120.0
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    signature: str  # git's %G?: G good, U good (unknown trust), N none, B bad, E cannot check, ...
    signer: str  # the principal of the allowed-signers entry that matched, "" if none
    parents: tuple[str, ...]
    subject: str

    @property
    def signed_by_allowed(self) -> bool:
        return self.signature in ("G", "U") and bool(self.signer)


def git_binary() -> str:
    found = shutil.which("git")
    if found is None:
        raise ConfigError("GitOps needs the git command line (Debian: git)")
    return found


class GitMirror:
    """A bare clone of one remote branch, kept in the server's data directory."""

    def __init__(self, path: Path, url: str, branch: str) -> None:
        self.path, self.url, self.branch = path, url, branch

    def _git(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, **_ENV, "HOME": str(self.path.parent)}
        return subprocess.run([git_binary(), "--git-dir", str(self.path), *args], input=input,  # noqa: S603
                              capture_output=True, check=check, timeout=GIT_TIMEOUT, env=env)

    def fetch(self) -> str:
        """Fetch the branch; returns the commit it points to.

        Raises TransportError when the remote cannot be read.
        """
        try:
            if not (self.path / "HEAD").exists():
                self.path.mkdir(parents=True, exist_ok=True)
                self._git("init", "--bare", "--quiet")
            self._git("fetch", "--quiet", "--no-tags", "--force", self.url,
                      f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}")
            return self.rev(f"refs/remotes/origin/{self.branch}")
        except subprocess.CalledProcessError as exc:
            raise TransportError(f"git fetch {self.url} {self.branch} failed: "
                                 f"{exc.stderr.decode(errors='replace').strip()[-500:]}") from exc
        except subprocess.TimeoutExpired as exc:
            raise TransportError(f"git fetch {self.url} timed out") from exc

    def rev(self, ref: str) -> str:
        return self._git("rev-parse", "--verify", f"{ref}^{{commit}}").stdout.decode().strip()

    def has(self, sha: str) -> bool:
        return self._git("cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self._git("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0

    def commits(self, tip: str, since: str | None, allowed_signers: Path) -> list[CommitInfo]:
        """The commits reachable from ``tip`` and not from ``since``, oldest first, with
        their signature status checked against ``allowed_signers`` (SSH signatures)."""
        revs = [tip] if since is None else [f"{since}..{tip}"]
        out = self._git("-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={allowed_signers}",
                        "log", "--reverse", "--format=%H%x1f%G?%x1f%GS%x1f%P%x1f%s%x1e", *revs).stdout
        infos = []
        for record in out.decode(errors="replace").split("\x1e"):
            fields = record.strip("\n").split("\x1f")
            if len(fields) == 5:
                infos.append(CommitInfo(fields[0], fields[1], fields[2], tuple(fields[3].split()), fields[4]))
        return infos

    def changed(self, sha: str) -> list[str]:
        """Paths a commit changes (against each parent; everything for a root commit)."""
        out = self._git("diff-tree", "--root", "-m", "-r", "--no-commit-id", "--name-only", "-z", sha).stdout
        return sorted({p for p in out.decode(errors="replace").split("\0") if p})

    def files(self, sha: str, prefixes: Sequence[str]) -> dict[str, bytes]:
        """Every file under ``prefixes`` at commit ``sha``."""
        listing = self._git("ls-tree", "-r", "-z", "--full-tree", sha, "--", *prefixes).stdout
        entries = []
        for line in listing.decode(errors="replace").split("\0"):
            if not line:
                continue
            meta, _, path = line.partition("\t")
            mode, kind, obj = meta.split()
            if kind == "blob" and mode != "120000":  # symlinks are not followed
                entries.append((path, obj))
        if not entries:
            return {}
        batch = self._git("cat-file", "--batch", input="".join(f"{obj}\n" for _, obj in entries).encode()).stdout
        files, offset = {}, 0
        for path, _ in entries:
            header_end = batch.index(b"\n", offset)
            size = int(batch[offset:header_end].split()[2])
            files[path] = batch[header_end + 1:header_end + 1 + size]
            offset = header_end + 1 + size + 1
        return files
