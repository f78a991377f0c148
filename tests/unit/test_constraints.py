"""constraints.txt: the versions tested together, as pip reads them."""

from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers.paths import ROOT


def pins() -> dict[str, Requirement]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {(req := Requirement(line)).name: req for line in lines if line and not line.startswith("#")}


def test_every_pin_is_exact():
    loose = [str(req) for req in pins().values() if [s.operator for s in req.specifier] != ["=="]]
    assert not loose, loose


def test_the_torch_pin_admits_the_cpu_index_build_and_pypis():
    """An empty torch-index-url (the default off GitHub-hosted runners) leaves torch to pip's
    configured indexes, usually PyPI, which has no +cpu builds: the pin must not name the local label."""
    torch = pins()["torch"].specifier
    assert torch.contains(Version("2.13.0+cpu")) and torch.contains(Version("2.13.0")), torch
