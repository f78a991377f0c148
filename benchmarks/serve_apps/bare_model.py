"""The model half of the bare baselines: one ONNX Runtime session per worker process.

Reads the model path from BENCH_MODEL. One intra-op thread per process, as in every server of
the benchmark, so that 2 workers use the 2 cores and the comparison is about the serving stack.
"""

import os

import numpy as np
import onnxruntime as ort
import orjson

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["BENCH_MODEL"], _options, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name


def predict(body: bytes) -> bytes:
    """{"inputs": [[...]]} -> {"outputs": [[...]]}, the same JSON as `mldeploy serve`."""
    x = np.asarray(orjson.loads(body)["inputs"], dtype=np.float32)
    y = session.run(None, {input_name: x})[0]
    return orjson.dumps({"outputs": y}, option=orjson.OPT_SERIALIZE_NUMPY)
