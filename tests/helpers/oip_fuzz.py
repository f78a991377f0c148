"""Generated gRPC ModelInfer calls and binary-tensor HTTP bodies, for test_fuzz_no_server_errors.

Schemathesis builds requests from /openapi.json, which describes neither gRPC nor the binary tensor
extension, so these come from Hypothesis strategies of their own: mostly well-formed, with names,
datatypes, shapes, byte counts, typed contents and header lengths drawn near and past what is valid
(so most requests get deep into the checks, and some reach the model), plus messages that are not
protobuf at all. What counts is the answer's class: a gRPC INTERNAL or UNKNOWN, an HTTP status >= 500
or a lost connection is a server error; every other answer is fine.
"""

from __future__ import annotations

import http.client
import json
import math
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

INPUTS = {"x": ("FP32", 4), "k": ("INT64", 1)}  # the fuzzed model's inputs: name -> (datatype, row width)
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES", "FP8", "", "fp32"]
ITEM = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "UINT32": 4, "INT32": 4, "FP32": 4,
        "UINT64": 8, "INT64": 8, "FP64": 8}
FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents", "fp32_contents",
          "fp64_contents", "bytes_contents"]
SERVER_ERRORS = {"INTERNAL", "UNKNOWN"}


def rarely(draw, one_in: int = 6) -> bool:
    """True about once in `one_in` draws (Hypothesis leans to small integers: the common case is 0)."""
    return draw(st.integers(0, one_in - 1)) == one_in - 1


@st.composite
def tensors(draw) -> list[dict]:
    """Input tensors: the model's own (right or wrong in one or two ways) or made-up ones."""
    rows = draw(st.sampled_from([0, 2**31, 2**62])) if rarely(draw) else draw(st.integers(1, 4))
    chosen = draw(st.sampled_from([["k", "x"], ["x"], ["x", "k", "x"], ["y"], []])) if rarely(draw) else ["x", "k"]
    out = []
    for name in chosen:
        datatype, width = INPUTS.get(name, ("FP32", 4))
        shape = [rows, width]
        if rarely(draw):
            datatype = draw(st.sampled_from(DATATYPES))
        if rarely(draw):
            shape = draw(st.lists(st.integers(-2, 6) | st.sampled_from([2**31, 2**63 - 1]), max_size=4))
        if rarely(draw, 10):
            name = draw(st.sampled_from(["", "x\0", "y"]))
        out.append({"name": name, "datatype": datatype, "shape": shape})
    return out


@st.composite
def raw_bytes(draw, tensor: dict) -> bytes:
    """Bytes for a tensor: exactly what its shape needs (drawn values), or a few bytes off."""
    count = math.prod(tensor["shape"]) if all(d >= 0 for d in tensor["shape"]) else -1
    size = count * ITEM.get(tensor["datatype"], 4)
    if 0 <= size <= 4096 and not rarely(draw):
        if tensor["datatype"] == "BYTES":
            return b"".join(len(v).to_bytes(4, "little") + v for v in
                            draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count)))
        data = draw(st.binary(min_size=size, max_size=size))
        if tensor["datatype"] == "INT64" and not rarely(draw, 3):  # indices the model's table has, mostly
            data = np.frombuffer(data, np.uint8).astype(np.int64)[: count] % 12
            return data.tobytes() + b"\0" * (size - data.nbytes)
        if tensor["datatype"] == "FP32" and not rarely(draw, 3):  # finite numbers, so the model runs
            return np.linspace(-1, 1, count, dtype=np.float32).tobytes()
        return data
    return draw(st.binary(max_size=64))


@st.composite
def grpc_requests(draw, message) -> bytes:
    """A serialized ModelInferRequest (raw or typed contents), or bytes that are not one."""
    if rarely(draw, 20):
        return draw(st.binary(max_size=64))
    request = message(model_name=draw(st.sampled_from(["other", ""])) if rarely(draw, 10) else "model",
                      model_version="1" if rarely(draw, 10) else "", id=draw(st.sampled_from(["", "fuzz"])))
    inputs = draw(tensors())
    raw = draw(st.booleans())
    for t in inputs:
        tensor = request.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        if raw:
            request.raw_input_contents.append(draw(raw_bytes(t)))
        else:
            field = {"FP32": "fp32_contents", "INT64": "int64_contents"}.get(t["datatype"], "fp32_contents")
            if rarely(draw):
                field = draw(st.sampled_from(FIELDS))
            count = math.prod(t["shape"]) if all(0 <= d < 64 for d in t["shape"]) else draw(st.integers(0, 9))
            values = draw(_values(field, draw(st.integers(0, 9)) if rarely(draw) else count))
            getattr(tensor.contents, field).extend(values)
    if raw and rarely(draw, 10):
        request.raw_input_contents.append(b"")  # one entry too many
    for name in draw(st.lists(st.sampled_from(["logits", "picked", "nope"]), max_size=2)):
        request.outputs.add(name=name)
    return request.SerializeToString()


def _values(field: str, count: int):
    value = {"bool_contents": st.booleans(), "int_contents": st.integers(-(2**31), 2**31 - 1),
             "int64_contents": st.integers(0, 9) | st.integers(-(2**63), 2**63 - 1),
             "uint_contents": st.integers(0, 2**32 - 1), "uint64_contents": st.integers(0, 2**64 - 1),
             "fp32_contents": st.floats(-10, 10, width=32) | st.floats(width=32), "fp64_contents": st.floats(),
             "bytes_contents": st.binary(max_size=6)}[field]
    return st.lists(value, min_size=count, max_size=count)


@st.composite
def binary_bodies(draw) -> tuple[bytes, str]:
    """(body, Inference-Header-Content-Length) of a v2 infer request in the binary form."""
    inputs = draw(tensors())
    chunks = []
    for t in inputs:
        if not rarely(draw):
            data = draw(raw_bytes(t))
            size = draw(st.integers(-1, 80) | st.sampled_from(["8", None])) if rarely(draw) else len(data)
            t["parameters"] = {"binary_data_size": size}
            chunks.append(data)
        else:
            t["data"] = draw(st.lists(st.integers(0, 9), max_size=8))
    doc = {"inputs": inputs}
    if draw(st.booleans()):
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": draw(st.sampled_from([True, False, 1, None]))}}
                          for n in draw(st.lists(st.sampled_from(["logits", "picked", "nope"]), max_size=2))]
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.sampled_from([True, False, "yes"]))}
    head = json.dumps(doc).encode()
    length = str(len(head))
    if rarely(draw, 10):
        length = draw(st.sampled_from(["0", "-1", "abc", str(len(head) + 1), str(len(head) - 1), "9" * 30]))
    return head + b"".join(chunks), length


def fuzz(http_port: int, grpc_port: int, examples: int) -> tuple[Counter, Counter, list[str]]:
    """Send `examples` generated gRPC calls and as many binary bodies; (gRPC codes, HTTP statuses,
    a reproduction of every server error)."""
    import grpc

    from mldeploy.serve.grpc_proto import message

    request_type = message("ModelInferRequest")
    codes, statuses, failures = Counter(), Counter(), []
    common = settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck), print_blob=False)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        @seed(19)
        @common
        @given(raw=grpc_requests(request_type))
        def one_call(raw: bytes) -> None:
            try:
                infer(raw, timeout=30)
                codes["OK"] += 1
            except grpc.RpcError as e:
                codes[e.code().name] += 1
                if e.code().name in SERVER_ERRORS or e.code() == grpc.StatusCode.UNAVAILABLE:
                    failures.append(f"gRPC ModelInfer -> {e.code().name} {e.details()}\n  message: {raw[:300]!r}")

        one_call()

    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)

    @seed(20)
    @common
    @given(case=binary_bodies())
    def one_body(case: tuple[bytes, str]) -> None:
        nonlocal conn
        body, length = case
        try:
            conn.request("POST", "/v2/models/model/infer", body, {"inference-header-content-length": length})
            reply = conn.getresponse()
            answer = reply.read()
        except OSError as e:
            failures.append(f"binary body -> {type(e).__name__}: {e}\n  length {length}, body {body[:300]!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
            return
        statuses[reply.status] += 1
        if reply.status >= 500:
            failures.append(f"binary body -> {reply.status} {answer[:300]!r}\n  length {length}, body {body[:300]!r}")
        if reply.getheader("connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)

    one_body()
    conn.close()
    return codes, statuses, failures
