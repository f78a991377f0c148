"""convert on real PyTorch models: every input format, the batch-size trap, and every bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from tests.helpers.need import need

torch = need("torch", "pip install -e '.[torch]' installs it")
ort = need("onnxruntime", "the base install has it")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

# Model code as it would live in a model repo; a --factory is imported from the working directory.
NETDEFS = textwrap.dedent('''
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        def forward(self, x):
            return torch.softmax(self.net(x), dim=-1)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 16)
            self.cls = nn.Linear(16, 3)
            self.reg = nn.Linear(16, 1)
        def forward(self, x, mask):
            h = torch.relu(self.body(x)) * mask.unsqueeze(-1)
            return {"label": self.cls(h), "score": self.reg(h)}

    class SpecializesBatch(nn.Module):
        """Branches on `batch == 2`: the dynamo exporter refuses to keep the batch dynamic."""
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)
        def forward(self, x):
            y = self.fc(x)
            if x.shape[0] == 2:
                return y * 1.0
            return y

    class DependsOnBatch(nn.Module):
        """Computes something else at batch 1: exporters capture only the example batch's path."""
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)
        def forward(self, x):
            y = self.fc(x)
            if x.shape[0] > 1:
                return y - y.mean(0, keepdim=True)
            return y

    class Noisy(nn.Module):
        """Adds noise at inference: no export can match it."""
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)
        def forward(self, x):
            return self.fc(x) + torch.rand_like(x[:, :4])

    @torch.library.custom_op("mylib::twice", mutates_args=())
    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @twice.register_fake
    def _(x):
        return torch.empty_like(x)

    class CustomOp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)
        def forward(self, x):
            return torch.ops.mylib.twice(self.fc(x))

    def mlp(): return MLP()
    def two_heads(): return TwoHeads()
    def specializes(): return SpecializesBatch()
    def depends(): return DependsOnBatch()
    def noisy(): return Noisy()
    def custom(): return CustomOp()
    def not_a_module(): return {"weights": 1}
    def broken(): raise RuntimeError("needs a GPU")
    def exits(): raise SystemExit("no GPU, bye")
    def interrupted(): raise KeyboardInterrupt()

    class MeanOverTime(nn.Module):
        """Needs at least 12 time steps: its .pt2 says so in its range constraints."""
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 4, 11)
        def forward(self, x):
            return self.conv(x).mean(-1)
''')

X = "x:float32:batch,8"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A model repo with model code and every kind of saved PyTorch model, made once."""
    import importlib
    import sys

    root = tmp_path_factory.mktemp("torch-repo")
    (root / "netdefs.py").write_text(NETDEFS)
    sys.path.insert(0, str(root))
    netdefs = importlib.import_module("netdefs")
    torch.manual_seed(0)
    mlp = netdefs.MLP().eval()
    example = torch.randn(2, 8)
    torch.save(mlp.state_dict(), root / "mlp.pt")
    torch.save({"epoch": 3, "state_dict": mlp.state_dict()}, root / "checkpoint.pt")
    torch.save(mlp, root / "pickled.pt")
    torch.jit.save(torch.jit.trace(mlp, example), root / "traced.pt")
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(mlp, (example,), dynamic_shapes=({0: batch},)), root / "program.pt2")
    torch.export.save(torch.export.export(mlp, (example,)), root / "static.pt2")
    for name in ("two_heads", "specializes", "depends", "noisy", "custom"):
        torch.save(getattr(netdefs, name)().state_dict(), root / f"{name}.pt")
    constrained = netdefs.MeanOverTime().eval()
    dims = {0: torch.export.Dim("batch", min=2, max=64), 2: torch.export.Dim("time", min=12)}
    torch.export.save(torch.export.export(constrained, (torch.randn(4, 3, 16),), dynamic_shapes=(dims,)),
                      root / "constrained.pt2")
    (root / "text.pt").write_text("these are not weights\n")
    (root / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    (root / "truncated.pt").write_bytes((root / "traced.pt").read_bytes()[:400])
    np.savez(root / "sample.npz", x=np.random.default_rng(1).standard_normal((16, 8)))
    np.savez(root / "bad_sample.npz", x=np.zeros((4, 9), np.float32))
    yield root
    sys.path.remove(str(root))


def bundle_of(out):
    manifest = json.loads((out / "manifest.json").read_text())
    signature = json.loads((out / "signature.json").read_text())
    return manifest, signature


def assert_serves_like(out, module, inputs: dict[str, np.ndarray]):
    """ONNX Runtime on the bundle's model.onnx gives the module's outputs, at a batch never exported."""
    sess = ort.InferenceSession(str(out / "model.onnx"))
    got = sess.run(None, inputs)
    with torch.inference_mode():
        want = module(*[torch.from_numpy(v) for v in inputs.values()])
    want = list(want.values()) if isinstance(want, dict) else [want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)


def test_state_dict_and_factory(repo, tmp_path, mldeploy):
    out = tmp_path / "bundle"
    r = mldeploy("convert", "mlp.pt", "--factory", "netdefs:mlp", "--input", X, "--out", out, cwd=repo)
    assert r.code == 0, r.err
    assert "parity passed" in r.out
    manifest, signature = bundle_of(out)
    assert signature["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}]
    assert signature["outputs"] == [{"name": "output_0", "dtype": "float32", "shape": ["batch", 4]}]
    step = manifest["steps"][-1]
    assert step["status"] == "passed" and step["exporter"] == "dynamo" and step["opset"] == 18
    assert step["parity"]["batches"] == [1, 8]
    assert step["parity"]["max_abs_error"] < 1e-5
    import hashlib
    assert manifest["source"]["sha256"] == hashlib.sha256((repo / "mlp.pt").read_bytes()).hexdigest()
    assert manifest["source"]["format"] == "state_dict"
    assert manifest["tools"]["torch"].startswith("2.")
    assert manifest["model"]["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    # the exporter's stack traces named the checkout and the venv: another folder was another model
    assert str(repo).encode() not in (out / "model.onnx").read_bytes()
    import netdefs
    module = netdefs.MLP()
    module.load_state_dict(torch.load(repo / "mlp.pt"))
    assert_serves_like(out, module.eval(), {"x": np.random.rand(13, 8).astype(np.float32)})


def test_checkpoint_with_nested_state_dict(repo, tmp_path, mldeploy):
    r = mldeploy("convert", "checkpoint.pt", "--factory", "netdefs:mlp", "--input", X, "--out", tmp_path / "b",
                 cwd=repo)
    assert r.code == 0, r.err


def test_torchscript_falls_back_to_legacy_exporter(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "traced.pt", "--input", X, "--out", out, cwd=repo)
    assert r.code == 0, r.err
    step = bundle_of(out)[0]["steps"][-1]
    assert step["format"] == "torchscript"
    assert [a["exporter"] for a in step["attempts"]] == ["dynamo", "legacy"]
    assert step["attempts"][0]["status"] == "export failed" and step["exporter"] == "legacy"
    assert "exporter legacy: passed" in r.out
    assert_serves_like(out, torch.jit.load(repo / "traced.pt"), {"x": np.ones((5, 8), np.float32)})


def test_exported_program_needs_no_declared_inputs(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "program.pt2", "--out", out, cwd=repo)
    assert r.code == 0, r.err
    manifest, signature = bundle_of(out)
    assert manifest["source"]["format"] == "exported-program"
    assert signature["inputs"][0]["shape"][1] == 8 and isinstance(signature["inputs"][0]["shape"][0], str)


def test_program_is_probed_inside_its_range_constraints(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "constrained.pt2", "--out", out, cwd=repo)
    assert r.code == 0, r.err
    step = bundle_of(out)[0]["steps"][-1]
    assert step["parity"]["batches"] == [2, 8]  # batch >= 2, time >= 12
    assert_serves_like(out, torch.export.load(repo / "constrained.pt2").module(),
                       {"x": np.ones((3, 3, 22), np.float32)})


def test_torchscript_takes_its_input_shapes_from_the_sample(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "traced.pt", "--sample", "sample.npz", "--out", out, cwd=repo)
    assert r.code == 0, r.err
    assert bundle_of(out)[1]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}]
    r = mldeploy("convert", "traced.pt", "--out", tmp_path / "c", cwd=repo)
    assert r.code == 2 and "does not record its input shapes" in r.err


def test_static_program_keeps_its_fixed_batch_and_warns(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "static.pt2", "--out", out, cwd=repo)
    assert r.code == 0, r.err
    assert "fixed batch of 2" in r.err
    assert bundle_of(out)[1]["inputs"][0]["shape"] == [2, 8]


def test_static_program_rejects_a_declared_dynamic_batch(repo, tmp_path, mldeploy):
    r = mldeploy("convert", "static.pt2", "--input", "x:float32:batch,8", "--out", tmp_path / "b", cwd=repo)
    assert r.code == 2
    assert "rejects the declared inputs" in r.err and "x [1, 8]" in r.err


def test_dict_outputs_and_two_inputs_keep_their_names(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "two_heads.pt", "--factory", "netdefs:two_heads", "--input", X,
                 "--input", "mask:float32:batch", "--out", out, cwd=repo)
    assert r.code == 0, r.err
    signature = bundle_of(out)[1]
    assert [o["name"] for o in signature["outputs"]] == ["label", "score"]
    assert [i["name"] for i in signature["inputs"]] == ["x", "mask"]


def test_user_sample_file_is_used(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "mlp.pt", "--factory", "netdefs:mlp", "--input", X, "--sample", "sample.npz",
                 "--out", out, cwd=repo)
    assert r.code == 0, r.err
    step = bundle_of(out)[0]["steps"][-1]
    assert step["data"] == "sample file sample.npz"
    assert step["parity"]["batches"] == [1, 16]  # all 16 sample rows, more than the default 8


def test_sample_with_wrong_shape_names_input_and_shapes(repo, tmp_path, mldeploy):
    r = mldeploy("convert", "mlp.pt", "--factory", "netdefs:mlp", "--input", X, "--sample", "bad_sample.npz",
                 "--out", tmp_path / "b", cwd=repo)
    assert r.code == 2
    assert "input 'x' has shape [4, 9], the model expects [batch, 8]" in r.err


def test_torchscript_copy_on_request(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "mlp.pt", "--factory", "netdefs:mlp", "--input", X, "--torchscript", "--out", out,
                 cwd=repo)
    assert r.code == 0, r.err
    scripted = torch.jit.load(out / "model.torchscript.pt")
    assert_serves_like(out, scripted, {"x": np.ones((3, 8), np.float32)})
    assert bundle_of(out)[0]["steps"][-1]["native"] == {"torchscript": "model.torchscript.pt"}


# ------------------------------------------------------------------ the batch-size trap

def test_model_that_defeats_dynamo_is_exported_by_legacy_and_verified(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "specializes.pt", "--factory", "netdefs:specializes", "--input", X, "--out", out,
                 cwd=repo)
    assert r.code == 0, r.err
    step = bundle_of(out)[0]["steps"][-1]
    assert step["attempts"][0]["exporter"] == "dynamo" and step["attempts"][0]["status"] != "passed"
    assert step["exporter"] == "legacy"
    assert {c["batch"] for c in step["parity"]["outputs"]} == {1, 8}


def test_batch_dependent_model_is_rejected_and_nothing_is_lost(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    good = mldeploy("convert", "mlp.pt", "--factory", "netdefs:mlp", "--input", X, "--out", out, cwd=repo)
    assert good.code == 0
    before = (out / "model.onnx").read_bytes()
    r = mldeploy("convert", "depends.pt", "--factory", "netdefs:depends", "--input", X, "--out", out, cwd=repo)
    assert r.code == 1
    assert "parity failed, no bundle written" in r.err
    assert "depends on its batch size" in r.err
    assert (out / "model.onnx").read_bytes() == before  # the last good bundle is untouched
    rejected = json.loads((tmp_path / "b.rejected" / "manifest.json").read_text())
    assert rejected["steps"][-1]["status"] == "failed"
    assert all(a["status"] == "parity failed" for a in rejected["steps"][-1]["attempts"])


def test_numeric_mismatch_fails_with_exit_1(repo, tmp_path, mldeploy):
    r = mldeploy("convert", "noisy.pt", "--factory", "netdefs:noisy", "--input", X, "--out", tmp_path / "b",
                 cwd=repo)
    assert r.code == 1
    assert "differs by up to" in r.err
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ bad input: exit 2, one line

@pytest.mark.parametrize("args, message", [
    (["missing.pt"], "model missing.pt not found"),
    (["pickled.pt", "--input", X], "--allow-pickle"),
    (["mlp.pt", "--input", X], "is a state_dict: weights without the code"),
    (["mlp.pt", "--input", X, "--factory", "nowhere:mlp"], "cannot import factory nowhere:mlp"),
    (["mlp.pt", "--input", X, "--factory", "netdefs:missing"], "cannot import factory netdefs:missing"),
    (["mlp.pt", "--input", X, "--factory", "netdefs:not_a_module"], "returned dict, not a torch.nn.Module"),
    (["mlp.pt", "--input", X, "--factory", "netdefs:broken"], "factory netdefs:broken failed"),
    (["mlp.pt", "--input", X, "--factory", "netdefs:two_heads"], "does not fit the module"),
    (["mlp.pt", "--input", "x:float32:batch,9", "--factory", "netdefs:mlp"], "rejects the declared inputs (x [2, 9])"),
    (["mlp.pt", "--factory", "netdefs:mlp"], "does not record its input shapes"),
    (["traced.pt", "--input", "x:float32"], "is not NAME:DTYPE:DIMS"),
    (["custom.pt", "--input", X, "--factory", "netdefs:custom"], "operator mylib.twice cannot be exported"),
    (["mlp.pt", "--framework", "tensorflow"], "is a torch model"),
    (["mlp.pt", "--input", X, "--factory", "netdefs:exits"], "factory netdefs:exits failed: SystemExit: no GPU, bye"),
    (["mlp.pt", "--input", X, "--factory", "netdefs:interrupted"], "factory netdefs:interrupted failed: KeyboardInterrupt"),
    (["text.pt", "--input", X], "text.pt is not a PyTorch file: neither a zip archive"),
    (["lfs.pt"], "lfs.pt is a Git LFS pointer, not the model itself"),
    (["truncated.pt", "--input", X], "truncated.pt is a damaged zip archive"),
])
def test_bad_input_exits_2_with_one_clear_line(repo, tmp_path, mldeploy, args, message):
    r = mldeploy("convert", *args, "--out", tmp_path / "b", cwd=repo)
    assert r.code == 2, r.out + r.err
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / "b").exists()


def test_pickle_loads_only_with_explicit_consent(repo, tmp_path, mldeploy):
    r = mldeploy("convert", "pickled.pt", "--input", X, "--out", tmp_path / "b", cwd=repo)
    assert r.code == 2 and "runs arbitrary code" in r.err
    r = mldeploy("convert", "pickled.pt", "--input", X, "--allow-pickle", "--out", tmp_path / "b", cwd=repo)
    assert r.code == 0, r.err
    assert bundle_of(tmp_path / "b")[0]["source"]["format"] == "pickled-module"


def test_custom_operator_hint_says_what_to_do(repo, tmp_path, mldeploy):
    r = mldeploy("convert", "custom.pt", "--input", X, "--factory", "netdefs:custom", "--out", tmp_path / "b",
                 cwd=repo)
    assert "register an ONNX translation" in r.err


def test_opset_out_of_range_is_a_config_error(repo, tmp_path, mldeploy):
    r = mldeploy("convert", "mlp.pt", "--factory", "netdefs:mlp", "--input", X, "--opset", "7",
                 "--out", tmp_path / "b", cwd=repo)
    assert r.code == 2
    assert "--opset: model.opset: expected greater than or equal to 11; found 7" in r.err


# ------------------------------------------------------------------ where a factory is imported from

def test_a_factory_in_the_config_file_is_imported_from_the_files_folder(repo, tmp_path, mldeploy):
    """model.factory written in mldeploy.yaml resolves against the file's folder, like every path in it,
    whatever the working directory; --factory resolves against the working directory, like every flag."""
    import shutil

    sub = tmp_path / "sub"
    sub.mkdir()
    shutil.copy(repo / "mlp.pt", sub / "mlp.pt")
    (sub / "beside_config_defs.py").write_text(NETDEFS)
    (sub / "flag_only_defs.py").write_text(NETDEFS)
    (sub / "mldeploy.yaml").write_text(textwrap.dedent("""
        bundle: bundle
        model:
          path: mlp.pt
          factory: beside_config_defs:mlp
        inputs: [{name: x, dtype: float32, shape: [batch, 8]}]
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # a flag is the working directory's: the module beside the config file is not found from elsewhere
    # (first: in this process, an import leaves its folder on sys.path, as a fresh process would not)
    r = mldeploy("convert", "--config", sub / "mldeploy.yaml", "--factory", "flag_only_defs:mlp",
                 "--out", tmp_path / "b2", cwd=elsewhere)
    assert r.code == 2 and "cannot import factory flag_only_defs:mlp: ModuleNotFoundError" in r.err, r.err
    assert f"imported from {elsewhere.resolve()}" in r.err, r.err
    (elsewhere / "cwd_defs.py").write_text(NETDEFS)
    r = mldeploy("convert", "--config", sub / "mldeploy.yaml", "--factory", "cwd_defs:mlp",
                 "--out", tmp_path / "b3", cwd=elsewhere)
    assert r.code == 0, r.err

    r = mldeploy("convert", "--config", sub / "mldeploy.yaml", cwd=elsewhere)
    assert r.code == 0, r.err
    assert "parity passed" in r.out and (sub / "bundle" / "model.onnx").is_file()
