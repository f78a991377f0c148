"""Drift of live traffic from the baseline: per feature and for the model's predictions.

Numeric features: population stability index (PSI) on the baseline's fixed bins (outer bins open,
an epsilon for empty bins) and a two-sample Kolmogorov-Smirnov test against the baseline's stored
sample. Categorical features: PSI over the categories, a chi-square goodness-of-fit test, the
Jensen-Shannon distance (base 2) and categories the baseline never saw. PSI is the primary
signal: with many records every tiny difference becomes "significant", so a test's p-value flags
a feature only together with PSI above half the threshold (monitoring.drift).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mldeploy.bundle import Bundle, now
from mldeploy.errors import UsageError
from mldeploy.monitor import baseline as base
from mldeploy.monitor.captured import Captured, read

if TYPE_CHECKING:
    from mldeploy.config import Config, DriftSection

EPSILON = 1e-4          # the share given to an empty bin, so that PSI stays finite
CHART_FEATURES = 30     # the chart shows the features with the highest PSI


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    e = np.maximum(expected / max(expected.sum(), 1), EPSILON)
    a = np.maximum(actual / max(actual.sum(), 1), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def numeric(feature: dict[str, Any], values: np.ndarray, psi_limit: float, ks_limit: float) -> dict[str, Any]:
    from scipy.stats import ks_2samp

    good = base.finite(values)
    result: dict[str, Any] = {"rows": len(values), "missing": int(len(values) - len(good))}
    if feature.get("histogram") is None or not len(good):
        return {**result, "psi": None, "ks_pvalue": None, "status": "no data"}
    hist = feature["histogram"]
    result["psi"] = psi(np.asarray(hist["counts"], np.float64), base.bin_counts(good, hist["edges"]).astype(np.float64))
    result["mean"] = float(good.mean())
    result["ks_pvalue"] = float(ks_2samp(feature["sample"], good).pvalue) if feature["sample"] else None
    ks_flags = result["ks_pvalue"] is not None and result["ks_pvalue"] < ks_limit and result["psi"] > psi_limit / 2
    result["status"] = "drift" if result["psi"] > psi_limit or ks_flags else "ok"
    return result


def categorical(feature: dict[str, Any], values: np.ndarray, psi_limit: float, chi2_limit: float,
                js_limit: float) -> dict[str, Any]:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chisquare

    expected = dict(feature["categories"])
    keys, counts = base.category_keys(values)
    seen: dict[str, int] = {}
    for key, count in zip(keys.tolist(), counts.tolist()):
        # a value the baseline pooled as "other" is not new; without that pool, it is
        name = key if key in expected or base.OTHER not in expected else base.OTHER
        seen[name] = seen.get(name, 0) + count
    new = sorted((k for k in seen if k not in expected), key=lambda k: -seen[k])
    names = list(expected) + new
    e = np.array([expected.get(k, 0.0) for k in names])
    a = np.array([seen.get(k, 0) for k in names], np.float64)
    total = a.sum()
    result: dict[str, Any] = {"rows": len(values), "missing": 0}
    if not total:
        return {**result, "psi": None, "chi2_pvalue": None, "js": None, "status": "no data"}
    smoothed = np.maximum(e, EPSILON)
    chi2 = chisquare(a, smoothed / smoothed.sum() * total)
    result.update(psi=psi(e, a), chi2_pvalue=float(chi2.pvalue), js=float(jensenshannon(e, a / total, base=2)),
                  new_categories=new[:10])
    chi2_flags = result["chi2_pvalue"] < chi2_limit and result["psi"] > psi_limit / 2
    drifted = bool(new) or result["psi"] > psi_limit or result["js"] > js_limit or chi2_flags
    result["status"] = "drift" if drifted else "ok"
    return result


def compare(features: list[dict[str, Any]], live: dict[str, np.ndarray], thresholds: DriftSection,
            psi_limit: float) -> list[dict]:
    """One result per baseline feature, in the baseline's order."""
    results = []
    for feature in features:
        values = live.get(feature["name"])
        row = {"name": feature["name"], "kind": feature["kind"]}
        if values is None or not len(values):
            results.append({**row, "rows": 0, "status": "no data"})
        elif feature["kind"] == "numeric":
            results.append({**row, **numeric(feature, values, psi_limit, thresholds.ks_pvalue)})
        else:
            results.append({**row, **categorical(feature, values, psi_limit, thresholds.chi2_pvalue,
                                                  thresholds.jensen_shannon)})
    return results


def check_model(found: dict[str, Any], bundle: Bundle, where: str) -> None:
    """Refuse a baseline made for another model: its signature hash must be this bundle's."""
    mine = base.signature_sha256(bundle)
    if found["signature_sha256"] != mine:
        raise UsageError(f"the baseline {where} was made for another model (model {found.get('model')!r}, "
                         f"signature {found['signature_sha256'][:12]}; this bundle's is {mine[:12]})",
                         hint="make a baseline for this bundle: `mldeploy monitor baseline --data FILE`")


def analyze(found: dict[str, Any], captured: Captured, thresholds: DriftSection) -> dict[str, Any]:
    """The drift report of captured traffic against a baseline (no I/O)."""
    report: dict[str, Any] = {
        "format": "mldeploy-drift/1", "created": now(), "model": found.get("model"), "capture": captured.source,
        "records": captured.records, "rows": captured.rows, "objects": captured.objects,
        "skipped": {"corrupt": captured.corrupt, "mismatched": captured.mismatched},
        "problems": captured.problems, "truncated": captured.truncated, "window": [captured.first, captured.last],
        "model_versions": dict(captured.versions), "formats": dict(captured.formats),
        "thresholds": thresholds.model_dump(include={"psi", "ks_pvalue", "chi2_pvalue", "jensen_shannon",
                                                     "prediction_psi", "min_records"}),
        "features": [], "predictions": [], "drift": False, "prediction_drift": False}
    if not captured.records:
        return {**report, "status": "no records"}
    report["features"] = compare(found["features"], captured.input_columns(), thresholds, thresholds.psi)
    report["predictions"] = compare(found["predictions"], captured.output_columns(), thresholds,
                                    thresholds.prediction_psi)
    if captured.rows < thresholds.min_records:
        for row in report["features"] + report["predictions"]:
            if row["status"] == "drift":
                row["status"] = "not enough data"
        return {**report, "status": "not enough data"}
    report["drift"] = any(r["status"] == "drift" for r in report["features"] + report["predictions"])
    report["prediction_drift"] = any(r["status"] == "drift" for r in report["predictions"])
    return {**report, "status": "drift" if report["drift"] else "ok"}


def run(cfg: Config, *, baseline_path: str | None = None, capture: str | None = None, max_records: int = 100_000,
        json_out: str | None = None) -> dict[str, Any]:
    """mldeploy monitor drift: read the baseline and the captured traffic, judge, write --json. The caller
    prints, writes the step summary and outputs, and decides the exit code (drift and fail_on_drift)."""
    bundle = Bundle.open(cfg.bundle)
    where = baseline_path or cfg.monitoring.baseline or str(bundle.path / base.FILE)
    found = base.load(where)
    check_model(found, bundle, where)
    source = capture or cfg.monitoring.drift.capture
    if not source:
        raise UsageError("no capture source given",
                         hint="pass --capture DIR|s3://...|gs://...|https://ACCOUNT.blob.core.windows.net/... "
                              "or set monitoring.drift.capture")
    if max_records < 1:
        raise UsageError(f"--max-records {max_records} must be at least 1")
    started = time.perf_counter()
    captured = read(source, bundle.signature, max_records=max_records, region=cfg.deploy.region)
    report = {**analyze(found, captured, cfg.monitoring.drift), "baseline": where,
              "seconds": round(time.perf_counter() - started, 3)}
    if json_out:
        import json

        try:
            Path(json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {json_out}: {e.strerror}") from None
    return report


# -- reports --------------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if 0 < abs(value) < 10 ** -digits else f"{value:.{digits}f}"


def _test(row: dict[str, Any]) -> str:
    if "ks_pvalue" in row:
        return f"KS p {_num(row['ks_pvalue'])}"
    if "chi2_pvalue" in row:
        return f"chi2 p {_num(row['chi2_pvalue'])}"
    return "-"


def _status(row: dict[str, Any]) -> str:
    new = row.get("new_categories")
    return f"{row['status']} (new: {', '.join(new[:3])})" if new else row["status"]


def headline(report: dict[str, Any]) -> str:
    skipped = report["skipped"]
    counts = (f"{report['records']} records ({report['rows']} rows) from {report['objects']} file(s); "
              f"skipped {skipped['corrupt']} corrupt, {skipped['mismatched']} not matching the signature")
    if report["status"] == "no records":
        return f"no records in {report['capture']}: nothing to judge ({counts})"
    if report["status"] == "not enough data":
        return (f"not enough data: {report['rows']} rows, fewer than min_records "
                f"{report['thresholds']['min_records']}; nothing flagged ({counts})")
    flagged = [r["name"] for r in report["features"] + report["predictions"] if r["status"] == "drift"]
    if flagged:
        judged = len(report["features"]) + len(report["predictions"])
        return f"DRIFT in {len(flagged)} of {judged}: {', '.join(flagged[:8])} ({counts})"
    return f"no drift ({counts})"


def text(report: dict[str, Any]) -> str:
    lines = [headline(report)]
    if report["features"] or report["predictions"]:
        lines.append(f"{'feature':<24} {'kind':<11} {'rows':>7} {'PSI':>8} {'test':>16} {'JS':>7}  status")
        for section in ("features", "predictions"):
            for r in report[section]:
                name = ("-> " if section == "predictions" else "") + r["name"]
                lines.append(f"{name:<24} {r['kind']:<11} {r['rows']:>7} {_num(r.get('psi')):>8} {_test(r):>16} "
                             f"{_num(r.get('js')):>7}  {_status(r)}")
    lines += [f"  skipped {p}" for p in report["problems"]]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    icon = {"drift": ":warning:", "ok": ":white_check_mark:"}.get(report["status"], ":information_source:")
    out = [f"### Drift: {report['status']} {icon}", "", headline(report).replace("|", "/"), ""]
    rows = [("", r) for r in report["features"]] + [("prediction ", r) for r in report["predictions"]]
    if rows:
        out += ["| feature | kind | rows | PSI | KS p / chi2 p | JS | status |", "|---|---|---:|---:|---:|---:|---|"]
        for prefix, r in rows:
            status = f"**{_status(r)}**" if r["status"] == "drift" else _status(r)
            out.append(f"| {prefix}`{r['name']}` | {r['kind']} | {r['rows']} | {_num(r.get('psi'))} | "
                       f"{_test(r)} | {_num(r.get('js'))} | {status} |")
        out += ["", chart(report)]
    if report["problems"]:
        out += ["", "<details><summary>skipped records (first few)</summary>", "",
                *[f"- `{p}`" for p in report["problems"]], "", "</details>"]
    return "\n".join(out)


def chart(report: dict[str, Any]) -> str:
    """A Mermaid bar chart of PSI per feature with the threshold as a line (GitHub renders it)."""
    rows = [r for r in report["features"] + report["predictions"] if r.get("psi") is not None]
    rows = sorted(rows, key=lambda r: -r["psi"])[:CHART_FEATURES]
    if not rows:
        return ""
    limit = report["thresholds"]["psi"]
    top = max(*(r["psi"] for r in rows), limit) * 1.1
    names = ", ".join('"' + r["name"].replace('"', "'") + '"' for r in rows)
    return "\n".join(["```mermaid", "xychart-beta", f'    title "PSI per feature (threshold {limit:g})"',
                      f"    x-axis [{names}]", f'    y-axis "PSI" 0 --> {math.ceil(top * 100) / 100:g}',
                      "    bar [" + ", ".join(f"{r['psi']:.4f}" for r in rows) + "]",
                      "    line [" + ", ".join(f"{limit:g}" for _ in rows) + "]", "```"])
