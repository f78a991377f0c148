"""BentoML 1.4 service, written as its docs show (a class, np.ndarray in and out).

    BENCH_MODEL=model.onnx bentoml serve bentoml_service:Model --port 3000
    POST /predict {"inputs": [[...]]} -> [[...]]
"""

import os

import bentoml
import numpy as np
import onnxruntime as ort


# 2 worker processes like every server here; access logging off, as in production.
@bentoml.service(workers=2, logging={"access": {"enabled": False}})
class Model:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @bentoml.api
    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: inputs.astype(np.float32)})[0]
