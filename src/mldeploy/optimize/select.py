"""Which candidate replaces fp32: the fastest (or smallest) within the accuracy budget, if any beats it."""

from __future__ import annotations

from collections.abc import Callable

from mldeploy.config import BudgetSection


def budget_failures(acc: dict, baseline_metric: dict | None, budget: BudgetSection) -> list[str]:
    """Every budget limit this candidate breaks, in words (empty: within budget)."""
    broken = []
    if budget.top1_agreement is not None and "top1_agreement" in acc and acc["top1_agreement"] < budget.top1_agreement:
        broken.append(f"top-1 agreement {acc['top1_agreement']:.4f} < {budget.top1_agreement}")
    if budget.cosine_similarity is not None and acc["cosine_similarity"] < budget.cosine_similarity:
        broken.append(f"cosine {acc['cosine_similarity']:.5f} < {budget.cosine_similarity}")
    if budget.max_abs_diff is not None and acc["max_abs_diff"] > budget.max_abs_diff:
        broken.append(f"max abs diff {acc['max_abs_diff']:.3g} > {budget.max_abs_diff}")
    if budget.metric_drop is not None and baseline_metric and "metric" in acc:
        drop = metric_drop(baseline_metric, acc["metric"])
        if drop > budget.metric_drop:
            broken.append(f"{acc['metric']['name']} worse by {drop:.3g} > {budget.metric_drop}")
    return broken


def metric_drop(baseline: dict, candidate: dict) -> float:
    """How much worse the candidate's task metric is (accuracy points lost, or RMSE gained)."""
    if baseline["name"] == "accuracy":
        return baseline["value"] - candidate["value"]
    return candidate["value"] - baseline["value"]


def choose(rows: list[dict], baseline: dict, objective: str, device: str, min_speedup: float,
           compare: Callable[[dict, dict], float] | None = None) -> tuple[dict | None, str]:
    """The chosen row (None keeps fp32) and the reason, in words.

    Latency is chosen with hysteresis, so that noise cannot flip the choice between runs: the candidates
    are taken in the kit's fixed order and one replaces the current choice (fp32 first) only when it beats
    it by min_speedup, measured by `compare(current, candidate)` (side by side in optimize; from the rows'
    own p50s by default)."""
    eligible = [r for r in rows if r["status"] == "ok" and not r["budget_failures"] and not r["report_only"]
                and not (r["gpu_only"] and device == "cpu")]
    if objective == "size":
        better = [r for r in eligible if r["size_bytes"] < baseline["size_bytes"]]
        if not better:
            return None, "no candidate within the accuracy budget is smaller than fp32"
        best = min(better, key=lambda r: r["size_bytes"])
        return best, f"smallest within budget: {baseline['size_bytes'] / best['size_bytes']:.2f}x smaller than fp32"
    compare = compare or (lambda current, row: current["p50_batch_ms"] / row["p50_batch_ms"])
    current, against_fp32 = baseline, []
    for row in eligible:
        speedup = compare(current, row)
        row["side_by_side"] = {"against": current["name"], "speedup": round(speedup, 3)}
        if current is baseline:
            against_fp32.append(speedup)
        if speedup >= min_speedup:
            current = row
    if current is baseline:
        seen = f" (best within budget: {max(against_fp32):.2f}x)" if against_fp32 else ""
        return None, f"no candidate within the accuracy budget is {min_speedup:g}x faster than fp32{seen}"
    step = current["side_by_side"]
    return current, (f"fastest within budget: {step['speedup']:.2f}x faster than {step['against']} side by side "
                     f"(each choice must beat the one before by {min_speedup:g}x)")
