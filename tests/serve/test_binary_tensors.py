"""Triton's binary tensor extension of the HTTP v2 protocol, proven with tritonclient.http
(binary_data=True on inputs and outputs) against a real `mldeploy serve`, and its strict size checks
with hand-made bodies. The model: x float32 [batch, 4], k int64 [batch, 1] -> logits, picked.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tests.helpers.models import TABLE, B, W
from tests.helpers.need import need
from tests.helpers.server import API_KEY

X = np.array([[1, 2, 3, 4], [0.5, -1, 0, 2], [0, 0, 0, 1]], np.float32)
K = np.array([[3], [9], [0]], np.int64)


def auth() -> dict[str, str]:
    return {"authorization": f"Bearer {API_KEY}"}  # a new dict each call: tritonclient adds its headers to it


@pytest.fixture(scope="module")
def th():
    return need("tritonclient.http", "pip install -e '.[dev]' installs tritonclient")


@pytest.fixture(scope="module")
def client(th, oip_server):
    c = th.InferenceServerClient(f"127.0.0.1:{oip_server.port}")
    yield c
    c.close()


def inputs(th, binary_x=True, binary_k=True):
    ix, ik = th.InferInput("x", list(X.shape), "FP32"), th.InferInput("k", list(K.shape), "INT64")
    ix.set_data_from_numpy(X, binary_data=binary_x)
    ik.set_data_from_numpy(K, binary_data=binary_k)
    return [ix, ik]


def check(result) -> None:
    np.testing.assert_allclose(result.as_numpy("logits"), X @ W + B, rtol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("picked"), TABLE[K])


def test_binary_inputs_and_outputs(th, client):
    outputs = [th.InferRequestedOutput("logits", binary_data=True), th.InferRequestedOutput("picked", binary_data=True)]
    result = client.infer("model", inputs(th), outputs=outputs, headers=auth())
    check(result)
    sizes = [o["parameters"]["binary_data_size"] for o in result.get_response()["outputs"]]
    assert sizes == [3 * 3 * 4, 3 * 1 * 2 * 4] and all("data" not in o for o in result.get_response()["outputs"])


def test_mixed_binary_and_json_tensors(th, client):
    """One input binary, one as JSON data; one output binary, one as JSON data."""
    outputs = [th.InferRequestedOutput("logits", binary_data=False), th.InferRequestedOutput("picked", binary_data=True)]
    result = client.infer("model", inputs(th, binary_k=False), outputs=outputs, headers=auth())
    check(result)
    logits, picked = result.get_response()["outputs"]
    assert "data" in logits and picked["parameters"]["binary_data_size"] == 24


def test_json_request_asking_binary_output(th, client):
    """No output named: tritonclient asks binary_data_output for all, with a plain JSON body."""
    result = client.infer("model", inputs(th, binary_x=False, binary_k=False), headers=auth())
    check(result)
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


def test_server_metadata_announces_the_extension(client):
    assert "binary_tensor_data" in client.get_server_metadata(headers=auth())["extensions"]


# -- strict sizes, with hand-made bodies -------------------------------------------------------------
def body(x_size=None, k_size=None, x=None, k=None, extra=b"", header=None, **x_fields):
    x, k = X.tobytes() if x is None else x, K.tobytes() if k is None else k
    doc = {"inputs": [
        {"name": "x", "shape": list(X.shape), "datatype": "FP32",
         "parameters": {"binary_data_size": len(x) if x_size is None else x_size}, **x_fields},
        {"name": "k", "shape": list(K.shape), "datatype": "INT64",
         "parameters": {"binary_data_size": len(k) if k_size is None else k_size}}]}
    head = json.dumps(doc).encode() if header is None else header
    return head, head + x + k + extra


BAD = {  # name: ((json header, body), header value or None for its true length, words of the one line)
    "x one byte short": (body(x=X.tobytes()[:-1]), None, "needs 48 bytes, got 47"),
    "sizes sum past the end": (body(k_size=25), None, "runs past the end of the body"),
    "bytes left over": (body(extra=b"\0"), None, "1 bytes after the inference header"),
    "size says less than sent": (body(x_size=44), None, "needs 48 bytes, got 44"),
    "negative size": (body(x_size=-1), None, "non-negative integer"),
    "size not a number": (body(x_size="48"), None, "non-negative integer"),
    "header length not a number": (body(), "12abc", "is not a byte count"),
    "header length past the body": (body(), "999999", "is not a byte count"),
    "header not JSON": (body(), "5", "is not JSON"),
    "data and binary size": (body(data=[1, 2]), None, 'both "data" and binary_data_size'),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_wrong_sizes_are_400_in_one_line(oip_server, name):
    (head, payload), length, words = BAD[name]
    reply = oip_server.call("POST", "/v2/models/model/infer", payload,
                            {**auth(), "inference-header-content-length": length or str(len(head))})
    assert reply.status == 400, (reply.status, reply.body[:300])
    message = reply.json()["error"]
    assert words in message and "\n" not in message, message


def test_bytes_tensors_round_trip_and_lying_lengths():
    """BYTES elements are 4-byte little-endian lengths and their bytes: decoded exactly, and a length
    that runs past the data, bytes left over, or a count that cannot fit are one line each."""
    from mldeploy.serve.binary import from_raw, to_raw
    from mldeploy.serve.codec import BadRequest

    words = np.array(["", "héllo", "a" * 300], dtype=object)
    datatype, raw = to_raw(words)
    assert datatype == "BYTES" and raw[:4] == struct.pack("<I", 0)
    assert from_raw(raw, "BYTES", [3], "s").tolist() == words.tolist()
    for data, shape, problem in [(raw[:-1], [3], "claims 300 bytes, 299 remain"), (raw + b"x", [3], "left over"),
                                 (raw, [10**12], "need at least"), (struct.pack("<I", 1) + b"\xff", [1], "not UTF-8")]:
        with pytest.raises(BadRequest, match=problem):
            from_raw(data, "BYTES", shape, "s")
    assert to_raw(np.array([True, False]))[1] == b"\x01\x00"
    with pytest.raises(BadRequest, match="BOOL bytes must be 0 or 1"):
        from_raw(b"\x02", "BOOL", [1], "b")
    half = np.array([1.5, -2], np.float16)
    assert from_raw(to_raw(half)[1], "FP16", [2], "h").tolist() == half.tolist()
