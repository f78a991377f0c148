"""Formats that no wheel ships, made from a shipped model with its weights unchanged.

Each function takes the shipped file and a folder, writes the derived model there and returns its path.
"""

from __future__ import annotations

from pathlib import Path


def _torch_module(factory, weights: Path):
    import torch

    module = factory()
    module.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True), strict=True)
    return module.eval()


def facenet_rnet_torchscript(src: Path, out: Path) -> Path:
    import torch

    from tests.zoo.factories import facenet_rnet

    path = out / "rnet.torchscript.pt"
    torch.jit.save(torch.jit.script(_torch_module(facenet_rnet, src)), str(path))
    return path


def facenet_onet_pt2(src: Path, out: Path) -> Path:
    import torch

    from tests.zoo.factories import facenet_onet

    module = _torch_module(facenet_onet, src)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (torch.randn(2, 3, 48, 48),), dynamic_shapes=({0: batch},))
    path = out / "onet.pt2"
    torch.export.save(program, str(path))
    return path


def keras_native(src: Path, out: Path) -> Path:
    import keras

    path = out / (src.stem + ".keras")
    keras.saving.load_model(str(src), compile=False).save(str(path))
    return path


def keras_savedmodel(src: Path, out: Path) -> Path:
    import contextlib
    import io

    import keras

    path = out / (src.stem + "_savedmodel")
    with contextlib.redirect_stdout(io.StringIO()):  # export() prints the endpoint's signature
        keras.saving.load_model(str(src), compile=False).export(str(path), format="tf_saved_model")
    return path
