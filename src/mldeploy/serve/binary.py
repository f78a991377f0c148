"""Tensors as raw bytes: Triton's binary tensor extension of the HTTP v2 protocol, and the raw
contents gRPC carries (raw_input_contents / raw_output_contents), which share one byte layout.

A tensor's bytes are its elements in row-major order, little-endian, with no padding; a BYTES
element is a 4-byte little-endian length followed by that many bytes. Sizes are checked against
the shape before anything is allocated, and must add up exactly: a body with a byte too many or
too few is refused with one line saying which tensor and by how much.

HTTP: a request with `Inference-Header-Content-Length: N` is N bytes of v2 JSON, then the binary
data of every input whose parameters give `binary_data_size`, in the order of "inputs". Outputs
asked with `parameters.binary_data_output` or an output's `binary_data: true` come back the same
way, with the response's own Inference-Header-Content-Length.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import orjson

from mldeploy.serve import codec
from mldeploy.serve.codec import V2_DTYPES, V2_NAMES, BadRequest, Call
from mldeploy.serve.model import Model

EXTENSIONS = ["binary_tensor_data"]  # Triton's name for it: what GET /v2 and gRPC's ServerMetadata announce
HEADER = "inference-header-content-length"
OCTETS = "application/octet-stream"
# the v2 datatypes as little-endian numpy dtypes; BYTES is length-prefixed, not fixed-size
RAW = {name: np.dtype(dtype).newbyteorder("<") for name, dtype in V2_DTYPES.items() if name != "BYTES"}
_LENGTH = struct.Struct("<I")


def from_raw(data: bytes | memoryview, datatype: object, shape: object, where: str) -> np.ndarray:
    """The flat tensor the bytes hold (reshaped later, with the v2 checks); BadRequest unless the byte
    count is exactly what the shape and datatype need."""
    if not isinstance(datatype, str) or datatype not in V2_DTYPES:
        raise BadRequest(f"input {where!r}: datatype {datatype!r} is not one of {', '.join(V2_DTYPES)}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise BadRequest(f"input {where!r}: \"shape\" must be a list of non-negative integers")
    count = math.prod(shape)
    if datatype == "BYTES":
        return _strings(data, count, where)
    dtype = RAW[datatype]
    need = count * dtype.itemsize
    if len(data) != need:
        raise BadRequest(f"input {where!r}: shape {shape} of {datatype} needs {need:,} bytes, got {len(data):,}")
    arr = np.frombuffer(data, dtype=dtype)
    if datatype == "BOOL" and arr.size and np.frombuffer(data, np.uint8).max() > 1:
        raise BadRequest(f"input {where!r}: BOOL bytes must be 0 or 1")
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _strings(data: bytes | memoryview, count: int, where: str) -> np.ndarray:
    if count * _LENGTH.size > len(data):  # every element takes 4 bytes at least: no loop over a lie
        raise BadRequest(f"input {where!r}: {count:,} BYTES elements need at least {count * 4:,} bytes, "
                         f"got {len(data):,}")
    out, offset, view = [], 0, memoryview(data)
    for i in range(count):
        if offset + 4 > len(view):
            raise BadRequest(f"input {where!r}: BYTES element {i} has no length (the data ends at byte {offset:,})")
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + size > len(view):
            raise BadRequest(f"input {where!r}: BYTES element {i} claims {size:,} bytes, "
                             f"{len(view) - offset:,} remain")
        try:
            out.append(str(view[offset:offset + size], "utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"input {where!r}: BYTES element {i} is not UTF-8 text") from None
        offset += size
    if offset != len(view):
        raise BadRequest(f"input {where!r}: {len(view) - offset:,} bytes left over after {count:,} BYTES elements")
    return np.array(out, dtype=str) if out else np.zeros(0, dtype=str)


def datatype(arr: np.ndarray) -> str:
    """The v2 datatype of an array."""
    return "BYTES" if arr.dtype.kind in "OUS" else V2_NAMES.get(arr.dtype.name, arr.dtype.name.upper())


def to_raw(arr: np.ndarray) -> tuple[str, bytes]:
    """(v2 datatype, bytes) of an output."""
    if arr.dtype.kind in "OUS":
        parts = []
        for value in arr.reshape(-1).tolist():
            b = value if isinstance(value, bytes) else str(value).encode()
            parts += [_LENGTH.pack(len(b)), b]
        return "BYTES", b"".join(parts)
    return datatype(arr), np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


# -- HTTP ---------------------------------------------------------------------------------------
def decode(body: bytes, header_length: str, model: Model, allow_nonfinite: bool) -> Call:
    """A v2 request in the binary form: JSON header, then the inputs' bytes."""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length[:40]!r} is not a byte count "
                         f"within the {len(body):,}-byte body")
    split = int(header_length)
    try:
        doc = orjson.loads(memoryview(body)[:split])
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"the inference header (the first {split:,} bytes) is not JSON: {e}") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise BadRequest('the inference header must be a JSON object with "inputs": [{"name", "shape", "datatype", ...}]')
    tensors, offset, view = [], split, memoryview(body)
    for n, tensor in enumerate(inputs):
        parameters = tensor.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise BadRequest(f"inputs[{n}] parameters must be a JSON object")
        if not parameters or "binary_data_size" not in parameters:
            continue
        size, name = parameters["binary_data_size"], str(tensor.get("name"))[:100]
        if type(size) is not int or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise BadRequest(f"input {name!r} has both \"data\" and binary_data_size")
        if offset + size > len(body):
            raise BadRequest(f"input {name!r}: binary_data_size {size:,} runs past the end of the body "
                             f"({len(body) - offset:,} bytes remain)")
        tensors.append(from_raw(view[offset:offset + size], tensor.get("datatype"), tensor.get("shape"), name))
        offset += size
    if offset != len(body):
        raise BadRequest(f"the body has {len(body) - offset:,} bytes after the inference header and the "
                         f"binary_data_size of every input")
    return codec.v2_call(doc, model, allow_nonfinite, tensors)


class Split(str):
    """The content type of a binary answer, carrying where its JSON header ends (the response's
    Inference-Header-Content-Length): so the HTTP layer's (content type, body) pair stays as it is."""

    header_length: int


def headers(ctype: str) -> tuple[tuple[str, str], ...]:
    """The response headers a content type from encode() brings with it."""
    return ((HEADER, str(ctype.header_length)),) if type(ctype) is Split else ()


def encode(call: Call, outputs: list[np.ndarray], model: Model) -> tuple[str, bytes]:
    """(content type, body): the binary form when outputs were asked for as binary, else codec.encode's."""
    if not call.binary_outputs or call.form != "v2":
        return codec.encode(call, outputs, model)
    tensors, chunks = [], []
    for name, arr in codec.v2_outputs(call, outputs, model):
        if name in call.binary_outputs:
            datatype, raw = to_raw(arr)
            tensors.append({"name": name, "shape": list(arr.shape), "datatype": datatype,
                            "parameters": {"binary_data_size": len(raw)}})
            chunks.append(raw)
        else:
            tensors.append(codec.v2_tensor(name, arr))
    head = codec.dumps(codec.v2_response(call, tensors, model))
    ctype = Split(OCTETS)
    ctype.header_length = len(head)
    return ctype, b"".join([head, *chunks])
