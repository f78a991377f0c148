"""The deploy report: one Markdown page saying what a workflow run did to an endpoint and with
what figures (parity, optimization, latency, traffic, canary analysis). It goes to the step summary
and, on a pull request, into one comment that later runs update in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mldeploy.bundle import last_step
from mldeploy.errors import UsageError

ICONS = {"deployed": "✅", "promoted": "✅", "rolled-back": "↩️", "torn-down": "🧹", "failed": "❌",
         "skipped": "⏭️"}


def marker(endpoint: str) -> str:
    """The hidden line that finds this endpoint's comment again on the next run."""
    return f"<!-- mldeploy-report endpoint={endpoint} -->"


def _load_json(path: str | None, what: str) -> dict[str, Any] | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        return None  # the step that writes it did not run (e.g. it failed first): report without it
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{what} {path} is not readable JSON: {e}") from None


def _last_step(manifest: dict[str, Any], name: str) -> dict[str, Any] | None:
    steps = manifest.get("steps") or []
    at = last_step(steps, name)
    return None if at is None else steps[at]


def _code(value: Any) -> str:
    return "" if value is None else f"`{value}`"


def _traffic(split: dict[str, int]) -> str:
    return ", ".join(f"{slot} {pct}%" for slot, pct in split.items()) or "none"


def _figures(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    if convert := _last_step(manifest, "convert"):
        parity = convert.get("parity") or {}
        rows.append(("Parity", (f"{'passed' if parity.get('passed') else 'FAILED'}, max abs error "
                                f"{parity.get('max_abs_error', 0):.2g} ({convert.get('framework')} -> ONNX, "
                                f"{convert.get('exporter')}, opset {convert.get('opset')})")))
    if optimize := _last_step(manifest, "optimize"):
        rows.append(("Optimization", (f"`{optimize.get('chosen')}`: {optimize.get('speedup', 1):.2f}x faster, "
                                      f"size {optimize.get('size_ratio', 1):.2f}x, accuracy change "
                                      f"{optimize.get('accuracy_delta', 0):+.3g}")))
        chosen = next((c for c in optimize.get("candidates", []) if c.get("name") == optimize.get("chosen")),
                      optimize.get("baseline") or {})
        if "p50_1_ms" in chosen:
            rows.append(("Latency", (f"p50 {chosen['p50_1_ms']:.3f} ms (1 row), p50 {chosen['p50_batch_ms']:.3f} ms "
                                     f"({optimize.get('batch_size')} rows), {optimize.get('device')}")))
    if build := _last_step(manifest, "build"):
        size = build.get("size")
        if size:
            rows.append(("Image size", f"{size / 1e6:.0f} MB"))
    return rows


def render(*, stage: str, decision: str, manifest: dict[str, Any] | None, plan: dict[str, Any] | None,
           analysis: dict[str, Any] | None, url: str | None, endpoint: str | None, run_url: str | None) -> str:
    endpoint = (plan or {}).get("endpoint") or endpoint or "endpoint"
    target = (plan or {}).get("target", "")
    lines = [marker(endpoint),
             (f"### {ICONS.get(decision, '•')} mldeploy: {stage} {decision} - `{endpoint}`"
              f"{f' ({target})' if target else ''}"), "", "| | |", "|---|---|"]
    if url:
        lines.append(f"| Endpoint | {url} |")
    if plan:
        lines.append(f"| Image | `{plan.get('image')}` |")
        lines.append(f"| Traffic | {_traffic(plan.get('traffic_before', {}))} -> "
                     f"{_traffic(plan.get('traffic_after', {}))} |")
        if "served" in plan:  # read back after the deploy, whatever it meant to do
            lines.append("| Serving now (read back) | " + (", ".join(
                f"{slot} {s['traffic']}% {'healthy' if s['healthy'] else '**UNHEALTHY**'} `{s['image'][-19:]}`"
                for slot, s in plan["served"].items()) or "nothing") + " |")
    for name, text in _figures(manifest or {}):
        lines.append(f"| {name} | {text} |")
    if analysis:
        reasons = "; ".join(analysis.get("reasons", [])) or "all checks within thresholds"
        lines.append(f"| Canary analysis | **{analysis.get('decision')}**: {reasons} |")
    if run_url:
        lines.append(f"| Run | {run_url} |")
    if plan and plan.get("changes"):
        rows = [f"| {c['action']} | `{c['resource']}` | {c.get('field', '')} | {_code(c.get('old'))} | "
                f"{_code(c.get('new'))} |" for c in plan["changes"]]
        lines += ["", "<details><summary>Plan</summary>", "", "| action | resource | field | old | new |",
                  "|---|---|---|---|---|", *rows, "", "</details>"]
    return "\n".join(lines) + "\n"


def build_report(*, stage: str, decision: str, bundle: str | None, plan: str | None, analysis: str | None,
                 url: str | None, endpoint: str | None, run_url: str | None) -> str:
    manifest = _load_json(str(Path(bundle) / "manifest.json") if bundle else None, "the bundle's manifest")
    return render(stage=stage, decision=decision, manifest=manifest, plan=_load_json(plan, "the plan"),
                  analysis=_load_json(analysis, "the canary analysis"), url=url, endpoint=endpoint,
                  run_url=run_url)
