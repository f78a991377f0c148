"""KServe's Python ModelServer with a custom Model (the v1 protocol), as its docs show.

    BENCH_MODEL=model.onnx python kserve_server.py --http_port 8080 --workers 2 --enable_grpc false
    POST /v1/models/model:predict {"instances": [[...]]} -> {"predictions": [[...]]}
"""

import os

import numpy as np
import onnxruntime as ort
from kserve import Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.ready = True
        return True

    # With workers > 1 KServe pickles the model into spawned worker processes, and an ORT session
    # cannot be pickled: drop it here and load it again on the other side.
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.load()

    def predict(self, payload, headers=None):
        x = np.array(payload["instances"], dtype=np.float32)
        return {"predictions": self.session.run(None, {self.input_name: x})[0].tolist()}


if __name__ == "__main__":
    # Port, workers, gRPC and logging come from KServe's own flags (kserve.model_server.parser).
    ModelServer().start([OnnxModel("model", os.environ["BENCH_MODEL"])])
