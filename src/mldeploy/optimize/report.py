"""The optimize report for people: a Markdown table and a Mermaid latency chart, or plain text."""

from __future__ import annotations

from mldeploy import github


def _rows(report: dict) -> list[dict]:
    return [report["baseline"], *report["candidates"]]


def _acc(row: dict) -> str:
    acc = row.get("accuracy", {})
    parts = []
    if "top1_agreement" in acc:
        parts.append(f"top-1 {acc['top1_agreement']:.4f}")
    if acc:
        parts.append(f"cos {acc['cosine_similarity']:.5f}")
        parts.append(f"max abs {acc['max_abs_diff']:.2g}")
    if "metric" in acc:
        parts.append(f"{acc['metric']['name']} {acc['metric']['value']:.4g}")
    return ", ".join(parts)


def _verdict(row: dict, report: dict) -> str:
    if row["name"] == report["chosen"]:
        return "**chosen**"
    if row.get("status") in ("skipped", "failed"):
        return f"{row['status']}: {row['reason']}"
    if row.get("budget_failures"):
        return "over budget: " + "; ".join(row["budget_failures"])
    if row.get("gpu_only") and report["device"] == "cpu":
        return "GPU only"
    if row.get("report_only"):
        sparsity = row.get("facts", {}).get("sparsity")
        return f"report only (sparsity {sparsity}, gzip {row['facts']['gzip_bytes'] / 1e6:.2f} MB)" if sparsity \
            else "report only"
    if "side_by_side" in row:
        return f"{row['side_by_side']['speedup']:.2f}x vs {row['side_by_side']['against']} side by side"
    return ""


def _cpu(report: dict) -> str:
    cpu = report.get("cpu") or {}
    return f"{cpu.get('model', '?')} ({', '.join(cpu.get('isa', [])) or 'no x86/arm vector extensions found'})"


def markdown(report: dict) -> str:
    base = report["baseline"]
    b = report["batch_size"]
    lines = [f"### ✅ optimize-model: {report['chosen']}", "",
             (f"{report['reason']}. Objective {report['objective']} at batch {b}, {report['threads']} thread(s), "
              f"device {report['device']}; CPU {_cpu(report)}; data: {report['data']}."), "",
             f"| Candidate | Size MB | p50 @1 ms | p50 @{b} ms | p95 @{b} ms | Speedup @{b} | Accuracy vs fp32 | |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for row in _rows(report):
        if row.get("status") != "ok":
            lines.append(f"| {row['name']} | | | | | | | {_verdict(row, report)} |")
            continue
        speed = base["p50_batch_ms"] / row["p50_batch_ms"]
        lines.append(f"| {row['name']} | {row['size_bytes'] / 1e6:.3g} | {row['p50_1_ms']:.3g} | "
                     f"{row['p50_batch_ms']:.3g} | {row['p95_batch_ms']:.3g} | {speed:.2f}x | {_acc(row)} | "
                     f"{_verdict(row, report)} |")
    measured = [r for r in _rows(report) if r.get("status") == "ok"]
    names = ", ".join(f'"{r["name"]}"' for r in measured)
    values = ", ".join(f"{r['p50_batch_ms']:.4g}" for r in measured)
    lines += ["", "```mermaid", "xychart-beta", f'  title "p50 latency at batch {b} (ms, lower is better)"',
              f"  x-axis [{names}]", '  y-axis "ms"', f"  bar [{values}]", "```"]
    return "\n".join(lines) + "\n"


def text(report: dict) -> str:
    b = report["batch_size"]
    out = [f"optimize: chose {report['chosen']} - {report['reason']}",
           f"  {'candidate':<20} {'size MB':>8} {'p50@1 ms':>9} {f'p50@{b} ms':>10} {'speedup':>8}  accuracy / note"]
    base = report["baseline"]
    for row in _rows(report):
        if row.get("status") != "ok":
            out.append(f"  {row['name']:<20} {'':>8} {'':>9} {'':>10} {'':>8}  {_verdict(row, report)}")
            continue
        note = _verdict(row, report).replace("**", "")
        out.append(f"  {row['name']:<20} {row['size_bytes'] / 1e6:>8.3g} {row['p50_1_ms']:>9.3g} "
                   f"{row['p50_batch_ms']:>10.3g} {base['p50_batch_ms'] / row['p50_batch_ms']:>7.2f}x  "
                   f"{_acc(row)}{'  ' + note if note else ''}")
    out.append(f"  data: {report['data']}; CPU {_cpu(report)}; took {report['duration_s']} s")
    return "\n".join(out)


def publish(report: dict) -> None:
    print(text(report), flush=True)
    github.add_summary(markdown(report))
