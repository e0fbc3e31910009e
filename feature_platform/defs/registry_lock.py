"""The registry lock: what each (source schema version, view version) was defined as when it shipped.

A view's version is a promise: data written under `user_daily_profile v1` means one definition.
The lock file records, per source schema version and per view version, the definition and its
fingerprint. `feature-platform registry check` (and the Dagster check `definitions_match_lock`)
compare the code's registry against it: a definition whose fingerprint changed while its version
did not is an error, printed as a diff. New versions are fine (they are "new, not locked yet"
until `feature-platform registry lock` records them); versions that disappeared from the code are
listed as removed unless they were retired with `feature-platform registry retire`.

Where the lock lives: `FP_REGISTRY_LOCK` if set, else next to the module that defines the
registry, named `<module>.lock.json` (the demo repo: `feature_platform/registry/demo.lock.json`).
It is meant to be committed with the code, like any lock file. Nothing here imports Dagster.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from feature_platform.registry import DEFAULT_REPO, Registry, RegistryError

LOCK_FORMAT = 1


def lock_path(spec: str | None = None) -> Path:
    """The lock file of the registry named by `spec` ('module:attr'; default FP_REGISTRY or the demo)."""
    if os.environ.get("FP_REGISTRY_LOCK"):
        return Path(os.environ["FP_REGISTRY_LOCK"]).resolve()
    spec = spec or os.environ.get("FP_REGISTRY") or DEFAULT_REPO
    module = spec.partition(":")[0]
    found = importlib.util.find_spec(module)
    if found is None or not found.origin:
        raise RegistryError(f"feature repo {spec!r}: cannot locate module {module!r} to find its lock file; "
                            f"set FP_REGISTRY_LOCK")
    origin = Path(found.origin)
    return origin.with_name(origin.stem + ".lock.json")


def snapshot(registry: Registry) -> dict:
    """The lockable content of a registry: definitions and fingerprints, keyed by name and version."""
    return {
        "format": LOCK_FORMAT,
        "sources": {s.name: {str(s.schema_version): {"fingerprint": s.fingerprint(), "definition": s.definition()}}
                    for s in registry.sources},
        "views": _views(registry),
        "services": {s.name: [str(r) for r in s.features] for s in registry.services},
    }


def _views(registry: Registry) -> dict:
    out: dict[str, dict] = {}
    for v in sorted(registry.views, key=lambda v: (v.name, v.version)):
        out.setdefault(v.name, {})[str(v.version)] = {
            "kind": v.kind, "fingerprint": v.fingerprint(), "definition": v.definition()}
    return out


def load_lock(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"registry lock {path}: not valid JSON ({exc}); restore it from version control") from exc
    if data.get("format") != LOCK_FORMAT:
        raise RegistryError(f"registry lock {path}: format {data.get('format')!r}, expected {LOCK_FORMAT}")
    return data


@dataclass
class Change:
    """One locked (name, version) whose definition changed without a version bump."""

    kind: str  # "source" | "view"
    name: str
    version: str
    locked_fingerprint: str
    fingerprint: str
    diff: str

    def headline(self) -> str:
        what = "schema version" if self.kind == "source" else "version"
        return (f"{self.kind} {self.name!r} {what} {self.version}: definition changed without a version bump "
                f"(locked {self.locked_fingerprint}, now {self.fingerprint})")


@dataclass
class LockReport:
    path: Path
    exists: bool
    changed: list[Change] = field(default_factory=list)
    new: list[str] = field(default_factory=list)       # "view user_daily_profile v2"
    removed: list[str] = field(default_factory=list)   # locked, gone from the code, not retired
    retired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exists and not self.changed

    def render(self) -> str:
        if not self.exists:
            return (f"no registry lock at {self.path}: run `feature-platform registry lock` to record the "
                    f"current definitions, and commit the file")
        lines = []
        for c in self.changed:
            lines.append("ERROR " + c.headline())
            lines.append(c.diff.rstrip())
            lines.append(f"  -> give it a new version (old data stays under the old one), or revert the change")
        for n in self.new:
            lines.append(f"new   {n} (not locked yet: `feature-platform registry lock` records it)")
        for r in self.removed:
            lines.append(f"gone  {r} is locked but no longer defined; retire it with `feature-platform registry retire`")
        if not lines:
            lines.append(f"registry matches {self.path}")
        return "\n".join(lines)


def definition_diff(old: dict, new: dict, old_name: str, new_name: str) -> str:
    a = json.dumps(old, indent=2, sort_keys=True).splitlines()
    b = json.dumps(new, indent=2, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, old_name, new_name, lineterm=""))


def compare(registry: Registry, path: Path) -> LockReport:
    lock = load_lock(path)
    report = LockReport(path=path, exists=lock is not None)
    if lock is None:
        return report
    current = snapshot(registry)
    for kind, section in (("source", "sources"), ("view", "views")):
        locked_all = lock.get(section, {})
        for name, versions in current[section].items():
            for version, entry in versions.items():
                locked = locked_all.get(name, {}).get(version)
                label = f"{kind} {name} v{version}"
                if locked is None:
                    report.new.append(label)
                elif locked["fingerprint"] != entry["fingerprint"]:
                    report.changed.append(Change(
                        kind, name, version, locked["fingerprint"], entry["fingerprint"],
                        definition_diff(locked["definition"], entry["definition"],
                                        f"lock: {name} v{version}", f"code: {name} v{version}")))
        for name, versions in locked_all.items():
            for version, entry in versions.items():
                if version not in current[section].get(name, {}):
                    (report.retired if entry.get("retired") else report.removed).append(f"{kind} {name} v{version}")
    return report


def write_lock(registry: Registry, path: Path, force: bool = False) -> LockReport:
    """Record the registry's definitions; refuses to overwrite a changed-without-bump entry unless forced."""
    report = compare(registry, path)
    if report.changed and not force:
        raise RegistryError("refusing to lock: " + "; ".join(c.headline() for c in report.changed)
                            + ". Bump the versions (or pass --force if this version never shipped)")
    lock = load_lock(path) or {"format": LOCK_FORMAT, "sources": {}, "views": {}, "services": {}}
    current = snapshot(registry)
    for section in ("sources", "views"):
        for name, versions in current[section].items():
            lock[section].setdefault(name, {}).update(versions)
    lock["services"] = current["services"]
    path.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    return compare(registry, path)


def retire(registry: Registry, path: Path, view: str, version: int) -> str:
    """Mark a view version retired in the lock, only when no feature service pins it."""
    users = registry.services_using(view, version)
    if users:
        raise RegistryError(f"view {view!r} v{version} is pinned by feature service(s) {users}; move them to "
                            f"another version first (and retrain), then retire it")
    lock = load_lock(path)
    if lock is None or str(version) not in lock.get("views", {}).get(view, {}):
        raise RegistryError(f"view {view!r} v{version} is not in the registry lock {path}; nothing to retire")
    if any(v.name == view and v.version == version for v in registry.views):
        raise RegistryError(f"view {view!r} v{version} is still defined in the feature repo; remove it from the "
                            f"code first (nothing pins it), then retire it")
    lock["views"][view][str(version)]["retired"] = True
    path.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    return f"retired {view} v{version} in {path}"


def version_diffs(registry: Registry, name: str | None = None) -> list[str]:
    """For each view with several versions, the definition diff between consecutive versions."""
    out = []
    names = sorted({v.name for v in registry.views if name is None or v.name == name})
    for n in names:
        versions = sorted((v for v in registry.views if v.name == n), key=lambda v: v.version)
        for a, b in zip(versions, versions[1:]):
            out.append(definition_diff(a.definition(), b.definition(), f"{n} v{a.version}", f"{n} v{b.version}"))
    return out
