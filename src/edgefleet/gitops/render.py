"""The fleet repository's layout, and rendering it into each device's desired state.

    fleet.yaml                      fleet settings: self_heal, variables for templates
    groups/<group>.yaml             selector (matchLabels; "site" is a label too), release,
                                    priority, rollout, maintenance windows
    os/<group>/ignition.json        Ignition config (spec 3.x) for the group's next first boot
    os/<group>/cloud-init.yaml.j2   cloud-init user data, a Jinja2 template per device
    platform/<group>/*.yaml         Kubernetes manifests of platform components (root sync)
    apps/<group>/*.yaml             Kubernetes manifests of business workloads (application sync)
    apps/<group>/wasm.yaml          WASM modules: [{name, target}] naming signed release targets
    policies/*.yaml                 CEL policies (policy.py)

Everything is checked before anything is accepted: Ignition by the real
``ignition-validate``, cloud-init as YAML with ``#cloud-config``, Kubernetes objects for
apiVersion, kind and metadata.name, templates with undefined variables refused. Every error
names its file and, where known, its line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.errors import ConfigError, InvalidRequest
from edgefleet.protocol.desired import Maintenance
from edgefleet.protocol.v1 import RolloutPlan
from edgefleet.protocol.windows import MaintenancePolicy
from edgefleet.protocol.workloads import RENDERED_KINDS, MicroVmWorkload, NativeWorkload, WasmWorkload


@dataclass(frozen=True)
class SourceError:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}{f':{self.line}' if self.line else ''}: {self.message}"


class FleetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    self_heal: bool = False
    variables: dict[str, Any] = {}


class _Selector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    matchLabels: dict[str, str] = {}


class GroupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    selector: _Selector = _Selector()
    release: str | None = Field(None, max_length=128)
    priority: int = 0
    rollout: RolloutPlan | None = None  # how ``release`` moves through the group (one wave if absent)
    maintenance: dict[str, Any] = {}


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    site: str
    hostname: str
    labels: Mapping[str, str]

    def all_labels(self) -> dict[str, str]:
        return {**self.labels, "site": self.site}


@dataclass(frozen=True)
class RenderedObject:
    kind: str
    name: str
    group: str
    path: str
    body: dict[str, Any]

    def describe(self) -> str:
        return f"{self.kind}/{self.name} in group {self.group} ({self.path})"


@dataclass
class Rendering:
    groups: dict[str, GroupSpec] = field(default_factory=dict)
    fleet: FleetSpec = field(default_factory=FleetSpec)
    objects: list[RenderedObject] = field(default_factory=list)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)  # device id -> its config
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> its workload set
    errors: list[SourceError] = field(default_factory=list)


# libyaml's parser when PyYAML was built with it (the wheels are): 10x the pure-Python one.
YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAINTENANCE_KEY = re.compile(r"^maintenance\s*:")
_GROUP = re.compile(r"^groups/([a-z0-9][a-z0-9-]{0,62})\.ya?ml$")
_PER_GROUP = re.compile(r"^(os|platform|apps)/([a-z0-9][a-z0-9-]{0,62})/([^/]+)$")


def _yaml_error(path: str, exc: yaml.YAMLError) -> SourceError:
    mark = getattr(exc, "problem_mark", None)
    return SourceError(path, mark.line + 1 if mark is not None else None, f"YAML: {getattr(exc, 'problem', exc)}")


def _load_yaml(path: str, data: bytes, errors: list[SourceError]) -> Any:
    try:
        return yaml.load(data, Loader=YamlLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        errors.append(_yaml_error(path, exc))
        return None


def _model(model: type[BaseModel], path: str, value: Any, errors: list[SourceError]) -> Any:
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        errors.append(SourceError(path, None, f"{'.'.join(str(p) for p in first['loc']) or 'document'}: "
                                              f"{first['msg']}"))
        return None


def validate_ignition(path: str, data: bytes) -> list[SourceError]:
    """Ignition's own validator (Debian: ignition). Raises ConfigError when it is missing or
    did not run (a failed spawn or a timeout says nothing about the config)."""
    tool = shutil.which("ignition-validate")
    if tool is None:
        raise ConfigError("Ignition configs need ignition-validate (Debian package ignition) on the server")
    try:
        result = subprocess.run([tool, "-"], input=data, capture_output=True, timeout=30, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:  # the tool did not run: no verdict on the config
        raise ConfigError(f"ignition-validate did not run ({exc}); the sync is retried") from exc
    if result.returncode == 0:
        return []
    errors = []
    for line in (result.stdout + result.stderr).decode(errors="replace").splitlines():
        found = re.search(r"line (\d+) col \d+: (.*)$", line)
        if found:
            errors.append(SourceError(path, int(found.group(1)), f"Ignition: {line.split(', line')[0]}: "
                                                                 f"{found.group(2)}"))
        elif line.strip():
            errors.append(SourceError(path, None, f"Ignition: {line.strip()}"))
    return errors or [SourceError(path, None, "Ignition: invalid config")]


def _k8s_objects(path: str, group: str, data: bytes, errors: list[SourceError]) -> list[RenderedObject]:
    objects = []
    try:
        documents = list(yaml.load_all(data, Loader=YamlLoader))
    except yaml.YAMLError as exc:
        errors.append(_yaml_error(path, exc))
        return []
    for index, doc in enumerate(documents):
        if doc is None:
            continue
        where = f"document {index + 1}"
        if not isinstance(doc, dict):
            errors.append(SourceError(path, None, f"{where}: a Kubernetes object must be a mapping"))
            continue
        missing = [k for k in ("apiVersion", "kind") if not isinstance(doc.get(k), str) or not doc.get(k)]
        metadata = doc.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if not isinstance(name, str) or not name:
            missing.append("metadata.name")
        if missing or not isinstance(name, str):
            errors.append(SourceError(path, None, f"{where}: missing {', '.join(missing)}"))
            continue
        objects.append(RenderedObject(doc["kind"], name, group, path, doc))
    return objects


# The workload files of apps/<group>/: the key in ``config.workloads`` (the spec's kind)
# and the spec each entry is validated as. Policies and the device see the entry under its
# rendered kind (``protocol/workloads.RENDERED_KINDS``).
WORKLOAD_FILES: dict[str, tuple[str, type[WasmWorkload] | type[MicroVmWorkload] | type[NativeWorkload]]] = {
    "wasm.yaml": ("wasm", WasmWorkload),
    "microvm.yaml": ("microvm", MicroVmWorkload),
    "services.yaml": ("native", NativeWorkload),
}
_RENDERED_KIND = {spec: rendered for rendered, spec in RENDERED_KINDS.items()}


def _workload_objects(path: str, group: str, data: bytes, errors: list[SourceError]) -> list[RenderedObject]:
    key, model = WORKLOAD_FILES[path.rsplit("/", 1)[-1]]
    kind = _RENDERED_KIND[key]
    value = _load_yaml(path, data, errors)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        errors.append(SourceError(path, None, f"{key}.yaml is a list of workload objects (name, ...)"))
        return []
    objects = []
    for n, entry in enumerate(value):
        # Each entry is a workload as the device will run it (protocol/workloads.py).
        spec = _model(model, f"{path} [{n}]", {**entry, "kind": key}, errors)
        if spec is not None:
            body = spec.model_dump(mode="json", exclude_defaults=True)
            objects.append(RenderedObject(kind, spec.name, group, path, {**body, "kind": kind}))
    return objects


def _template_line(exc: BaseException, name: str) -> int | None:
    line = getattr(exc, "lineno", None)
    if line:
        return int(line)
    tb = exc.__traceback__
    found = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            found = tb.tb_lineno
        tb = tb.tb_next
    return found


class _Loader(jinja2.BaseLoader):
    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = files

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        if template not in self.files:
            raise jinja2.TemplateNotFound(template)
        return self.files[template].decode(), template, lambda: True


def select_group(device: DeviceInfo, groups: Mapping[str, GroupSpec]) -> str | None:
    """The matching group with the highest priority (then the first by name), or None."""
    labels = device.all_labels()
    matching = [(-spec.priority, name) for name, spec in groups.items()
                if all(labels.get(k) == v for k, v in spec.selector.matchLabels.items())]
    return min(matching)[1] if matching else None


def parse_groups(files: Mapping[str, bytes], errors: list[SourceError]) -> dict[str, GroupSpec]:
    """``groups/<group>.yaml`` of the repository's files, by group name."""
    groups = {}
    for path, data in sorted(files.items()):
        if (found := _GROUP.match(path)) is not None:
            spec = _model(GroupSpec, path, _load_yaml(path, data, errors), errors)
            if spec is not None and _windows_valid(path, data, spec, errors):
                groups[found.group(1)] = spec
    return groups


def _windows_valid(path: str, data: bytes, spec: GroupSpec, errors: list[SourceError]) -> bool:
    """A group's maintenance windows are checked here, at sync (time zone, cron, duration),
    not first on a device, which could only ignore them."""
    try:
        MaintenancePolicy.parse(spec.maintenance)  # what it means (zone, cron, duration)
        Maintenance.model_validate(spec.maintenance)  # and the shape a device is sent (no other keys)
    except (ValidationError, InvalidRequest) as exc:
        reason = exc.message if isinstance(exc, InvalidRequest) else "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        line = next((n for n, text in enumerate(data.decode(errors="replace").splitlines(), 1)
                     if _MAINTENANCE_KEY.match(text)), None)
        errors.append(SourceError(path, line, f"maintenance: {reason}"))
        return False
    return True


def render(files: Mapping[str, bytes], devices: Sequence[DeviceInfo]) -> Rendering:
    """Parse, validate and render; ``errors`` lists every problem found, and a rendering
    with errors must not be applied."""
    out = Rendering()
    errors = out.errors
    if "fleet.yaml" in files:
        fleet = _model(FleetSpec, "fleet.yaml", _load_yaml("fleet.yaml", files["fleet.yaml"], errors), errors)
        out.fleet = fleet or FleetSpec()
    out.groups = parse_groups(files, errors)
    per_group: dict[str, dict[str, dict[str, bytes]]] = {}
    for path, data in sorted(files.items()):
        if (part := _PER_GROUP.match(path)) is not None:
            per_group.setdefault(part.group(2), {}).setdefault(part.group(1), {})[part.group(3)] = data
    for name in sorted(set(per_group) - set(out.groups)):
        errors.append(SourceError(f"os|platform|apps/{name}/", None, f"no group {name} in groups/"))
    environment = jinja2.Environment(loader=_Loader(files), undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - YAML, not HTML
    group_configs: dict[str, dict[str, Any]] = {}
    templates: dict[str, jinja2.Template] = {}
    for name, spec in out.groups.items():
        parts = per_group.get(name, {})
        config: dict[str, Any] = {"group": name, "release": spec.release, "maintenance": spec.maintenance,
                                  "os": {}, "workloads": {"manifests": [], "wasm": [], "microvm": [],
                                                                             "native": []}}
        os_files = parts.get("os", {})
        if "ignition.json" in os_files:
            path = f"os/{name}/ignition.json"
            try:
                ignition = json.loads(os_files["ignition.json"])
            except ValueError as exc:
                errors.append(SourceError(path, getattr(exc, "lineno", None), f"JSON: {exc}"))
            else:
                errors.extend(validate_ignition(path, os_files["ignition.json"]))
                config["os"]["ignition"] = ignition
                out.objects.append(RenderedObject("Ignition", name, name, path, {"kind": "Ignition", **ignition}))
        if "cloud-init.yaml.j2" in os_files:
            path = f"os/{name}/cloud-init.yaml.j2"
            try:
                templates[name] = environment.get_template(path)
            except jinja2.TemplateSyntaxError as exc:
                errors.append(SourceError(path, exc.lineno, f"template: {exc.message}"))
        for kind in ("platform", "apps"):
            for file_name, data in sorted(parts.get(kind, {}).items()):
                path = f"{kind}/{name}/{file_name}"
                if kind == "apps" and file_name in WORKLOAD_FILES:
                    workloads = _workload_objects(path, name, data, errors)
                    out.objects.extend(workloads)
                    config["workloads"][WORKLOAD_FILES[file_name][0]] += [o.body for o in workloads]
                elif file_name.endswith((".yaml", ".yml")):
                    manifests = _k8s_objects(path, name, data, errors)
                    out.objects.extend(manifests)
                    config["workloads"]["manifests"] += [o.body for o in manifests]
        group_configs[name] = config
        out.workloads[name] = config["workloads"]
    for device in devices:
        group = select_group(device, out.groups)
        if group is None:
            continue
        document = dict(group_configs[group])
        if group in templates:
            path = f"os/{group}/cloud-init.yaml.j2"
            variables = {**out.fleet.variables, "device_id": device.id, "site": device.site,
                         "hostname": device.hostname, "labels": dict(device.labels), "group": group}
            try:
                text = templates[group].render(variables)
            except jinja2.TemplateError as exc:
                errors.append(SourceError(path, _template_line(exc, path), f"template for {device.id}: {exc}"))
                continue
            if not text.startswith("#cloud-config"):
                errors.append(SourceError(path, 1, "cloud-init user data must start with #cloud-config"))
                continue
            try:
                parsed = yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a safe loader
            except yaml.YAMLError as exc:
                errors.append(_yaml_error(f"{path} (rendered for {device.id})", exc))
                continue
            if not isinstance(parsed, dict):
                errors.append(SourceError(path, None, "cloud-config must be a mapping"))
                continue
            document["os"] = {**document["os"], "cloud_init": text}
            out.objects.append(RenderedObject("CloudConfig", device.id, group, path, {"kind": "CloudConfig",
                                                                                      **parsed}))
        out.documents[device.id] = document
    return out
