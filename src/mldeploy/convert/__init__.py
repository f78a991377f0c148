"""convert-model: a trained model in, a bundle with a parity-checked ONNX model out."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

if TYPE_CHECKING:
    import onnx

from mldeploy import data, github
from mldeploy.bundle import Bundle, Signature, TensorSpec, sha256_file, staged, tool_versions
from mldeploy.config import Config
from mldeploy.convert import parity
from mldeploy.convert.base import Arrays, Export, ExportFailed, Source, operator_in
from mldeploy.convert.detect import detect, model_path
from mldeploy.convert.report import publish
from mldeploy.errors import CheckFailed, UsageError

BATCH_HINT = ("the model depends on its batch size: make it batch-independent (no branch on x.shape[0], "
              "no batch in a reshape)")


@dataclass
class Converted:
    bundle: Bundle
    report: dict


def convert(cfg: Config, *, model: str | None = None, out: str | None = None, force: bool = False) -> Converted:
    """Load the model, export it, check parity, and write the bundle (only if parity passes).

    When the bundle already holds this conversion (same source bytes, settings and tool versions)
    nothing is redone and the bundle is kept, unless `force`.
    """
    started = time.perf_counter()
    path = model_path(model or cfg.model.path)
    framework, fmt = detect(path, cfg.model.framework)
    out_dir = Path(out or cfg.bundle)
    source_sha = sha256_file(path)
    key = _conversion_key(source_sha, cfg)
    current = None if force else _up_to_date(out_dir, key)
    if current:
        report: dict[str, Any] = current.manifest["steps"][-1]
        print(f"convert: up to date - {path} and the settings are unchanged since {report['at']}; "
              f"kept {out_dir} (--force converts again)", flush=True)
        github.add_summary(f"### ✅ convert-model: up to date\n\n`{path}` is unchanged; the bundle from "
                           f"{report['at']} was kept.")
        return Converted(current, report)
    with staged(out_dir) as bundle:
        source = _load(framework, fmt, path, cfg, bundle.path)
        output_names = _output_names(source, cfg)
        batches, data_note = _parity_inputs(source, cfg)
        expected, reference_note = _reference(source, batches)
        report = {"status": "failed", "source": str(path), "framework": framework, "format": source.format,
                  "opset": cfg.model.opset, "data": data_note, "key": key, "attempts": []}
        report["warnings"] = ([reference_note] if reference_note else []) + _fixed_batch_warnings(source, cfg)
        bundle.start_manifest({"path": str(path), "framework": framework, "format": source.format,
                               "sha256": source_sha})
        chosen: tuple[Export, parity.Parity] | None = None
        for attempt in source.exports(bundle.path, cfg.model.opset):
            _show_log(attempt)
            record: dict[str, Any] = {"exporter": attempt.exporter}
            if isinstance(attempt, ExportFailed):
                record.update(status="export failed", error=attempt.message, operator=attempt.operator)
            else:
                result = _check(attempt, source, batches, expected, cfg)
                unsupported = result.operator or (operator_in(result.problem) if result.problem else None)
                if unsupported:  # the exporter left an op in the graph that ONNX Runtime does not know
                    record.update(status="export failed", error=result.problem, operator=unsupported)
                    report["attempts"].append(record)
                    continue
                record.update(status="passed" if result.passed else "parity failed",
                              seconds=round(attempt.seconds, 3), batch_dependent=result.batch_dependent,
                              notes=result.notes)
                if result.passed:  # its figures become the report's own `parity`
                    chosen = (attempt, result)
                else:
                    record["parity"] = result.to_json()
            report["attempts"].append(record)
            if chosen:
                break
        report["duration_s"] = round(time.perf_counter() - started, 3)
        report["warnings"] += source.warnings + [n for a in report["attempts"] for n in a.pop("notes", [])]
        if chosen is None:
            _reject(bundle, report, cfg)
        attempt, result = chosen
        signature = _finalize(attempt.path, bundle.model_path, source.inputs, source.output_names, output_names,
                              result)
        for leftover in bundle.path.glob("model.*.onnx"):
            leftover.unlink()
        report.update(status="passed", exporter=attempt.exporter, export_s=round(attempt.seconds, 3),
                      opset=_opset(bundle.model_path), parity=_parity_summary(result, cfg, batches),
                      native=_native(source, bundle.path))
        bundle.write_signature(signature)
        bundle.add_step("convert", report)
    publish(report, signature)
    return Converted(Bundle(out_dir), report)


def _check(attempt: Export, source: Source, batches: dict[int, Arrays], expected: dict[int, list[np.ndarray]] | None,
           cfg: Config) -> parity.Parity:
    """Parity of one export; where the first reference disagrees, the source's fallback reference decides."""
    args = (attempt.path, source.inputs, source.output_names, batches)
    tol = (cfg.parity.atol, cfg.parity.rtol)
    rows_alone = source.framework == "onnx"  # the source is the export: the batch is its own check
    result = parity.check(*args, expected, *tol, rows_alone=rows_alone)
    if not result.passed and (second := source.fallback(batches)):
        result = parity.check(*args, second, *tol, rows_alone=rows_alone)
    return result


def _output_names(source: Source, cfg: Config) -> list[str]:
    """The names outputs are served under: `outputs:` in the config, else the model's own."""
    if not cfg.outputs:
        return list(source.output_names)
    names = [o.name for o in cfg.outputs]
    if len(names) != len(source.output_names):
        raise UsageError(f"outputs: names {len(names)} output(s), but the model has {len(source.output_names)} "
                         f"({', '.join(source.output_names)})", hint="give one name per output, in order")
    taken = sorted(set(names) & {s.name for s in source.inputs})
    if taken:
        raise UsageError(f"outputs: {', '.join(taken)} is already an input's name", hint="pick another name")
    return names


def _native(source: Source, dest: Path) -> dict[str, str]:
    try:
        return source.native(dest)
    except Exception as e:  # tracing and TF Lite each refuse some models
        raise UsageError(f"the ONNX model passed parity, but the native copy you asked for could not be made: "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                         hint="drop --torchscript / --tflite, or save that format yourself") from None


def _conversion_key(source_sha: str, cfg: Config) -> str:
    """What a conversion depends on: the source's bytes, the settings, and the tool versions."""
    sample = Path(cfg.parity.sample) if cfg.parity.sample else None
    basis = {"source": source_sha, "model": cfg.model.model_dump(exclude={"path"}),
             "inputs": [i.model_dump() for i in cfg.inputs],
             "outputs": [o.name for o in cfg.outputs], "parity": cfg.parity.model_dump(exclude={"sample"}),
             "sample": sha256_file(sample) if sample and sample.is_file() else None, "tools": tool_versions()}
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()


def _up_to_date(out: Path, key: str) -> Bundle | None:
    """The bundle at `out`, if it already holds this conversion."""
    try:
        bundle = Bundle.open(out)
    except UsageError:
        return None
    return bundle if bundle.fresh_step("convert", key) else None


def _fixed_batch_warnings(source: Source, cfg: Config) -> list[str]:
    declared = {i.name for i in cfg.inputs}
    return [f"input '{s.name}' has a fixed batch of {s.shape[0]}: the endpoint will accept exactly "
            f"{s.shape[0]} row(s) per request; export with a dynamic batch dimension to serve any batch"
            for s in source.inputs if s.shape and s.shape[0] in _fixed_batches(source.inputs) and s.name not in declared]


def _fixed_batches(inputs: list[TensorSpec]) -> set[int]:
    """The batch sizes the inputs fix, when none has a free batch (else a fixed dim 0 is not a batch:
    an RNN state's [layers, batch, hidden], a scalar)."""
    if any(s.shape and not isinstance(s.shape[0], int) for s in inputs):
        return set()
    return {d for s in inputs if s.shape and isinstance(d := s.shape[0], int)}  # all ints: checked above


def _show_log(attempt: Export | ExportFailed) -> None:
    """The exporter's own output, folded in Actions, shown with --debug elsewhere."""
    if attempt.log.strip() and (github.in_actions() or os.environ.get("MLDEPLOY_DEBUG") == "1"):
        with github.group(f"{attempt.exporter} exporter log"), github.verbatim():
            print(attempt.log.rstrip(), flush=True)


def _load(framework: str, fmt: str, path: Path, cfg: Config, workdir: Path) -> Source:
    try:
        if framework == "torch":
            from mldeploy.convert.from_torch import TorchSource

            return TorchSource(path, fmt, cfg)
        if framework == "tensorflow":
            from mldeploy.convert.from_tensorflow import TensorFlowSource

            return TensorFlowSource(path, fmt, cfg, workdir)
    except ImportError as e:
        extra = "torch" if framework == "torch" else "tensorflow"
        raise UsageError(f"{framework} is needed to convert {path.name} but cannot be imported ({e.name or e})",
                         hint=f"pip install 'mldeploy[{extra}]'") from None
    from mldeploy.convert.from_onnx import OnnxSource

    return OnnxSource(path, cfg)


def _parity_inputs(source: Source, cfg: Config) -> tuple[dict[int, dict[str, np.ndarray]], str]:
    """Inputs at batch 1 and at a batch larger than the export example (or the model's fixed batch)."""
    fixed = _fixed_batches(source.inputs)
    low, high = source.batch_range
    sizes = sorted(fixed) if fixed else sorted({max(low, 1), min(cfg.parity.batch_size, high or cfg.parity.batch_size)})
    if cfg.parity.sample:
        sample = data.load(cfg.parity.sample, source.inputs)
        rows = min(len(a) for a in sample.values())
        if not fixed and rows > sizes[-1]:
            sizes[-1] = min(rows, 256, high or rows)
        return {b: data.rows(sample, b) for b in sizes}, f"sample file {cfg.parity.sample}"
    ranges = {i.name: i.range for i in cfg.inputs if i.range}
    dim_sizes = {**cfg.model.dim_sizes, **source.dim_sizes}
    generated = {b: data.generate(source.inputs, b, seed=cfg.parity.seed + b, dim_sizes=dim_sizes,
                                  ranges=ranges) for b in sizes}
    return generated, f"generated from the signature (seed {cfg.parity.seed})"


def _reference(source: Source, batches: dict[int, Arrays]) -> tuple[dict[int, list[np.ndarray]] | None, str | None]:
    try:
        return {b: source.run(a) for b, a in batches.items()}, None
    except NotImplementedError as e:  # an ONNX source told to check against nothing
        return None, (f"{e}: parity only checked that ONNX Runtime runs at every batch and that rows run alone "
                      "get the answers they get in a batch")


def _reject(bundle: Bundle, report: dict, cfg: Config) -> NoReturn:
    """Record the failed attempts, then fail: exit 2 if nothing could export, 1 if parity failed."""
    bundle.add_step("convert", report)  # kept in the rejected bundle, for inspection
    publish(report, None)
    attempts = report["attempts"]
    reasons = "; ".join(f"{a['exporter']}: {a.get('error') or a['parity']['problem']}" for a in attempts)
    reasons = reasons if len(reasons) <= 135 else reasons[:132] + "..."  # the one line stays within 300 characters
    if all(a["status"] == "export failed" for a in attempts):
        op = next((a["operator"] for a in attempts if a.get("operator")), None)
        if op:
            namespace = op.replace("::", ".").split(".")[0] if ("::" in op or "." in op) else ""
            hint = ("register an ONNX translation for this custom operator, or replace it in the model"
                    if namespace not in ("", "aten", "prim", "onnx") else
                    f"try another opset (--opset {20 if cfg.model.opset < 20 else 17}), "
                    "or rewrite that part of the model with supported operators")
            exporters = ", ".join(a["exporter"] for a in attempts)
            raise UsageError(f"operator {op} cannot be exported to ONNX opset {cfg.model.opset} ({exporters})",
                             hint=hint)
        raise UsageError(f"the model could not be exported to ONNX; {reasons}")
    batch_dependent = any(a.get("batch_dependent") for a in attempts)
    raise CheckFailed(f"parity failed, no bundle written; {reasons}",
                      hint=BATCH_HINT if batch_dependent else "inspect the rejected bundle next to the output folder")


def _drop_stack_traces(model: onnx.ModelProto) -> None:
    """PyTorch's exporter records each node's Python stack, with the checkout's and the venv's absolute
    paths: the build machine's layout would leak into the model and make every checkout a new model."""
    import onnx

    def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        yield from graphs(g)

    nodes = [n for g in graphs(model.graph) for n in g.node] + [n for f in model.functions for n in f.node]
    for node in nodes:
        kept = [p for p in node.metadata_props if not p.key.endswith("stack_trace")]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def _finalize(src: Path, dest: Path, inputs: list[TensorSpec], output_names: list[str], served_names: list[str],
              result: parity.Parity) -> Signature:
    """Name the batch dim the same in the model and the signature, name the outputs as they are
    served, then write model.onnx."""
    import onnx

    from mldeploy.convert.from_onnx import value_specs

    model = onnx.load(str(src))
    for v in [*model.graph.input, *model.graph.output]:  # -1 means "any size" to exporters, nothing to ONNX
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.ClearField("dim_value")
    _drop_stack_traces(model)
    _rename_outputs(model.graph, dict(zip(output_names, served_names)))
    followers = {dict(zip(output_names, served_names)).get(n, n) for n in _outputs_following_batch(result)}
    free = {s.name: s.shape[0] or "batch" for s in inputs if s.shape and not isinstance(s.shape[0], int)}
    batch = next(iter(set(free.values()))) if len(set(free.values())) == 1 else None
    for v in model.graph.input:
        if v.name in free:
            _name_dim0(v, free[v.name])
    if batch:
        for v in model.graph.output:
            if v.name in followers:
                _name_dim0(v, batch)
    onnx.save(model, str(dest))
    graph = model.graph
    outs = value_specs(graph.output)
    ins = value_specs(graph.input, {i.name for i in graph.initializer})
    order = {n: i for i, n in enumerate(served_names)}
    outs.sort(key=lambda t: order.get(t.name, len(order)))
    return Signature(ins, outs, batch)


def _rename_outputs(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Serve output `old` as `new`: an Identity from old to new keeps every other use of `old` intact."""
    import onnx

    tensors = {t for n in graph.node for t in [*n.input, *n.output]} | {i.name for i in graph.initializer}
    for value in graph.output:
        new = names.get(value.name, value.name)
        if new == value.name:
            continue
        if new in tensors:
            raise UsageError(f"outputs: the model already has a tensor named '{new}'", hint="pick another name")
        graph.node.append(onnx.helper.make_node("Identity", [value.name], [new], name=f"mldeploy_output_{new}"))
        value.name = new


def _outputs_following_batch(result: parity.Parity) -> set[str]:
    """Outputs whose dim 0 was measured equal to the batch at every batch size tried."""
    if len({c.batch for c in result.comparisons}) < 2:
        return set()
    outputs = {c.output for c in result.comparisons}
    return outputs - {c.output for c in result.comparisons if not c.shape or c.shape[0] != c.batch}


def _name_dim0(value: onnx.ValueInfoProto, name: object) -> None:
    dims = value.type.tensor_type.shape.dim
    if dims and not dims[0].HasField("dim_value"):
        dims[0].dim_param = str(name)


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _parity_summary(result: parity.Parity, cfg: Config, batches: dict[int, Arrays]) -> dict:
    return {"atol": cfg.parity.atol, "rtol": cfg.parity.rtol, "batches": sorted(batches),
            "max_abs_error": result.max_abs, **result.to_json()}
