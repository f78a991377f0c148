"""A custom MLServer runtime for ONNX models (MLServer 1.7 ships none), the V2 inference protocol.

The benchmark writes settings.json (parallel_workers=2, ports) and model-settings.json
(implementation "mlserver_runtime.OnnxModel", parameters.uri = the .onnx file) into a folder and
runs `mlserver start FOLDER` with this folder on PYTHONPATH.
    POST /v2/models/model/infer {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [...]}]}
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self.decode(payload.inputs[0], default_codec=NumpyCodec).astype(np.float32, copy=False)
        y = self._session.run(None, {self._input_name: x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output", y)])
