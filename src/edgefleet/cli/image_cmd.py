"""``edgefleet image``: build a device's golden image from Debian packages, and record a
hardware model's firmware baseline from a golden device."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.common import shown_errors
from edgefleet.ui import console

app = typer.Typer(help="Golden images (erofs + dm-verity slots, UKI, systemd-boot) and their reference values.")


@app.command("build")
def build(
    spec: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Image spec (TOML).")],
    cache: Annotated[Path | None, typer.Option(
        envvar="EDGEFLEET_CACHE", help="Build cache (default ~/.cache/edgefleet); outputs are keyed on inputs.")]
    = None,
    out: Annotated[Path | None, typer.Option(help="Also copy the outputs into this directory.")] = None,
) -> None:
    """Build a device's disk, root slot and predicted reference values.

    The GPT disk holds the ESP (systemd-boot and the slot's UKI), root-a (erofs +
    dm-verity), an empty root-b and the data partition. Needs root (mmdebstrap) and
    Debian's mmdebstrap, erofs-utils, cryptsetup-bin, binutils, gdisk, dosfstools,
    mtools, e2fsprogs, cpio and kmod.
    """
    import shutil

    from edgefleet.image.build import MANIFEST, build_image
    from edgefleet.image.spec import load_spec

    with shown_errors():
        loaded, spec_dir = load_spec(spec)
        built = build_image(loaded, spec_dir, cache)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for path in sorted(built.directory.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    shutil.copyfile(path, out / path.name)
    manifest = json.loads((built.directory / MANIFEST).read_text())
    state = "from the cache" if built.cached else "built"
    console.print(f"image {manifest['name']} {manifest['version']} {state} in {built.seconds:.1f} s: "
                  f"{built.directory}")
    console.print(f"  disk {manifest['disk_bytes'] / (1 << 20):,.0f} MiB (sparse), root slot "
                  f"{(built.directory / 'root.erofs').stat().st_size / (1 << 20):,.0f} MiB, "
                  f"dm-verity root hash {manifest['verity']['root_hash']}")
    console.print("  reference values: reference-values.json (PCR 4, 5, 7, 9, 11, 12)")


@app.command("baseline")
def baseline(
    evidence: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=(
        "A golden device's evidence: the JSON line `python -m edgefleet.agent.evidence` prints "
        "(or `edgefleet tpm evidence`), or a raw binary_bios_measurements file."))],
    out: Annotated[Path, typer.Option(help="Where to write the reference values.")],
    pcrs: Annotated[str, typer.Option(help="The firmware PCRs to record, comma-separated.")] = "0,1,2,3,6",
) -> None:
    """Record a hardware model's firmware PCRs from a device known to be good.

    The server checks them event by event with `attestation_reference_files`.
    """
    from edgefleet.agent.evidence import PREFIX, find
    from edgefleet.attestation import eventlog, reference

    with shown_errors():
        raw = evidence.read_bytes()
        text = raw.decode(errors="replace")
        document = find(text) or find(PREFIX + text.strip())
        log_bytes = base64.b64decode(str(document["event_log"])) if document else raw
        try:
            wanted = [int(p) for p in pcrs.split(",")]
        except ValueError as exc:
            raise typer.BadParameter(f"--pcrs takes numbers, got {pcrs!r}") from exc
        recorded = reference.from_log(eventlog.parse(log_bytes), wanted)
        out.write_text(json.dumps(recorded.to_document(), indent=2) + "\n")
    console.print(f"{len(recorded.events)} events of PCR {', '.join(map(str, recorded.pcrs))} written to {out}")
