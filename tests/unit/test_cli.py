"""The CLI as users and actions meet it: help, version, exit codes, annotations, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests.helpers.models import small_mlp as mlp
from tests.helpers.paths import ROOT


def run(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "mldeploy", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120, check=False)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "mldeploy"
    assert script.is_file(), "pip install -e . should create the `mldeploy` console script"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.startswith("mldeploy ")


@pytest.mark.parametrize("args, expected", [
    (["--help"], "Ship a trained model to production"),
    (["convert", "--help"], "larger than the export example"),
    (["config", "--help"], "Work with mldeploy.yaml"),
    (["config", "validate", "--help"], "print the effective config"),
    (["config", "schema", "--help"], "editor completion"),
])
def test_every_help_reads_well(args, expected):
    r = run(*args)
    assert r.returncode == 0
    assert expected in " ".join(r.stdout.split())
    assert "exit codes: 0 done, 1 a check failed, 2 bad usage" in r.stdout


def test_no_command_or_unknown_flag_is_usage_error():
    assert run().returncode == 2
    r = run("convert", "--no-such-flag")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_help_and_schema_import_no_framework():
    code = ("import sys; from mldeploy.cli import main; main(['config', 'schema', '--out', '/dev/null']); "
            "print(sorted(m for m in ('torch', 'tensorflow', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout.strip() == "[]"


def test_schema_is_checked_in_and_current(mldeploy):
    r = mldeploy("config", "schema")
    assert r.code == 0
    schema = json.loads(r.out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"model", "inputs", "parity", "optimize", "image", "deploy", "monitoring"} <= set(schema["properties"])
    checked_in = json.loads((ROOT / "schema" / "mldeploy.schema.json").read_text())
    assert checked_in == schema, "run `mldeploy config schema --out schema/mldeploy.schema.json`"


def test_config_validate(tmp_path, mldeploy):
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\ndeploy:\n  cloud: aws\n  aws:\n    role: arn:aws:iam::123456789012:role/m\n")
    r = mldeploy("config", "validate", good)
    assert r.code == 0
    assert json.loads(r.out)["deploy"]["target"] == "sagemaker"
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndeploy:\n  cloud: aws\n  canary_traffic: 150\n")
    r = mldeploy("config", "validate", bad)
    assert r.code == 2
    assert f"{bad}:4: deploy.canary_traffic: expected less than or equal to 100; found 150" in r.err


def test_config_validate_checks_the_files_it_names(tmp_path, mldeploy):
    (tmp_path / "model.onnx").write_bytes(b"x")
    config = tmp_path / "mldeploy.yaml"
    config.write_text("model:\n  path: model.onnx\noptimize:\n  data: data/calib.npz\n"
                      "monitoring:\n  baseline: gone.json\n")
    r = mldeploy("config", "validate", config)
    assert r.code == 2, r.err
    assert f"{config}:4: optimize.data: {tmp_path / 'data/calib.npz'} does not exist" in r.err
    assert f"{config}:6: monitoring.baseline: {tmp_path / 'gone.json'} does not exist" in r.err
    assert "model.path" not in r.err  # it exists
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "calib.npz").write_bytes(b"x")
    (tmp_path / "gone.json").write_text("{}")
    r = mldeploy("config", "validate", config)
    assert r.code == 0 and f"found model.path: {tmp_path / 'model.onnx'}" in r.err, r.err


def test_example_repo_config_is_valid(mldeploy):
    assert mldeploy("config", "validate", ROOT / "examples" / "model-repo" / "mldeploy.yaml", "--quiet").code == 0


def test_errors_become_annotations_in_actions(tmp_path, mldeploy, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    (tmp_path / "mldeploy.yaml").write_text("version: 1\nmodel:\n  framework: caffe\n")
    r = mldeploy("convert", "m.onnx", cwd=tmp_path)
    assert r.code == 2
    assert r.out.startswith("::error file=mldeploy.yaml,line=3,title=mldeploy convert::model.framework: expected")


def test_convert_writes_outputs_and_summary_in_actions(tmp_path, mldeploy, monkeypatch):
    onnx.save(mlp(), tmp_path / "m.onnx")
    outputs, summary = tmp_path / "out.txt", tmp_path / "summary.md"
    for name, value in {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": outputs, "GITHUB_STEP_SUMMARY": summary}.items():
        monkeypatch.setenv(name, str(value))
    r = mldeploy("convert", "m.onnx", "--out", "b", cwd=tmp_path)
    assert r.code == 0, r.err
    written = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    assert written["bundle"] == "b" and written["onnx-path"] == "b/model.onnx"
    assert float(written["parity-max-abs-error"]) < 1e-6
    text = summary.read_text()
    assert "### ✅ convert-model: parity passed" in text and "| `probs` | 8 | [8, 3] |" in text


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    r = run("convert", "missing.onnx", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run("convert", "missing.onnx", "--debug", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr and "UsageError" in r.stderr
