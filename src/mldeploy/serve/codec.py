"""Request bodies to validated numpy arrays, and model outputs back to bodies.

Every request form the clouds use arrives here; every way a body can be wrong ends in BadRequest
with a message naming the input and what was expected. Conversion is numpy's own (no Python loop
over values), and orjson writes numpy arrays directly.

  {"instances": [row, ...], "parameters": {...}}   Vertex AI, TF Serving row form -> {"predictions": [...]}
  {"inputs": value | {name: value}}                columnar (also "input", and Azure's "data") -> {"outputs": ...}
  {"inputs": [{"name", "shape", "datatype", "data"}]}  Open Inference Protocol v2 -> {"outputs": [...]}
  text/csv, application/x-npy                      SageMaker's other content types (one input)
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from mldeploy.bundle import TensorSpec
from mldeploy.serve.model import Model, plain

JSON, CSV, NPY = "application/json", "text/csv", "application/x-npy"
V2_DTYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
             "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
             "FP32": "float32", "FP64": "float64", "BYTES": "string"}
V2_NAMES = {v: k for k, v in V2_DTYPES.items()}
_KIND = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "O": "strings", "U": "strings"}
_OPTS = orjson.OPT_SERIALIZE_NUMPY


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        message = plain(message, 1000)  # parsers' messages may carry addresses; ours stay as they are
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Call:
    """One decoded request: what to run and how to answer."""
    feeds: dict[str, np.ndarray]
    rows: int
    form: str                      # instances | columnar | v2 | csv | npy
    accept: str                    # the response's content type
    v2_id: str | None = None
    v2_outputs: list[str] | None = None
    binary_outputs: frozenset[str] = frozenset()  # v2 outputs to send as raw bytes (binary tensor extension)


def decode(body: bytes, content_type: str, accept: str, model: Model, allow_nonfinite: bool,
           v2_only: bool = False) -> Call:
    ctype = content_type.split(";", 1)[0].strip().lower()
    if not body:
        raise BadRequest("the request body is empty (send JSON, CSV or .npy; see /openapi.json)")
    if ctype == CSV and not v2_only:
        return _one_input(_csv(body, model.dtypes[0]), "csv", model, allow_nonfinite, _accept(accept, CSV))
    if ctype == NPY and not v2_only:
        value = _npy(body)
        return _one_input(value, "npy", model, allow_nonfinite, _accept(accept, NPY))
    try:  # any other content type is read as JSON: `curl -d` and many SDKs label JSON loosely
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if ctype and ctype != JSON and not ctype.endswith("+json") and body.lstrip()[:1] not in (b"{", b"["):
            raise BadRequest(f"unsupported content type {ctype!r} (send application/json"
                             f"{'' if v2_only else ', text/csv or application/x-npy'})", 415) from None
        raise BadRequest(f"malformed JSON: {e}") from None
    if isinstance(doc, list) and not v2_only:  # a bare list of rows, as SageMaker's JSONSerializer sends
        return _instances(doc, None, model, allow_nonfinite, _accept(accept, JSON))
    if not isinstance(doc, dict):
        raise BadRequest(f"expected a JSON object, got {type(doc).__name__}")
    inputs = doc.get("inputs")
    if v2_only or (isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) and "datatype" in inputs[0]):
        return v2_call(doc, model, allow_nonfinite)
    json_accept = _accept(accept, JSON)
    if "instances" in doc:
        return _instances(doc["instances"], doc.get("parameters"), model, allow_nonfinite, json_accept)
    for key in ("inputs", "input", "data"):
        if key in doc:
            value = doc[key]
            if isinstance(value, dict):
                feeds = _named(value, model, allow_nonfinite, key)
                return Call(feeds, rows(feeds, model), "columnar", json_accept)
            return _one_input(value, "columnar", model, allow_nonfinite, json_accept, key)
    raise BadRequest('expected a JSON object with "instances", "inputs" or "input" (see /openapi.json)')


def _accept(header: str, default: str) -> str:
    header = header.lower()
    for ctype in (JSON, CSV, NPY):
        if ctype in header:
            return ctype
    return default  # absent or */*: answer in the request's own type


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _one_input(value: object, form: str, model: Model, allow_nonfinite: bool, accept: str,
               key: str = "inputs") -> Call:
    if len(model.signature.inputs) != 1:
        names = ", ".join(t.name for t in model.signature.inputs)
        raise BadRequest(f"the model takes {len(model.signature.inputs)} inputs ({names}): "
                         f'send JSON {{"{key}": {{"name": value, ...}}}}')
    spec, dtype = model.signature.inputs[0], model.dtypes[0]
    arr = array(value, spec, dtype, allow_nonfinite, spec.name)
    if form == "csv" and arr.ndim == 2 and len(spec.shape) > 2:
        arr = _reshape_rows(arr, spec)  # CSV rows are flat; images and sequences fold back
    batch = model.signature.batch_dim
    check_shape(arr, spec, batch, spec.name)
    return Call({spec.name: arr}, arr.shape[0] if batch and spec.shape[0] == batch else 1, form, accept)


def _named(values: dict, model: Model, allow_nonfinite: bool, key: str) -> dict[str, np.ndarray]:
    specs = model.signature.inputs
    unknown = [k for k in values if not any(k == t.name for t in specs)]
    if unknown:
        raise BadRequest(f"unknown input {unknown[0]!r} in {key!r} (the model takes: {_names(model)})")
    feeds = {}
    for spec, dtype in zip(specs, model.dtypes):
        if spec.name not in values:
            raise BadRequest(f"missing input {spec.name!r} (the model takes: {_names(model)})")
        arr = array(values[spec.name], spec, dtype, allow_nonfinite, spec.name)
        check_shape(arr, spec, model.signature.batch_dim, spec.name)
        feeds[spec.name] = arr
    return feeds


def _instances(instances: object, parameters: object, model: Model, allow_nonfinite: bool, accept: str) -> Call:
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list, one item per row')
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest('"parameters" must be a JSON object')
    batch = model.signature.batch_dim
    if not batch:
        raise BadRequest(f"this model has a fixed batch; send {{\"inputs\": ...}} (it takes: {_names(model)})")
    feeds = {}
    by_name = isinstance(instances[0], dict)
    for spec, dtype in zip(model.signature.inputs, model.dtypes):
        if by_name:
            if not all(isinstance(i, dict) for i in instances):
                raise BadRequest("mixed instances: every instance must be an object, or none")
            missing = next((n for n, i in enumerate(instances) if spec.name not in i), None)
            if missing is not None:
                raise BadRequest(f"instance {missing} has no input {spec.name!r} (the model takes: {_names(model)})")
            column = [i[spec.name] for i in instances]
        elif len(model.signature.inputs) == 1:
            column = instances
        else:
            raise BadRequest(f"the model takes several inputs: each instance must be an object with {_names(model)}")
        arr = array(column, spec, dtype, allow_nonfinite, spec.name)
        check_shape(arr, spec, batch, spec.name, per_instance=True)
        feeds[spec.name] = arr
    if by_name:
        extra = set().union(*instances) - {t.name for t in model.signature.inputs}
        if extra:
            raise BadRequest(f"unknown input {min(extra)!r} in instances (the model takes: {_names(model)})")
    return Call(feeds, len(instances), "instances", accept)


def v2_call(doc: dict, model: Model, allow_nonfinite: bool, binary: list[np.ndarray] | None = None) -> Call:
    """A v2 request's JSON. binary: the tensors of the binary extension's body, in order, for inputs that give binary_data_size."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise BadRequest('"inputs" must be a non-empty list of {"name", "shape", "datatype", "data"}')
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    tensors = []
    pending = iter(binary or ())
    for tensor in inputs:
        if binary is not None and "binary_data_size" in (tensor.get("parameters") or {}):
            data = next(pending)
        else:
            data = tensor.get("data", _MISSING)
        tensors.append((tensor.get("name"), tensor.get("datatype"), tensor.get("shape"), data))
    feeds = v2_feeds(tensors, model, allow_nonfinite)
    wanted = doc.get("outputs")
    names = None
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
            raise BadRequest('"outputs" must be a list of {"name": ...}')
        names = v2_output_names([o["name"] for o in wanted], model)
    call = Call(feeds, rows(feeds, model), "v2", JSON, request_id, names)
    call.binary_outputs = _binary_outputs(doc, wanted or [], names or [t.name for t in model.signature.outputs])
    return call


_MISSING = object()


def v2_feeds(tensors: Sequence[tuple[object, object, object, object]], model: Model, allow_nonfinite: bool) -> dict[str, np.ndarray]:
    """Validated feeds from v2 input tensors (name, datatype, shape, data), whatever carried them: data
    is a JSON value, an array read from raw bytes (the binary extension), or a function giving one,
    called once name, datatype and shape are known good (gRPC's contents: errors come in one order)."""
    values = {}
    for n, (name, datatype, shape, data) in enumerate(tensors):
        if not isinstance(name, str):
            raise BadRequest(f"inputs[{n}] has no \"name\"")
        spec = next((t for t in model.signature.inputs if t.name == name), None)
        if spec is None:
            raise BadRequest(f"unknown input {name!r} (the model takes: {_names(model)})")
        if name in values:
            raise BadRequest(f"input {name!r} is given twice")
        if not isinstance(datatype, str) or datatype not in V2_DTYPES:
            raise BadRequest(f"inputs[{n}] ({name}): datatype {datatype!r} is not one of {', '.join(V2_DTYPES)}")
        if _family(V2_DTYPES[datatype]) != _family(spec.dtype):
            raise BadRequest(f"input {name!r} is {V2_NAMES[spec.dtype]}, not {datatype}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise BadRequest(f"inputs[{n}] ({name}): \"shape\" must be a list of non-negative integers")
        if data is _MISSING:
            raise BadRequest(f"inputs[{n}] ({name}) has no \"data\"")
        dtype = model.dtypes[model.signature.inputs.index(spec)]
        arr = array(data() if callable(data) else data, spec, dtype, allow_nonfinite, name)
        if list(arr.shape) != shape:
            if arr.size != math.prod(shape):  # exact integers: a huge shape cannot wrap around
                raise BadRequest(f"input {name!r}: shape {shape} needs {math.prod(shape)} values, "
                                 f"data has {arr.size}")
            try:
                arr = arr.reshape(shape)
            except ValueError as e:  # e.g. an empty array and dims numpy cannot even represent
                raise BadRequest(f"input {name!r}: shape {shape} is not possible ({_short(e)})") from None
        values[name] = arr
    feeds = {}
    for spec in model.signature.inputs:
        if spec.name not in values:
            raise BadRequest(f"missing input {spec.name!r} (the model takes: {_names(model)})")
        check_shape(values[spec.name], spec, model.signature.batch_dim, spec.name)
        feeds[spec.name] = values[spec.name]
    return feeds


def v2_output_names(names: list[str], model: Model) -> list[str]:
    """The requested outputs, each one the model has."""
    known = [t.name for t in model.signature.outputs]
    if unknown := [o for o in names if o not in known]:
        raise BadRequest(f"unknown output {unknown[0]!r} (the model has: {', '.join(known)})")
    return names


def _binary_outputs(doc: dict, wanted: list[dict], names: list[str]) -> frozenset[str]:
    """The outputs the binary tensor extension is asked to send as raw bytes: all of them with
    parameters.binary_data_output, or each output whose parameters say binary_data (which wins)."""
    everything = _flag_param(doc, "binary_data_output", "parameters")
    chosen = set(names) if everything else set()
    for o in wanted:
        flag = _flag_param(o, "binary_data", f"outputs ({o['name']}) parameters")
        if flag is not None:
            (chosen.add if flag else chosen.discard)(o["name"])
    return frozenset(chosen)


def _flag_param(doc: dict, key: str, where: str) -> bool | None:
    parameters = doc.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise BadRequest(f'"{where}" must be a JSON object')
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f'"{where}" {key} must be true or false')
    return value


def _family(dtype: str) -> str:
    return {"bool": "bool", "string": "bytes"}.get(dtype, "float" if dtype.startswith("float") else "int")


# The square of each float type's largest value (finite for these two): a float64 sum of squares at
# most this has no NaN, no infinity and no value the type cannot hold.
_SQUARED_MAX = {np.dtype(t): float(np.finfo(t).max) ** 2 for t in (np.float32, np.float16)}


def array(value: object, spec: TensorSpec, dtype: np.dtype, allow_nonfinite: bool, where: str) -> np.ndarray:
    """value as an array of the input's dtype, or BadRequest naming what is wrong with it."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as e:
            raise BadRequest(f"input {where!r}: not a rectangular array ({_short(e)})") from None
    kind = arr.dtype.kind
    if dtype.kind == "O":
        if kind != "U":
            raise BadRequest(f"input {where!r}: expected strings, got {_KIND.get(kind, arr.dtype.name)}")
        return arr.astype(object)
    if kind not in "biuf":
        got = "null values" if kind == "O" and _has_none(value) else _KIND.get(kind, f"{arr.dtype} values")
        raise BadRequest(f"input {where!r}: expected {_KIND[dtype.kind]} ({spec.dtype}), got {got}")
    if dtype.kind == "b" and kind != "b":
        raise BadRequest(f"input {where!r}: expected true/false values (bool)")
    if dtype.kind in "iu":
        if kind == "f":
            raise BadRequest(f"input {where!r}: expected integers ({spec.dtype}), got fractional numbers")
        if arr.size and kind in "iu":
            info = np.iinfo(dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise BadRequest(f"input {where!r}: values outside the {spec.dtype} range")
    if dtype.kind == "f" and kind == "f":
        if (limit := _SQUARED_MAX.get(dtype)) is not None and arr.dtype == np.float64 and arr.size:
            flat = arr.reshape(-1)
            if float(flat @ flat) <= limit:  # one BLAS pass: every value finite and in range, so the
                return arr.astype(dtype)      # cast cannot overflow and there is nothing left to check
        with np.errstate(over="ignore"):
            out = arr.astype(dtype, copy=False)
        # one float64 sum answers "any NaN, infinity or overflow?" for the price of a pass
        if not allow_nonfinite and out.size and not math.isfinite(out.sum(dtype=np.float64)):
            if np.isfinite(arr).all():
                raise BadRequest(f"input {where!r}: values outside the {spec.dtype} range")
            raise BadRequest(f"input {where!r}: NaN or infinity is not accepted (MLDEPLOY_NONFINITE=allow lets it in)")
        return out
    return arr.astype(dtype, copy=False)


def _has_none(value: object) -> bool:
    while isinstance(value, list) and value:
        if any(v is None for v in value):
            return True
        value = value[0]
    return value is None


def check_shape(arr: np.ndarray, spec: TensorSpec, batch: str | None, where: str, per_instance: bool = False) -> None:
    want = spec.shape
    if arr.ndim != len(want):
        got = arr.ndim - 1 if per_instance else arr.ndim
        need = len(want) - 1 if per_instance else len(want)
        hint = " (wrap a single row in a list)" if not per_instance and batch and arr.ndim == len(want) - 1 else ""
        raise BadRequest(f"input {where!r}: expected {need} dims{' per instance' if per_instance else ''} "
                         f"of {spec.shape_text()}, got {got}: shape {list(arr.shape)[1 if per_instance else 0:]}{hint}")
    for i, (got, size) in enumerate(zip(arr.shape, want)):
        if isinstance(size, int) and got != size:
            raise BadRequest(f"input {where!r}: dim {i} of {spec.shape_text()} must be {size}, got {got}")
    if batch and want[0] == batch and arr.shape[0] == 0:
        raise BadRequest(f"input {where!r}: no rows")


def rows(feeds: dict[str, np.ndarray], model: Model) -> int:
    batch = model.signature.batch_dim
    counts = {arr.shape[0] for spec, arr in zip(model.signature.inputs, feeds.values())
              if batch and spec.shape[:1] == (batch,)}
    if len(counts) > 1:
        raise BadRequest(f"inputs disagree on the number of rows: {sorted(counts)}")
    return counts.pop() if counts else 1


def _reshape_rows(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    row = spec.shape[1:]
    dims = [d for d in row if isinstance(d, int)]
    if len(dims) == len(row) and arr.shape[1] == int(np.prod(dims)):
        return arr.reshape(arr.shape[0], *dims)
    return arr


def _npy(body: bytes) -> np.ndarray:
    """A .npy body, its header checked against the body's size before anything is allocated."""
    fmt = np.lib.format
    buf = io.BytesIO(body)
    try:
        version = fmt.read_magic(buf)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read_header(buf)
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        if math.prod(shape) * dtype.itemsize > len(body) - buf.tell():
            raise ValueError(f"its header claims shape {shape}, more than the body holds")
        buf.seek(0)
        return np.load(buf, allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError, MemoryError) as e:
        raise BadRequest(f"the body is not a valid .npy array ({_short(e)})") from None


def _csv(body: bytes, dtype: np.dtype) -> np.ndarray:
    """CSV rows, parsed as the input's kind of number: integers stay exact (float64 would round
    int64 above 2**53 and could not tell 1 from 1.0); bool and strings go on to array()'s checks."""
    parse = {"i": np.int64, "u": np.uint64}.get(dtype.kind, np.float64)
    try:
        text = body.decode("utf-8")
        return np.loadtxt(io.StringIO(text), delimiter=",", dtype=parse, ndmin=2)
    except UnicodeDecodeError:
        raise BadRequest("the CSV body is not UTF-8 text") from None
    except (ValueError, OverflowError) as e:
        kind = "integers" if parse is not np.float64 else "numbers"
        raise BadRequest(f"the CSV body is not rows of {kind} ({_short(e)})") from None


def _names(model: Model) -> str:
    return ", ".join(f"{t.name} {t.dtype} {t.shape_text()}" for t in model.signature.inputs)


def encode(call: Call, outputs: list[np.ndarray], model: Model) -> tuple[str, bytes]:
    """The response body for a call, in the form it came in."""
    specs = model.signature.outputs
    if call.accept in (CSV, NPY) and len(outputs) == 1:
        out = outputs[0]
        buf = io.BytesIO()
        if call.accept == NPY:
            np.save(buf, out, allow_pickle=False)
        else:  # one line per row; a 0-d output is one line of one value
            np.savetxt(buf, out.reshape(len(out), -1) if out.ndim > 1 else out.reshape(-1, 1), delimiter=",", fmt="%.9g")
        return call.accept, buf.getvalue()
    if call.form == "v2":
        return JSON, dumps(v2_response(call, [v2_tensor(n, o) for n, o in v2_outputs(call, outputs, model)], model))
    if call.form == "columnar":
        value = _jsonable(outputs[0]) if len(outputs) == 1 else {t.name: _jsonable(o) for t, o in zip(specs, outputs)}
        return JSON, dumps({"outputs": value})
    # instances, and CSV or .npy asked to answer in JSON: one prediction per row
    if len(outputs) == 1:
        return JSON, dumps({"predictions": _jsonable(outputs[0])})
    # a 0-d output (one value for the whole request, e.g. a sum) is given in every row
    rows = [{t.name: _jsonable(o[i] if o.ndim else o) for t, o in zip(specs, outputs)} for i in range(call.rows)]
    return JSON, dumps({"predictions": rows})


def v2_outputs(call: Call, outputs: list[np.ndarray], model: Model) -> list[tuple[str, np.ndarray]]:
    """(name, array) of each output a v2 call asked for, in its order (every output when it named none)."""
    index = {t.name: i for i, t in enumerate(model.signature.outputs)}
    return [(name, outputs[index[name]]) for name in call.v2_outputs or index]


def v2_response(call: Call, tensors: list[dict], model: Model) -> dict:
    doc = {"model_name": model.name, "model_version": model.version, "outputs": tensors}
    if call.v2_id is not None:
        doc["id"] = call.v2_id
    return doc


def v2_tensor(name: str, arr: np.ndarray) -> dict:
    dtype = "string" if arr.dtype.kind in "OU" else arr.dtype.name
    return {"name": name, "shape": list(arr.shape), "datatype": V2_NAMES.get(dtype, dtype.upper()),
            "data": _jsonable(arr.reshape(-1))}


def _jsonable(arr: np.ndarray) -> object:
    if arr.dtype.kind in "OU" or arr.ndim == 0:  # orjson writes no 0-d arrays: a 0-d is its value
        return arr.tolist()
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def dumps(doc: object) -> bytes:
    return orjson.dumps(doc, option=_OPTS)


def error_body(message: str, request_id: str | None = None) -> bytes:
    return orjson.dumps({"error": message, "request_id": request_id} if request_id else {"error": message})
