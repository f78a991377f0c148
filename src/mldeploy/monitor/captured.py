"""Captured requests, read back for drift checks: from a folder, a file, or cloud storage.

Records are JSON objects, one per line: the serving runtime's (src/mldeploy/serve/capture.py):
capture-PID.jsonl and its rotated capture-PID.N.jsonl, {"time", "request_id", "model_version",
"latency_ms", "inputs", "outputs"}; and each platform's own capture format that a target registers
(targets.py `capture_reader`), its request bodies decoded as the server would decode them.
Sources: a folder (searched recursively for *.jsonl / *.json / *.ndjson), one file, or a URI of the
object storage a cloud registers (targets.py STORAGE: s3://, gs://, Azure Blob https://). Files and objects are
read newest first, and lines from the end of each, until --max-records usable records are in (or
MAX_BYTES were fetched), so the newest traffic is what is judged. A line that is not JSON is counted
as corrupt, a record that does not fit the model's signature as mismatched; both are skipped.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from mldeploy.bundle import Signature, TensorSpec
from mldeploy.errors import UsageError

SUFFIXES = (".jsonl", ".json", ".ndjson")
MAX_BYTES = 1 << 30          # stop fetching after this much, whatever --max-records says
MAX_PROBLEMS = 5             # examples of skipped lines kept for the report

loads: Callable[[bytes | str], Any]
try:  # orjson (the serve extra) parses about 3x faster; json does the same job
    import orjson
    loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the extras installed
    loads = json.loads


class Mismatch(Exception):
    """A record that does not fit the model's signature."""


@dataclass
class Captured:
    source: str
    records: int = 0                 # usable records (requests)
    rows: int = 0                    # examples in them (a request may carry a batch)
    corrupt: int = 0                 # lines that are not a JSON object
    mismatched: int = 0              # records that do not fit the signature
    objects: int = 0                 # files or objects read
    truncated: bool = False          # stopped at max_records or MAX_BYTES: older traffic was left
    problems: list[str] = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    first: str | None = None         # time of the oldest and newest record read
    last: str | None = None
    inputs: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    outputs: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))

    def skip(self, kind: str, where: str, why: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{where}: {why}"[:300])

    def input_columns(self) -> dict[str, np.ndarray]:
        from mldeploy.monitor.baseline import columns

        return _features(self.inputs, columns)

    def output_columns(self) -> dict[str, np.ndarray]:
        from mldeploy.monitor.baseline import output_columns

        return _features(self.outputs, output_columns)


def _features(tensors: dict[str, list[np.ndarray]], cut: Callable) -> dict[str, np.ndarray]:
    """Per-feature values of every record's tensors; records are grouped by row shape first (a
    symbolic dim may differ between requests), so each group is cut in one vectorized pass."""
    found: dict[str, list[np.ndarray]] = defaultdict(list)
    for name, parts in tensors.items():
        groups: dict[tuple, list[np.ndarray]] = defaultdict(list)
        for arr in parts:
            groups[arr.shape[1:]].append(arr)
        for group in groups.values():
            for feature, _, values in cut(name, np.concatenate(group)):
                found[feature].append(values)
    return {name: np.concatenate(parts) for name, parts in found.items()}


# -- where the bytes come from ------------------------------------------------------------------------
def objects(source: str, region: str | None = None,
            max_bytes: int = MAX_BYTES) -> Generator[tuple[str, float, bytes], None, None]:
    """(name, last modified as Unix time, bytes) of every capture file or object under `source`,
    newest first."""
    from mldeploy import targets as registry

    parts = urlsplit(source)
    if storage := registry.storage_for(source):
        try:
            lister = getattr(importlib.import_module(storage.module), storage.lister)
        except ModuleNotFoundError as e:
            raise UsageError(f"reading {source} needs {e.name}, which is not installed",
                             hint=f"pip install 'mldeploy[{storage.extra}]'") from None
        found = lister(source, region, SUFFIXES)
    elif parts.scheme and len(parts.scheme) > 1:  # (a one-letter scheme is a Windows drive)
        raise UsageError(f"cannot read captured requests from {source}",
                         hint=f"use a folder, or one of {', '.join(s.example for s in registry.STORAGE)}")
    else:
        found = _local(Path(source))
    read = 0  # newest first, stopping before max_bytes would be exceeded
    for name, size, modified, fetch in sorted(found, key=lambda s: (s[2], s[0]), reverse=True):
        if read and read + size > max_bytes:
            return
        read += size
        yield name, _unix(modified), fetch()


def _unix(modified: Any) -> float:
    """A listing's last-modified time (a datetime from a cloud, nanoseconds from a local file)."""
    return modified.timestamp() if hasattr(modified, "timestamp") else modified / 1e9


def _local(path: Path) -> list[tuple[str, int, int, Callable[[], bytes]]]:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES)]
    else:
        raise UsageError(f"capture folder {path} not found",
                         hint="pass --capture DIR|URI (monitoring.drift.capture), where the server writes "
                              "MLDEPLOY_CAPTURE_DIR")
    return [(str(f), (st := f.stat()).st_size, st.st_mtime_ns, f.read_bytes) for f in files]


# -- records -----------------------------------------------------------------------------------------
def read(source: str, signature: Signature, *, max_records: int = 100_000, region: str | None = None) -> Captured:
    """The usable records under `source`, newest first, at most `max_records`."""
    from mldeploy.serve.model import DTYPES

    found = Captured(source)
    dtypes = {t.name: np.dtype(DTYPES.get(t.dtype, np.object_)) for t in [*signature.inputs, *signature.outputs]}
    readers = [reader(signature) for reader in capture_readers()]
    stream = objects(source, region)
    for name, _, data in stream:
        found.objects += 1
        lines = data.split(b"\n")
        for number in range(len(lines) - 1, -1, -1):  # the newest records are at the end of a file
            line = lines[number].strip()
            if not line:
                continue
            if found.records >= max_records:
                found.truncated = True
                stream.close()
                return found
            where = f"{name}:{number + 1}"
            try:
                doc = loads(line)
            except ValueError as e:
                found.skip("corrupt", where, f"not JSON ({str(e).splitlines()[0][:80]})")
                continue
            if not isinstance(doc, dict):
                found.skip("corrupt", where, f"a JSON {type(doc).__name__}, not an object")
                continue
            try:
                if reader := next((r for r in readers if r.matches(doc)), None):
                    inputs, outputs, when = reader.record(doc, dtypes)
                    version, kind = None, reader.kind
                else:
                    inputs, outputs = _record(doc, signature, dtypes)
                    when, version, kind = doc.get("time"), doc.get("model_version"), "mldeploy"
            except Mismatch as e:
                found.skip("mismatched", where, str(e))
                continue
            _add(found, inputs, outputs, when, version, kind, signature)
    return found


def _add(found: Captured, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None, when: Any,
         version: Any, kind: str, signature: Signature) -> None:
    for name, arr in inputs.items():
        found.inputs[name].append(arr)
    for name, arr in (outputs or {}).items():
        found.outputs[name].append(arr)
    found.records += 1
    found.rows += len(inputs[signature.inputs[0].name])
    found.formats[kind] += 1
    if version is not None:
        found.versions[str(version)] += 1
    if isinstance(when, str):
        found.first = when if found.first is None else min(found.first, when)
        found.last = when if found.last is None else max(found.last, when)


def _record(doc: dict[str, Any], signature: Signature, dtypes: dict[str, np.dtype]
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(inputs, outputs) of a serving-runtime record, checked against the signature."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, dict):
        raise Mismatch('no "inputs" object')
    feeds = tensors(inputs, signature.inputs, dtypes, "input", signature.batch_dim)
    outputs = doc.get("outputs")
    if outputs is None:
        return feeds, None
    if not isinstance(outputs, dict):
        raise Mismatch('"outputs" is not an object')
    return feeds, tensors(outputs, signature.outputs, dtypes, "output", signature.batch_dim)


def tensors(values: dict, specs: list[TensorSpec], dtypes: dict[str, np.dtype], what: str,
             batch: str | None) -> dict[str, np.ndarray]:
    unknown = set(values) - {t.name for t in specs}
    if unknown:
        raise Mismatch(f"unknown {what} {sorted(unknown)[0]!r} (the model's: {', '.join(t.name for t in specs)})")
    out = {spec.name: tensor(values.get(spec.name), spec, dtypes[spec.name], what) for spec in specs}
    rows = {len(arr) for spec, arr in zip(specs, out.values()) if batch and spec.shape[:1] == (batch,)}
    if len(rows) > 1:
        raise Mismatch(f"{what}s disagree on the number of rows: {sorted(rows)}")
    return out


def tensor(value: object, spec: TensorSpec, dtype: np.dtype, what: str) -> np.ndarray:
    if value is None:
        raise Mismatch(f"no {what} {spec.name!r}")
    try:
        arr = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise Mismatch(f"{what} {spec.name!r} is not a rectangular array of {spec.dtype}") from None
    fits = arr.ndim == len(spec.shape) and arr.ndim > 0 and len(arr) > 0 and all(
        not isinstance(d, int) or d == n for d, n in zip(spec.shape[1:], arr.shape[1:]))
    if not fits:
        raise Mismatch(f"{what} {spec.name!r} has shape {list(arr.shape)}, the model's is {spec.shape_text()}")
    return arr


def capture_readers() -> list[Any]:
    """The decoders of the platforms' own capture formats, as the targets register them."""
    from mldeploy import targets as registry

    found = []
    for entry in registry.entries():
        if entry.capture_reader:
            module, _, name = entry.capture_reader.partition(":")
            found.append(getattr(importlib.import_module(module), name))
    return found
