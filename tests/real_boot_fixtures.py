"""The real-boot session fixtures: one golden image, one golden boot and one attesting
control plane serve every module that boots VMs (each boot costs 30-60 s under TCG).
Registered by conftest.py. They reach tests/real_boot.py through its module object, so
that importing that module first (the benches do) does not trip over this one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.image.build import BuiltImage, build_image
from edgefleet.image.spec import load_spec
from edgefleet.vm import Machine, MachineConfig
from tests import real_boot
from tests.conftest import Fleet


@pytest.fixture(scope="session")
def real_spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    real_boot.real_boot_or_skip()
    path = tmp_path_factory.mktemp("spec") / "edge.toml"
    path.write_text(real_boot.GOLDEN_SPEC)
    return path


@pytest.fixture(scope="session")
def real_image(real_spec_file: Path) -> BuiltImage:
    spec, spec_dir = load_spec(real_spec_file)
    return build_image(spec, spec_dir)


@pytest.fixture(scope="session")
def real_golden(real_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], str]:
    """One boot with the evidence printed: (evidence, console). The VM stops once it has
    printed it (a running VM would hold a core for the rest of the run)."""
    directory = tmp_path_factory.mktemp("vm-golden")
    config = MachineConfig(disk=real_image.disk, directory=directory,
                           fw_cfg={"opt/io.edgefleet/print-evidence": b"1"})
    with Machine(config) as machine:
        return real_boot.wait_for_evidence(machine), machine.console_text()


@pytest.fixture(scope="session")
def real_plane(real_golden: tuple[dict[str, object], str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = real_boot.attesting_plane(real_boot.booted_log(real_golden[0]), tmp_path_factory.mktemp("vm-plane"))
    yield fleet
    fleet.close()


@pytest.fixture(scope="session")
def real_releases(real_plane: Fleet, tmp_path_factory: pytest.TempPathFactory) -> real_boot.Releases:
    """The plane's one release workspace (a second one would bring a second TUF root)."""
    return real_boot.Releases(real_plane, tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="module")
def module_plane(real_golden: tuple[dict[str, object], str],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, real_boot.Releases]]:
    """A control plane and release workspace of the module's own: release counters only
    grow within a workspace, so a module that publishes its own releases does not depend
    on which modules ran before it, or on which worker."""
    fleet = real_boot.attesting_plane(real_boot.booted_log(real_golden[0]), tmp_path_factory.mktemp("module-plane"))
    try:
        yield fleet, real_boot.Releases(fleet, tmp_path_factory.mktemp("module-releases"))
    finally:
        fleet.close()
