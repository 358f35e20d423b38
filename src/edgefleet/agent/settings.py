"""Agent settings (``EDGEFLEET_AGENT_*`` environment variables, TOML file, flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.protocol.v1 import DeviceLabels


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_AGENT_", extra="forbid")

    server_url: str = Field(description="control plane base URL, e.g. https://fleet.example:8443")
    ca_file: Path = Field(description="fleet CA certificate that the server's TLS cert must chain to")
    state_dir: Path = Path("/var/lib/edgefleet-agent")
    device_dir: Path | None = Field(None, description="emulated device (vdevice) directory; unset = this host")
    bootstrap_token: str | None = None
    bootstrap_token_file: Path | None = None
    site: str | None = Field(None, description="site this device stands in (default: the vdevice's)")
    labels: DeviceLabels = Field({}, description="what the device says of itself: kept as device.<key>, never selects")
    checkin_interval_seconds: float = Field(30.0, gt=0)
    long_poll_seconds: float = Field(0.0, ge=0, le=900)
    status_interval_seconds: float = Field(300.0, gt=0)
    backoff_initial_seconds: float = Field(1.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    request_timeout_seconds: float = Field(30.0, gt=0)
    hardware_type: str | None = Field(None, description="default: the platform's (DMI product name)")
    trust_dir: Path | None = Field(None, description="TUF roots shipped in the image; default per platform")
    mirrors: list[str] = Field([], description="image repository base URLs; default <server_url>/repository")
    update_check_seconds: float = Field(300.0, gt=0, description="verify the director's assignment this often")
    tpm: str | None = Field(None, description="TCTI of the TPM, e.g. device:/dev/tpmrm0; unset: no attestation")
    attestation_interval_seconds: float = Field(3600.0, gt=0, description="attest at boot and this often")
    ek_certificate_file: Path | None = Field(None, description="EK certificate, if not in the TPM's NV index")
    event_log: Path | None = Field(None, description="the boot's TCG event log; default per platform "
                                   "(/sys/kernel/security/tpm0/binary_bios_measurements)")
    certificate_renew_before_seconds: float | None = Field(
        None, gt=0, description="renew the device certificate when less than this is left; default a third of its "
        "lifetime")
    slot_a: Path | None = Field(None, description="block device of root slot A, e.g. /dev/disk/by-partlabel/root-a")
    slot_b: Path | None = Field(None, description="block device of root slot B")
    bootloader: Literal["systemd-boot", "grub", "uboot"] = Field(
        "systemd-boot", description="what keeps the A/B try counter: systemd-boot's boot counting (an edgefleet "
                                    "image), a GRUB env block or a U-Boot env read by your own boot script")
    esp: Path = Field(Path("/efi"), description="the mounted EFI system partition (bootloader=systemd-boot)")
    grubenv: Path = Field(Path("/boot/grub/grubenv"), description="GRUB environment block (bootloader=grub)")
    fw_env_config: Path = Field(Path("/etc/fw_env.config"), description="U-Boot env location (bootloader=uboot)")
    health_checks: list[dict[str, Any]] = Field([], description="checks besides the image's own (trial and steady)")
    remote_access_policy: Path | None = Field(
        Path("/etc/edgefleet/remote-access.json"),
        description="the site's policy for remote sessions, in the image: e.g. {\"shell\": false}; none: all allowed")
    health_dir: Path | None = Field(None, description="health.d with required.d/ and wanted.d/ (executables or unit "
                                                      "names); default /etc/edgefleet/health.d on a real host")
    health_units: list[str] = Field([], description="systemd units that must be active for the device to be healthy")
    health_interval_seconds: float = Field(60.0, gt=0, description="evaluate the device's health this often")
    os_config_dir: Path | None = Field(None, description="where rendered OS config goes; default per platform")
    telemetry_max_bytes: int = Field(64 << 20, ge=1 << 16, description="the durable telemetry buffer's bound")
    telemetry_batch_seconds: float = Field(10.0, gt=0, description="a partial telemetry batch waits this long")
    telemetry_url: str | None = Field(None, description="the site's regional hub (edgefleet hub); unset: the server")
    telemetry_ca_file: Path | None = Field(None, description="CA the hub's TLS certificate chains to; unset: fleet CA")
    metrics_file: Path | None = Field(
        None, description="the agent's own figures as Prometheus text (node_exporter textfile collector), rewritten "
                          "with each status report")
    local_ui: str | None = Field(None, description="serve the technician's page here, e.g. 0.0.0.0:8088")
    local_ui_token_file: Path | None = Field(None, description="the technician's credential (required with local_ui)")
    kubernetes: Literal["off", "kubectl", "git"] = Field(
        "off", description="the group's Kubernetes manifests: server-side apply with kubectl, or commits for Argo/Flux")
    kubeconfig: Path | None = Field(None, description="the device cluster's kubeconfig (kubernetes=kubectl)")
    kubernetes_git_dir: Path | None = Field(None, description="the local repository Argo CD / Flux watch (=git)")
    kubernetes_resync_seconds: float = Field(300.0, gt=0, description="apply again this often (undoes drift)")
    trial_deadline_seconds: float = Field(900.0, gt=0, description="a trial boot not committed by then rolls back")
