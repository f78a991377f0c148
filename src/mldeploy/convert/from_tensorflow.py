"""TensorFlow/Keras sources: SavedModel folders, .keras and .h5 files.

Keras models are first exported to a SavedModel (kept in the bundle as the native export); ONNX
is made with tf2onnx from that SavedModel's serving signature, so the ONNX model and the
SavedModel are the same function. (`tf2onnx.convert.from_keras` fails on Keras 3 Sequential
models, so it is not used.)
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ logs bypass Python's streams

import numpy as np

from mldeploy.bundle import TensorSpec
from mldeploy.config import Config
from mldeploy.convert.base import (
    Arrays,
    Export,
    ExportFailed,
    Source,
    captured,
    first_line,
    import_object,
    operator_in,
    resolve_inputs,
)
from mldeploy.errors import UsageError

with captured():
    import tensorflow as tf

SIGNATURE = "serving_default"


def _natural(key: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _custom_objects(specs: list[str], root: Path) -> dict:
    """`package.module:Name` each, imported from `root` like a PyTorch factory, under both names."""
    found = {}
    for spec in specs:
        obj = import_object(spec, "custom object", root)
        found[spec.split(":")[1]] = found[getattr(obj, "__name__", spec.split(":")[1])] = obj
    return found


class TensorFlowSource(Source):
    framework = "tensorflow"

    def __init__(self, path: Path, fmt: str, cfg: Config, workdir: Path):
        self.path, self.format, self.cfg = path, fmt, cfg
        self.saved_model = workdir / "saved_model"
        self.keras_model = None
        with captured():
            try:
                if fmt in ("keras", "h5"):
                    import keras

                    custom = _custom_objects(cfg.model.custom_objects, cfg.import_root("model.custom_objects"))
                    self.keras_model = keras.saving.load_model(str(path), compile=False, custom_objects=custom)
                    self.keras_model.export(str(self.saved_model), format="tf_saved_model", verbose=False)
                else:
                    shutil.copytree(path, self.saved_model)
                loaded = tf.saved_model.load(str(self.saved_model))
            except UsageError:
                raise
            except Exception as e:
                if unknown := re.search(r"[Cc]ould not (?:locate|deserialize) (?:class|function|object) '([\w.>]+)'",
                                        str(e)):
                    name = unknown.group(1).split(">")[-1]
                    raise UsageError(f"{path.name} uses the custom Keras class {name}, which is not known here"[:120],
                                     hint=f"list it in model.custom_objects, e.g. ['your_module:{name}']"[:78]) from None
                weights_only = "No model config found" in str(e)
                raise UsageError(f"cannot load TensorFlow model {path.name}: "
                                 + ("the file holds weights only, no model config" if weights_only else
                                    f"{type(e).__name__}: {first_line(e).replace(str(path), path.name)}"),
                                 hint="save the whole model (model.save)" if weights_only else
                                 "custom layers: list them in model.custom_objects") from None
        signatures = dict(loaded.signatures)
        if SIGNATURE not in signatures and len(signatures) != 1:
            raise UsageError(f"{path} has no '{SIGNATURE}' signature (found: {', '.join(signatures) or 'none'})",
                             hint="save the model with a serving signature")
        self._loaded = loaded  # keeps the function's variables alive
        self.function = signatures.get(SIGNATURE) or next(iter(signatures.values()))
        in_specs = self.function.structured_input_signature[1]
        order = ([t.name.split(":")[0] for t in self.keras_model.inputs] if self.keras_model is not None else [])
        names = [n for n in order if n in in_specs] + sorted(n for n in in_specs if n not in order)
        found = [self._spec(n, in_specs[n]) for n in names]
        self.inputs = resolve_inputs(found, cfg.inputs, where=str(path))
        self.output_names = sorted(self.function.structured_outputs, key=_natural)

    @staticmethod
    def _spec(name: str, spec: tf.TensorSpec) -> TensorSpec:
        dims = tuple(d if d is not None else ("batch" if i == 0 else f"{name}_dim{i}")
                     for i, d in enumerate(spec.shape.as_list()))
        return TensorSpec(name, spec.dtype.as_numpy_dtype.__name__ if spec.dtype != tf.bool else "bool", dims)

    def run(self, arrays: Arrays) -> list[np.ndarray]:
        try:
            if self.keras_model is not None:  # the user's Keras model itself is the reference
                names = [s.name for s in self.inputs]
                x = arrays[names[0]] if len(names) == 1 else {n: arrays[n] for n in names}
                out = self.keras_model(x, training=False)
                values = ({k: out[k] for k in self.output_names} if isinstance(out, Mapping)
                          else dict(zip(self.output_names, tf.nest.flatten(out))))
            else:
                values = self.function(**{k: tf.constant(v) for k, v in arrays.items()})
        except Exception as e:
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
            raise UsageError(f"the model rejects the declared inputs ({shapes}): {type(e).__name__}: "
                             f"{first_line(e)}", hint="fix `inputs:` in mldeploy.yaml") from None
        return [np.asarray(values[k]) for k in self.output_names]

    def exports(self, dest: Path, opset: int) -> Iterator[Export | ExportFailed]:
        """The signature frozen (variables and captured constants made constants), then the function as is."""
        import tf2onnx

        opset = min(opset, max(tf2onnx.constants.OPSET_TO_IR_VERSION))
        spec = [tf.TensorSpec(self.function.structured_input_signature[1][s.name].shape,
                              self.function.structured_input_signature[1][s.name].dtype, name=s.name)
                for s in self.inputs]
        function, names = self.function, [s.name for s in self.inputs]

        @tf.function(input_signature=spec)
        def serving(*args: tf.Tensor) -> Any:
            return function(**dict(zip(names, args)))

        def frozen(path: Path) -> None:
            graph_def, inputs, outputs = self._frozen(serving.get_concrete_function())
            tf2onnx.convert.from_graph_def(graph_def, input_names=list(inputs), output_names=list(outputs),
                                           opset=opset, tensors_to_rename={**inputs, **outputs},
                                           output_path=str(path))

        def traced(path: Path) -> None:
            tf2onnx.convert.from_function(serving, input_signature=spec, opset=opset, output_path=str(path))

        for name, export in (("tf2onnx", frozen), ("tf2onnx-function", traced)):
            path = dest / f"model.{name}.onnx"
            start = time.perf_counter()
            with captured() as log:
                try:
                    export(path)
                    error = None
                except Exception as e:
                    error = e
            if error is None:
                yield Export(name, path, time.perf_counter() - start, log.getvalue())
            else:
                yield ExportFailed(name, first_line(error), getattr(error, "operator", None) or
                                   operator_in(str(error) + log.getvalue()), log.getvalue())

    def _frozen(self, concrete: Any) -> tuple:
        """The graph with every captured variable and constant folded in: the signature's inputs are its only
        placeholders (a SavedModel's loaded functions capture their weights, which tf2onnx would make inputs).
        Returns (graph_def, {tensor: input name}, {tensor: output name})."""
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        frozen = convert_variables_to_constants_v2(concrete)
        graph_def = frozen.graph.as_graph_def()
        inputs = [t.name for t in frozen.inputs]
        if len(inputs) != len(self.inputs):  # a resource that cannot be a constant: a lookup table, a queue
            handles, users = {t.split(":")[0] for t in inputs[len(self.inputs):]}, set[str]()
            for node in graph_def.node:  # in graph order: a handle passes through Identity ops to its user
                if any(i.split(":")[0].lstrip("^") in handles for i in node.input):
                    (handles if node.op == "Identity" else users).add(node.name if node.op == "Identity" else node.op)
            named = sorted(users)
            error = UsageError(f"the signature uses a resource ONNX cannot hold ({', '.join(named) or 'unknown'})")
            error.operator = named[0] if named else None
            raise error
        structured = frozen.structured_outputs
        keys = sorted(structured) if isinstance(structured, Mapping) else self.output_names
        by_key = dict(zip(keys, tf.nest.flatten(structured)))
        outputs = {by_key[k].name: k for k in self.output_names}
        return graph_def, dict(zip(inputs, (s.name for s in self.inputs))), outputs

    def native(self, dest: Path) -> dict[str, str]:
        written = {"savedmodel": self.saved_model.name}
        if self.cfg.model.tflite:
            with captured():
                converter = tf.lite.TFLiteConverter.from_saved_model(str(self.saved_model))
                (dest / "model.tflite").write_bytes(converter.convert())
            written["tflite"] = "model.tflite"
        return written
