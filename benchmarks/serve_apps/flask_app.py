"""Flask + ONNX Runtime the way a naive user writes it (the point of this row: no tuning).

    BENCH_MODEL=model.onnx flask --app flask_app run                 # the dev server
    BENCH_MODEL=model.onnx gunicorn --workers 2 flask_app:app        # sync workers
"""

import os

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request

# The one thing not naive: 1 intra-op thread, like every other server here, so that the comparison
# is about the serving stack and not about ORT's thread pools fighting over 2 cores.
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name

app = Flask(__name__)


@app.post("/predict")
def predict():
    x = np.array(request.get_json()["inputs"], dtype=np.float32)
    y = session.run(None, {input_name: x})[0]
    return jsonify({"outputs": y.tolist()})
