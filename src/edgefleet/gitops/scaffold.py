"""``edgefleet repo init``: a fleet repository with working examples of every part."""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgefleet.errors import ConfigError
from edgefleet.gitops.git import git_binary

FILES: dict[str, str] = {
    "README.md": """# Fleet repository

Synced by the edgefleet control plane. Every commit must be signed (SSH or, with a
keyring, GPG) by a key the server pins for the sync that owns the paths it changes:

| path | owner (sync) | what |
|---|---|---|
| `fleet.yaml` | root | fleet settings: `self_heal`, template `variables` |
| `groups/<group>.yaml` | root | label selector, target release, rollout, maintenance windows |
| `os/<group>/ignition.json` | root | Ignition config (spec 3.3) for the next first boot of a new slot |
| `os/<group>/cloud-init.yaml.j2` | root | cloud-init user data, a Jinja2 template per device |
| `platform/<group>/*.yaml` | root | Kubernetes manifests of platform components |
| `policies/*.yaml` | root | CEL policies every rendered object must pass |
| `apps/<group>/*.yaml` | app | Kubernetes manifests of business workloads |
| `apps/<group>/wasm.yaml` | app | WASM modules: `[{name, target}]`, each a signed release target |
| `apps/<group>/microvm.yaml` | app | microVMs: `[{name, kernel, initrd}]`, signed release targets |
| `apps/<group>/services.yaml` | app | native services: `[{name, target or command}]` |

Template variables: `device_id`, `hostname`, `site`, `labels`, `group`, and `fleet.yaml`'s
`variables`. A device belongs to the matching group with the highest `priority`; `site` is
matched like a label.
""",
    "fleet.yaml": """# Fleet-wide settings (root sync).
self_heal: true          # re-apply desired config when a device drifts
variables:
  ntp_servers: [time1.example.net, time2.example.net]
""",
    "groups/stores.yaml": """# Every device in a retail store.
selector:
  matchLabels:
    role: store
release: "2026.12.0"
priority: 10
rollout:
  waves: [{size: 1}, {size: 10%}, {size: 100%}]
maintenance:
  download: []           # any time
  install:
    - {cron: "30 2 * * *", timezone: "Europe/Berlin", duration_minutes: 120}
""",
    "os/stores/ignition.json": """{
  "ignition": {"version": "3.3.0"},
  "storage": {
    "files": [
      {"path": "/etc/edgefleet/role", "mode": 420, "overwrite": true,
       "contents": {"source": "data:,store%0A"}}
    ]
  },
  "systemd": {"units": [{"name": "edgefleet-agent.service", "enabled": true}]}
}
""",
    "os/stores/cloud-init.yaml.j2": """#cloud-config
hostname: {{ hostname }}
ntp:
  enabled: true
  servers: {{ ntp_servers | tojson }}
write_files:
  - path: /etc/edgefleet/site
    content: "{{ site }}"
""",
    "platform/stores/node-exporter.yaml": """apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-exporter
  namespace: monitoring
spec:
  selector: {matchLabels: {app: node-exporter}}
  template:
    metadata: {labels: {app: node-exporter}}
    spec:
      containers:
      - name: node-exporter
        image: quay.io/prometheus/node-exporter@sha256:4cb2b9019f1757be8482419002cb7afe028fdba35d47958829e4cfeaf6246d80
""",
    "apps/stores/pos.yaml": """apiVersion: apps/v1
kind: Deployment
metadata:
  name: point-of-sale
  labels: {team: retail}
spec:
  replicas: 1
  selector: {matchLabels: {app: pos}}
  template:
    metadata: {labels: {app: pos}}
    spec:
      containers:
      - name: pos
        image: registry.example.com/retail/pos@sha256:0d5e0bd7a2b5a1c1ba8c3c6c1e0a2f4b1f9a8e7d6c5b4a39281706f5e4d3c2b1
        securityContext: {privileged: false, runAsNonRoot: true}
""",
    "apps/stores/wasm.yaml": """# WASM modules of this group, each a target of a signed release, e.g.
# - {name: price-rules, target: wasm/price-rules-1.4.0.wasm}
[]
""",
    "apps/stores/microvm.yaml": """# microVMs of this group (QEMU microvm): kernel and initramfs are targets
# of a signed release, e.g.
# - {name: edge-vm, kernel: artifacts/2026.12.0/vmlinuz, initrd: artifacts/2026.12.0/initrd.gz,
#    vcpus: 1, memory_mib: 128}
[]
""",
    "policies/images-pinned.yaml": """name: images-pinned-by-digest
match: {kinds: [Pod, Deployment, DaemonSet, StatefulSet]}
expression: >-
  (object.kind == 'Pod' ? object.spec.containers : object.spec.template.spec.containers)
  .all(c, c.image.contains('@sha256:'))
message: container images must be pinned by digest
""",
    "policies/no-privileged.yaml": """name: no-privileged-containers
match: {kinds: [Pod, Deployment, DaemonSet, StatefulSet]}
expression: >-
  (object.kind == 'Pod' ? object.spec.containers : object.spec.template.spec.containers)
  .all(c, !has(c.securityContext) || !has(c.securityContext.privileged) || !c.securityContext.privileged)
message: privileged containers are not allowed
""",
    "policies/wasm-signed.yaml": """name: wasm-modules-are-signed-targets
match: {kinds: [WasmModule]}
expression: "object.target in targets"
message: WASM modules must be targets of a signed release
""",
    "policies/microvm-signed.yaml": """name: microvms-are-signed-targets
match: {kinds: [MicroVM]}
expression: "object.kernel in targets && object.initrd in targets"
message: a microVM's kernel and initramfs must be targets of a signed release
""",
}


def init_repository(directory: Path) -> list[str]:
    """Write the example repository and ``git init`` it; returns the files written.

    Raises ConfigError when ``directory`` exists and is not empty.
    """
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} exists and is not empty")
    for path, content in FILES.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    try:
        subprocess.run([git_binary(), "init", "-q", "-b", "main", str(directory)], check=True,  # noqa: S603
                       capture_output=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"git init failed: {exc.stderr.decode(errors='replace').strip()}") from exc
    return sorted(FILES)
