"""``edgefleet keys`` and ``edgefleet release``: the release owners' offline tools."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgefleet.attestation import reference
from edgefleet.cli.common import AdminToken, CaFile, ServerUrl, shown_errors
from edgefleet.client import AdminClient
from edgefleet.clock import SystemClock
from edgefleet.errors import ConfigError
from edgefleet.releases.deltas import sizes
from edgefleet.releases.image import ReleaseInfo, release_fields
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.ui import console

keys_app = typer.Typer(help="Offline signing keys of the release owners (root, targets).")
release_app = typer.Typer(help="Signed releases: create, sign (threshold), publish, list.")

KeysDir = Annotated[Path, typer.Option("--keys-dir", envvar="EDGEFLEET_KEYS_DIR",
                                       help="Offline key directory (keep it off the server).")]
WorkspaceDir = Annotated[Path, typer.Option("--workspace", "-w", envvar="EDGEFLEET_RELEASE_WORKSPACE",
                                            help="Release workspace (signed metadata and artifacts).")]
PassphraseEnv = Annotated[str | None, typer.Option(
    help="Name of an environment variable holding the key passphrase (never pass it as an argument).")]


def _passphrase(variable: str | None) -> bytes | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"environment variable {variable} is not set")
    return value.encode()


@keys_app.command("init")
def keys_init(
    keys_dir: KeysDir,
    workspace: WorkspaceDir,
    online_keys: Annotated[Path, typer.Option(help="The server's <data-dir>/keys/online-keys.json.")],
    root_keys: Annotated[int, typer.Option(min=1, max=15)] = 3,
    root_threshold: Annotated[int, typer.Option(min=1, max=15)] = 2,
    targets_keys: Annotated[int, typer.Option(min=1, max=15)] = 1,
    targets_threshold: Annotated[int, typer.Option(min=1, max=15)] = 1,
    passphrase_env: PassphraseEnv = None,
) -> None:
    """Generate root and targets keys and sign version 1 of the image and director roots."""
    with shown_errors():
        Workspace(workspace).init(
            Keystore(keys_dir), load_online_keys(online_keys), SystemClock().now(), root_keys=root_keys,
            root_threshold=root_threshold, targets_keys=targets_keys, targets_threshold=targets_threshold,
            passphrase=_passphrase(passphrase_env),
        )
    console.print(f"keys in {keys_dir} ({root_threshold}-of-{root_keys} root, "
                  f"{targets_threshold}-of-{targets_keys} targets); workspace {workspace}")
    console.print("move the private root keys to separate offline media now")


@keys_app.command("ls")
def keys_ls(keys_dir: KeysDir) -> None:
    """Key names and key ids."""
    store = Keystore(keys_dir)
    with shown_errors():
        for name in store.names():
            console.print(f"{name:24} {store.public_key(name).keyid}")


@keys_app.command("rotate")
def keys_rotate(
    keys_dir: KeysDir,
    workspace: WorkspaceDir,
    role: Annotated[str, typer.Option(help="root, targets, or an online role: snapshot, timestamp, director.")],
    new_key: Annotated[list[str] | None, typer.Option(
        help="Offline roles: name of a key for the role (repeat; generated if new).")] = None,
    online_keys: Annotated[Path | None, typer.Option(
        help="Online roles: the server's online-keys.json after `edgefleet server rotate-key`.")] = None,
    threshold: Annotated[int, typer.Option(min=1)] = 1,
    sign_with: Annotated[list[str] | None, typer.Option(
        help="Root key(s) to sign the new root with (old threshold, plus new keys for a root rotation).")] = None,
    passphrase_env: PassphraseEnv = None,
) -> None:
    """Replace the keys of a role with a new root version signed by old and new root keys;
    publish it to hand it to the server and the devices."""
    with shown_errors():
        store = Keystore(keys_dir)
        passphrase = _passphrase(passphrase_env)
        if role in ("snapshot", "timestamp", "director"):
            if online_keys is None:
                raise typer.BadParameter("online roles take the server's key: --online-keys")
            keys = [load_online_keys(online_keys)[role]]
        else:
            if not new_key:
                raise typer.BadParameter("offline roles take --new-key")
            keys = [store.public_key(n) if (keys_dir / f"{n}.pub").exists() else store.generate(n, passphrase)
                    for n in new_key]
        signers = [store.signer(n, passphrase) for n in sign_with or []]
        version = Workspace(workspace).rotate(role, keys, threshold, signers, SystemClock().now())
    console.print(f"root version {version}: {role} is now {threshold}-of-{len(keys)}; publish to hand it to devices")


class Chunking(StrEnum):
    auto = "auto"
    blocks = "blocks"
    cdc = "cdc"


@release_app.command("create")
def release_create(
    workspace: WorkspaceDir,
    version: Annotated[str, typer.Option(help="Release version, e.g. 2026.11.1.")],
    image: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="OS image file (raw, squashfs, erofs).")],
    counter: Annotated[int, typer.Option(min=0, help="Release counter; never lower than an earlier release's.")],
    hardware_id: Annotated[list[str], typer.Option(help="Hardware id the image fits (repeat).")],
    measurement: Annotated[list[str] | None, typer.Option(
        help="Reference PCR value after booting it, PCR=sha256hex (repeat).")] = None,
    artifact: Annotated[list[Path] | None, typer.Option(exists=True, dir_okay=False,
                                                        help="Extra artifact (WASM module, bundle).")] = None,
    reference_values: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="The image's predicted reference values (reference-values.json from `edgefleet image build`); "
             "signed with the release, checked event by event at every quote.")] = None,
    deltas: Annotated[int, typer.Option(min=0, help="Build known-base deltas from this many earlier releases.")] = 2,
    index: Annotated[bool, typer.Option(help="Build the content index and pieces (any-base updates).")] = True,
    chunking: Annotated[Chunking, typer.Option(
        help="How the index cuts the image: 4 KiB blocks (block-aligned images), content-defined chunks, "
             "or auto (blocks for erofs).")] = Chunking.auto,
    dictionary: Annotated[bool, typer.Option(
        help="Compress pieces with the workspace's zstd dictionary (trained on the first release).")] = True,
    sbom: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="The image's SBOM (sbom.cdx.json from `edgefleet image build`, or any CycloneDX 1.4-1.6 JSON): "
             "signed and published beside the image; vulnerability findings read it.")] = None,
) -> None:
    """Stream the image once, record its length, hashes and custom fields as a new,
    unsigned targets version (sign it with `edgefleet release sign`), with its content
    index and deltas from the last releases."""
    measurements = {}
    for item in measurement or []:
        pcr, sep, value = item.partition("=")
        if not sep or not pcr.isdigit() or len(value) != 64:
            raise typer.BadParameter(f"measurements are PCR=<64 hex digits>, got {item!r}")
        measurements[pcr] = value.lower()
    with shown_errors():
        document = None
        if reference_values is not None:
            predicted = reference.loads(reference_values.read_bytes())  # refuses a malformed document
            document = predicted.to_document()
            typed = sorted(set(measurements) & {str(pcr) for pcr in predicted.pcrs})
            if typed:
                raise typer.BadParameter(f"PCR {', '.join(typed)} come from --reference-values; do not type them")
            measurements |= {str(pcr): v.hex() for pcr, v in predicted.values().items()}
        targets = Workspace(workspace).create_release(
            image, ReleaseInfo(version, counter, tuple(hardware_id), measurements, document), SystemClock().now(),
            artifact,
            deltas=deltas, index=index, chunking=None if chunking is Chunking.auto else chunking.value,
            dictionary=dictionary, sbom=sbom,
        )
    made = sizes(targets.signed.targets.values()).get(f"os/{version}/{image.name}", {})
    console.print(f"release {version} added as targets version {targets.signed.version} (unsigned)")
    if "index_bytes" in made:
        console.print(f"  content index {made['index_bytes']:,} bytes; pieces {made['pieces_bytes']:,} bytes")
    for base, length in made.get("deltas", {}).items():
        console.print(f"  delta from {base}: {length:,} bytes")


@release_app.command("sign")
def release_sign(
    workspace: WorkspaceDir,
    keys_dir: KeysDir,
    key: Annotated[str, typer.Option(help="Targets key to sign with, e.g. targets-1.")],
    passphrase_env: PassphraseEnv = None,
) -> None:
    """Add one release owner's signature to the pending targets."""
    with shown_errors():
        signed, threshold = Workspace(workspace).sign_targets(Keystore(keys_dir).signer(key, _passphrase(
            passphrase_env)))
    state = "ready to publish" if signed >= threshold else "needs more signatures"
    console.print(f"targets signed by {signed} of {threshold} required keys: {state}")


@release_app.command("publish")
def release_publish(workspace: WorkspaceDir, server: ServerUrl, token: AdminToken, ca_file: CaFile) -> None:
    """Upload roots, new artifacts and the signed targets; the server verifies before serving."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = publish_workspace(Workspace(workspace), client)
    console.print(f"published: snapshot version {result.snapshot_version}, {result.uploaded} artifacts uploaded, "
                  f"{result.skipped} already there, {result.pieces} pieces uploaded")


def assign(
    release: Annotated[str, typer.Option(help="Published release version.")],
    server: ServerUrl,
    token: AdminToken,
    ca_file: CaFile,
    device: Annotated[list[str] | None, typer.Argument(help="Device id(s).", show_default=False)] = None,
    site: Annotated[str | None, typer.Option(help="Every device of this site.")] = None,
    force_reboot: Annotated[bool, typer.Option(help="Install and reboot now, outside maintenance windows.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Try again where this release failed before.")] = False,
) -> None:
    """Point devices' director at a release; each device verifies it through TUF, then
    downloads, installs into its inactive slot and reboots in its maintenance windows
    (the rollout controller will do this in waves)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        targets = list(device or [])
        if site:
            targets += [d.id for d in client.devices(site=site).devices]
        if not targets:
            raise typer.BadParameter("name devices or --site")
        for device_id in targets:
            result = client.assign(device_id, release, force_reboot=force_reboot, retry_failed=retry_failed)
            console.print(f"{device_id}: release {release} (director version {result.director_version})")


@release_app.command("ls")
def release_ls(workspace: WorkspaceDir) -> None:
    """Releases in the workspace, highest counter first."""
    with shown_errors():
        releases = Workspace(workspace).releases()
    table = Table(title="releases")
    for column in ("version", "counter", "hardware ids", "bytes", "index + pieces", "deltas (from: bytes)", "sha256"):
        table.add_column(column, no_wrap=True)
    extra = sizes(releases)
    for target in releases:
        fields = release_fields(target)
        if fields.get("kind") != "os-image":
            continue
        hardware = fields.get("hardware_ids", [])
        made = extra.get(target.path, {})
        table.add_row(str(fields.get("version")), str(fields.get("release_counter")),
                      ", ".join(hardware) if isinstance(hardware, list) else "", f"{target.length:,}",
                      f"{made['index_bytes']:,} + {made['pieces_bytes']:,}" if "index_bytes" in made else "-",
                      ", ".join(f"{b}: {n:,}" for b, n in made.get("deltas", {}).items()) or "-",
                      target.hashes["sha256"][:16])
    console.print(table)
