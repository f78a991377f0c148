"""The suite's own layout: test modules are imported by their basename (pytest's default import mode,
no packages), so two with one name cannot be collected in one process, as `scripts/test.sh -m "not slow"`
collects the whole of tests/."""

from __future__ import annotations

from collections import defaultdict

from tests.helpers.paths import ROOT


def test_every_test_module_has_its_own_basename():
    found: dict[str, list[str]] = defaultdict(list)
    for path in (ROOT / "tests").rglob("test_*.py"):
        found[path.name].append(str(path.relative_to(ROOT)))
    assert not {name: paths for name, paths in found.items() if len(paths) > 1}
