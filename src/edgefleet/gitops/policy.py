"""The policy gate: CEL expressions (the language of Kubernetes ValidatingAdmissionPolicy
and of Kyverno's newer policies) evaluated over every rendered object.

    policies/pinned-images.yaml
      name: images-pinned-by-digest
      match: {kinds: [Deployment, Pod]}        # optional; all objects when absent
      expression: "object.spec.template.spec.containers.all(c, c.image.contains('@sha256:'))"
      message: container images must be pinned by digest

Variables: ``object`` (the rendered object), ``group`` (its group's name) and ``targets``
(paths of the signed release targets, for "WASM modules must be signed release targets").
An expression that is false, or that fails (e.g. a missing field), is a violation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cel
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.gitops.render import RenderedObject, SourceError, YamlLoader


class _Match(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kinds: list[str] = []


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    expression: str = Field(min_length=1, max_length=4096)
    message: str = Field(min_length=1, max_length=500)
    match: _Match = _Match()


@dataclass(frozen=True)
class Policy:
    spec: PolicySpec
    source: str
    program: Any  # cel.Program

    def applies(self, obj: RenderedObject) -> bool:
        return not self.spec.match.kinds or obj.kind in self.spec.match.kinds


@dataclass(frozen=True)
class Violation:
    policy: str
    message: str
    object: str  # kind/name in group, and where it came from

    def __str__(self) -> str:
        return f"{self.policy}: {self.object}: {self.message}"


def load_policies(files: Mapping[str, bytes]) -> tuple[list[Policy], list[SourceError]]:
    """Compile every ``policies/*.yaml``; a policy that does not parse or compile is an error."""
    policies, errors = [], []
    for path, data in sorted(files.items()):
        if not path.startswith("policies/") or not path.endswith((".yaml", ".yml")):
            continue
        try:
            spec = PolicySpec.model_validate(yaml.load(data, Loader=YamlLoader))  # noqa: S506 - a safe loader
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            errors.append(SourceError(path, mark.line + 1 if mark else None, f"YAML: {exc}"))
            continue
        except ValidationError as exc:
            errors.append(SourceError(path, None, f"policy: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"))
            continue
        try:
            program = cel.compile(spec.expression)
        except ValueError as exc:
            errors.append(SourceError(path, None, f"CEL: {str(exc).splitlines()[0]}"))
            continue
        policies.append(Policy(spec, path, program))
    return policies, errors


def evaluate(policies: Sequence[Policy], objects: Iterable[RenderedObject], targets: Sequence[str]) -> list[Violation]:
    """Every violation of every policy by every object (not just the first)."""
    violations = []
    # One context, updated per object: converting the object into CEL values is most of the
    # cost, and the target list is converted once, not once per object.
    context = cel.Context({"targets": list(targets)})
    for obj in objects:
        applicable = [p for p in policies if p.applies(obj)]
        if not applicable:
            continue
        context.update({"object": obj.body, "group": obj.group})
        for policy in applicable:
            try:
                passed = policy.program.execute(context) is True
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                passed, reason = False, f"{policy.spec.message} (evaluation failed: {exc!r})"
            else:
                reason = policy.spec.message
            if not passed:
                violations.append(Violation(policy.spec.name, reason, obj.describe()))
    return violations
