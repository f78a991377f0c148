"""The served model: one ONNX Runtime session, its signature, and what the batcher needs to know."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mldeploy.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, Signature
from mldeploy.errors import UsageError

# ONNX type names in signature.json -> numpy; "string" tensors travel as object arrays of str.
DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64,
          "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
          "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_,
          "string": np.object_}


class ModelError(Exception):
    """The model could not run on an input that passed validation (the caller's data, not a bug)."""


# What a client has no use for (and should not learn about the server from): ONNX Runtime's status
# prefix and node wording, its C++ source paths and function signatures, and memory addresses.
_INTERNALS = [(re.compile(p), r) for p, r in (
    (r"\[ONNXRuntimeError\] : \d+ : \w+ : ", ""),
    (r"Non-zero status code returned while running (\w+) node\. Name:'[^']*' Status Message: ", r"\1: "),
    (r"\S*/\S+\.(?:cc|cpp|h|hpp):\d+ (?:[\w:<>,~*& ]+\([^()]*\)(?: const)? )?", ""),
    (r" (?:object )?at 0x[0-9a-fA-F]+", ""),
    (r"0x[0-9a-fA-F]{6,}", "..."),
)]


def plain(message: str, limit: int = 300) -> str:
    """One line of an error message fit for a client: runtime internals removed, then shortened."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    for pattern, replacement in _INTERNALS:
        line = pattern.sub(replacement, line)
    return line[:limit]


@dataclass
class Model:
    signature: Signature
    version: str                # the model file's sha256 prefix: what v2 metadata calls the version
    batchable: bool             # every input and output has the batch dim first: requests can merge
    single_row_seconds: float   # measured at warm-up; the batcher uses it to pick a thread or not
    name: str = "model"         # the name v2 routes answer to

    def __post_init__(self) -> None:
        # set by load(): the ONNX Runtime session, its C++ run, and the output names it returns
        self._session: Any
        self._run: Callable[[list[str], dict[str, np.ndarray], Any], list[np.ndarray]]
        self._output_names: list[str]
        self.dtypes = [np.dtype(DTYPES[t.dtype]) for t in self.signature.inputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._run(self._output_names, feeds, None)
        except Exception as e:  # ORT raises its own types (Fail, InvalidArgument, ...) for bad values
            raise ModelError(plain(str(e)) or type(e).__name__) from None

    @classmethod
    def load(cls, bundle: Path, threads: int = 1, name: str = "model") -> Model:
        import onnxruntime as ort  # late: importing it costs ~0.2 s, paid once per worker

        try:
            signature = Signature.from_json(json.loads((bundle / SIGNATURE_FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{bundle / SIGNATURE_FILE} is not a valid signature: {e}") from None
        unknown = [t.dtype for t in signature.inputs if t.dtype not in DTYPES]
        if unknown:
            raise UsageError(f"the model takes inputs of type {unknown[0]}, which the server cannot decode")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads would spin after each run, taking the core from the other workers and
        # the event loops (a server's runs come back to back only under load, when that core is wanted).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(bundle / MODEL_FILE), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UsageError(f"{bundle / MODEL_FILE} cannot be loaded by ONNX Runtime: "
                             f"{str(e).splitlines()[0][:300]}", hint="convert the model again") from None
        batch = signature.batch_dim
        batchable = bool(batch) and all(t.shape[:1] == (batch,) for t in [*signature.inputs, *signature.outputs])
        model = cls(signature, _version(bundle), batchable, 0.0, name)
        model._session = session
        # The session's own C++ run: the Python wrapper checks input names and counts again, which
        # codec has done for every request already (a microsecond and more of a 7 us MLP run).
        model._run = getattr(session, "_sess", session).run
        model._output_names = [t.name for t in signature.outputs]
        model.single_row_seconds = model._warm_up()
        return model

    def example(self, rows: int = 1) -> dict[str, np.ndarray]:
        """Zeros in the signature's shape: symbolic dims are 1 (batch: rows)."""
        feeds = {}
        for spec, dtype in zip(self.signature.inputs, self.dtypes):
            shape = [rows if i == 0 and d == self.signature.batch_dim else d if isinstance(d, int) else 1
                     for i, d in enumerate(spec.shape)]
            feeds[spec.name] = np.zeros(shape, dtype=dtype) if dtype != np.object_ else np.full(shape, "", object)
        return feeds

    def _warm_up(self) -> float:
        """Run a few single rows (the first run allocates); the median is the single-row cost."""
        feeds = self.example()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            try:
                self.run(feeds)
            except ModelError:
                return 0.0  # zeros are not a valid input for every model; real requests will tell
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]


def _version(bundle: Path) -> str:
    try:
        manifest = json.loads((bundle / MANIFEST_FILE).read_text())
        return str(manifest.get("model", {}).get("sha256", ""))[:12] or "1"
    except (OSError, ValueError, AttributeError):
        return "1"
