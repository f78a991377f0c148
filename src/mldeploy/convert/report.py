"""The convert report for people: Markdown for the job summary, plain text for the terminal."""

from __future__ import annotations

from mldeploy import github
from mldeploy.bundle import Signature


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _comparisons(report: dict) -> list[dict]:
    if "parity" in report:
        return report["parity"]["outputs"]
    tried = [a for a in report["attempts"] if "parity" in a]
    return tried[-1]["parity"]["outputs"] if tried else []


def markdown(report: dict, signature: Signature | None) -> str:
    ok = report["status"] == "passed"
    lines = [f"### {'✅' if ok else '❌'} convert-model: parity {'passed' if ok else 'failed'}", ""]
    lines.append(f"**Source** `{report['source']}` ({report['framework']}, {report['format']})  ")
    if ok:
        lines.append(f"**Exporter** {report['exporter']}, opset {report['opset']}, export {report['export_s']} s, "
                     f"total {report['duration_s']} s  ")
        p = report["parity"]
        lines.append(f"**Parity data** {report['data']}; batches {', '.join(map(str, p['batches']))}; "
                     f"atol {p['atol']:g}, rtol {p['rtol']:g}")
    for warning in report.get("warnings", []):
        lines.append(f"> [!WARNING]\n> {warning}")
    rows = _comparisons(report)
    if rows:
        lines += ["", "| Output | Batch | Shape | Max abs error | Max rel error | Result |",
                  "|---|---:|---|---:|---:|---|"]
        for c in rows:
            mark = "✅" if c["passed"] else f"❌ {c['note']}".strip()
            lines.append(f"| `{c['output']}` | {c['batch']} | {c['shape']} | {_num(c['max_abs'])} | "
                         f"{_num(c['max_rel'])} | {mark} |")
    if not ok or len(report["attempts"]) > 1:
        lines += ["", "| Exporter | Result | Why |", "|---|---|---|"]
        for a in report["attempts"]:
            why = a.get("error") or (a.get("parity") or {}).get("problem") or ""
            lines.append(f"| {a['exporter']} | {a['status']} | {why.replace('|', '/')} |")
    if signature:
        lines += ["", "| Signature | Name | Dtype | Shape |", "|---|---|---|---|"]
        for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
            lines += [f"| {kind} | `{t.name}` | {t.dtype} | {t.shape_text()} |" for t in specs]
    return "\n".join(lines) + "\n"


def text(report: dict, signature: Signature | None) -> str:
    ok = report["status"] == "passed"
    out = [(f"convert: parity {'passed' if ok else 'FAILED'} - {report['source']} "
            f"({report['framework']}, {report['format']})")]
    for a in report["attempts"]:
        why = a.get("error") or (a.get("parity") or {}).get("problem") or ""
        secs = f" in {a['seconds']} s" if "seconds" in a else ""
        out.append(f"  exporter {a['exporter']}: {a['status']}{secs}{': ' + why if why else ''}")
    for c in _comparisons(report):
        out.append(f"  {c['output']} @ batch {c['batch']}: max abs {_num(c['max_abs'])}, "
                   f"max rel {_num(c['max_rel'])} {'ok' if c['passed'] else 'FAIL ' + c['note']}")
    if signature:
        for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
            out += [f"  {kind} {t.name}: {t.dtype} {t.shape_text()}" for t in specs]
    out.append(f"  took {report['duration_s']} s")
    return "\n".join(out)


def publish(report: dict, signature: Signature | None) -> None:
    print(text(report, signature), flush=True)
    github.add_summary(markdown(report, signature))
    for warning in report.get("warnings", []):
        github.warning(warning, title="convert-model")
