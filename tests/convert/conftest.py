"""The convert tier's fixture: a model repo with a converted MLP bundle (test_optimize, test_edge_inputs)."""

from __future__ import annotations

import onnx
import pytest

from tests.helpers.models import BUDGET, FAST, deep_mlp


@pytest.fixture
def repo(tmp_path, mldeploy):
    """A model repo with a converted MLP bundle and a quick-measuring config."""
    onnx.save(deep_mlp(), tmp_path / "mlp.onnx")
    (tmp_path / "mldeploy.yaml").write_text(FAST + BUDGET)
    assert mldeploy("convert", "mlp.onnx", cwd=tmp_path).code == 0
    return tmp_path
