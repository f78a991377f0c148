"""`mldeploy init`: a model repo scaffolded from a model file validates and (ONNX) converts with no edit,
overwrites nothing, adds `.mldeploy/` to .gitignore once, and ships the kit's own starter workflows."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper
from ruamel.yaml import YAML

from mldeploy.scaffold import WORKFLOWS, workflow_templates
from tests.helpers.cli import one_line
from tests.helpers.models import small_mlp
from tests.helpers.paths import ROOT


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The real command, as a user runs it (a process of its own, in `cwd`)."""
    return subprocess.run([sys.executable, "-m", "mldeploy", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def test_an_onnx_model_is_scaffolded_validated_and_converted_with_no_edit(tmp_path):
    onnx.save(small_mlp(batch="N"), tmp_path / "model.onnx")
    r = cli("init", "model.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mldeploy config validate" in r.stdout and "mldeploy convert" in r.stdout
    config = YAML(typ="safe").load((tmp_path / "mldeploy.yaml").read_text())
    assert config["model"]["path"] == "model.onnx"
    assert config["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    for name in WORKFLOWS:
        assert (tmp_path / ".github" / "workflows" / name).read_text() == (ROOT / "workflows" / name).read_text()
    assert (tmp_path / ".gitignore").read_text().splitlines().count(".mldeploy/") == 1

    r = cli("config", "validate", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("convert", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / ".mldeploy" / "bundle" / "model.onnx").is_file()


def test_a_free_batch_and_a_model_in_another_folder(tmp_path, mldeploy):
    """A batch with no name becomes `batch`; --dir and a model path outside the cwd write a path
    relative to mldeploy.yaml (the way the config reads it)."""
    graph = helper.make_graph([helper.make_node("Relu", ["in:0"], ["y"])], "g",
                              [helper.make_tensor_value_info("in:0", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])])
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9),
              repo / "models" / "relu.onnx")
    r = mldeploy("init", "--dir", repo, repo / "models" / "relu.onnx", cwd=tmp_path)
    assert r.code == 0, r.err
    config = YAML(typ="safe").load((repo / "mldeploy.yaml").read_text())
    assert config["model"]["path"] == "models/relu.onnx"
    assert config["inputs"] == [{"name": "in:0", "dtype": "float32", "shape": ["batch", 3]}]
    assert mldeploy("config", "validate", "--quiet", repo / "mldeploy.yaml").code == 0
    assert mldeploy("convert", cwd=repo).code == 0


def test_the_one_model_in_the_folder_is_found(tmp_path, mldeploy):
    (tmp_path / "model").mkdir()
    onnx.save(small_mlp(), tmp_path / "model" / "m.onnx")
    assert mldeploy("init", cwd=tmp_path).code == 0
    assert YAML(typ="safe").load((tmp_path / "mldeploy.yaml").read_text())["model"]["path"] == "model/m.onnx"


def test_nothing_is_overwritten(tmp_path, mldeploy):
    onnx.save(small_mlp(), tmp_path / "model.onnx")
    mine = tmp_path / ".github" / "workflows" / "rollback.yml"
    mine.parent.mkdir(parents=True)
    mine.write_text("name: my own rollback\n")
    r = mldeploy("init", "model.onnx", cwd=tmp_path)
    assert r.code == 2 and one_line(r)
    assert "rollback.yml already exists" in r.err
    assert mine.read_text() == "name: my own rollback\n"
    assert not (tmp_path / "mldeploy.yaml").exists()  # checked before anything is written
    assert not (tmp_path / ".github" / "workflows" / "pr-canary.yml").exists()

    mine.unlink()
    assert mldeploy("init", "model.onnx", cwd=tmp_path).code == 0
    r = mldeploy("init", "model.onnx", cwd=tmp_path)
    assert r.code == 2 and one_line(r) and "mldeploy.yaml already exists" in r.err


def test_gitignore_is_appended_once(tmp_path, mldeploy):
    onnx.save(small_mlp(), tmp_path / "model.onnx")
    (tmp_path / ".gitignore").write_text("__pycache__/")  # no final newline
    assert mldeploy("init", "model.onnx", cwd=tmp_path).code == 0
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[0] == "__pycache__/" and lines.count(".mldeploy/") == 1

    (tmp_path / "mldeploy.yaml").unlink()
    for name in WORKFLOWS:
        (tmp_path / ".github" / "workflows" / name).unlink()
    assert mldeploy("init", "model.onnx", cwd=tmp_path).code == 0
    assert (tmp_path / ".gitignore").read_text().splitlines().count(".mldeploy/") == 1


def test_a_torch_file_gets_todos_and_a_config_that_validates(tmp_path, mldeploy):
    """A state_dict records no input shapes and not the code that builds the module: init says so
    (comments naming model.factory and inputs) and the config still validates."""
    with zipfile.ZipFile(tmp_path / "weights.pt", "w") as z:  # the layout of torch.save (no torch needed)
        z.writestr("weights/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("weights/version", "3\n")
    r = mldeploy("init", "weights.pt", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "TODO in mldeploy.yaml: model.factory, inputs" in r.out
    text = (tmp_path / "mldeploy.yaml").read_text()
    assert "# TODO model.factory" in text and "# TODO inputs" in text
    config = YAML(typ="safe").load(text)
    assert config["model"] == {"path": "weights.pt"} and "inputs" not in config
    assert mldeploy("config", "validate", "--quiet", cwd=tmp_path).code == 0


def test_no_model_gets_a_todo_for_its_path(tmp_path, mldeploy):
    r = mldeploy("init", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "model.path" in r.out and "# TODO model.path" in (tmp_path / "mldeploy.yaml").read_text()
    assert mldeploy("config", "validate", "--quiet", cwd=tmp_path).code == 0


def test_an_unknown_file_is_a_one_line_usage_error(tmp_path, mldeploy):
    (tmp_path / "model.bin2").write_bytes(b"not a model")
    r = mldeploy("init", "model.bin2", cwd=tmp_path)
    assert r.code == 2 and one_line(r)
    assert "cannot tell which framework made model.bin2" in r.err
    assert list(tmp_path.iterdir()) == [tmp_path / "model.bin2"]


def test_the_packaged_workflows_are_the_kits_workflows():
    """init writes the package's copy (what a wheel ships); workflows/ is that folder, so they cannot drift."""
    assert (ROOT / "workflows").resolve() == (ROOT / "src" / "mldeploy" / "templates" / "workflows").resolve()
    assert sorted(WORKFLOWS) == sorted(p.name for p in (ROOT / "workflows").glob("*.yml"))
    assert workflow_templates() == {name: (ROOT / "workflows" / name).read_text(encoding="utf-8") for name in WORKFLOWS}


def test_the_wheel_ships_the_workflows():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mldeploy"]
    package = ROOT / "src" / "mldeploy"
    shipped = {p for g in globs for p in package.glob(g)}
    assert {package / "templates" / "workflows" / name for name in WORKFLOWS} <= shipped
