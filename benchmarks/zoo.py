"""The zoo's figures: every model in tests/zoo/models.yaml through `mldeploy convert` and `mldeploy optimize`.

    scripts/setup-zoo.sh && .venv/bin/python benchmarks/zoo.py [--only ID,ID] [--latency-seconds 0.3]

One row per model: source format, the exporter convert kept, convert seconds (load, export, parity,
bundle), parity's max abs error (from the bundle's convert report), and what optimize chose with its
speedup at batch 8 (from the optimize report; 16 generated samples), or the exit code and error line where a step
refused or failed. Then the CPU. Times drift on shared machines; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.zoo import harness  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_step(bundle: Path, step: str) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return next((s for s in reversed(manifest["steps"]) if s["step"] == step), {})


def one(m: dict, tmp: Path, latency_seconds: float) -> dict:
    row = {"id": m["id"], "format": m["format"], "expect": m["expect"]}
    if harness.shipped_file(m) is None:
        return {**row, "note": f"not installed ({m['package']}; scripts/setup-zoo.sh)"}
    work = tmp / m["id"]
    work.mkdir()
    # small optimize settings: some zoo inputs are large (9 s of audio a row), and static int8
    # calibrates on every sample
    m = {**m, "config": {**m["config"], "optimize": {"latency_seconds": latency_seconds, "samples": 16,
                                                    "batch_size": 8, **m["config"].get("optimize", {})}}}
    try:
        run, _, bundle = harness.convert(m, work)
    except Exception as e:  # a derive step failing is the zoo's problem, not convert's
        return {**row, "note": f"could not prepare: {type(e).__name__}: {e}"}
    row["convert_s"] = run.seconds
    if run.rc != 0:
        return {**row, "note": f"convert exit {run.rc}: {run.error}"}
    report = last_step(bundle, "convert")
    row.update(exporter=report.get("exporter"), max_abs=report.get("parity", {}).get("max_abs_error"))
    opt = harness.mldeploy(["optimize", "--config", str(work / "mldeploy.yaml"), "--bundle", str(bundle)], work)
    if opt.rc != 0:
        return {**row, "note": f"optimize exit {opt.rc}: {opt.error}"}
    o = last_step(bundle, "optimize")
    row.update(chosen=o.get("chosen"), speedup=o.get("speedup"), batch=o.get("batch_size"))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated model ids")
    ap.add_argument("--latency-seconds", type=float, default=0.5, help="optimize.latency_seconds (default 0.5)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    tmp = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    rows = []
    for m in harness.models():
        if only and m["id"] not in only:
            continue
        rows.append(one(m, tmp, args.latency_seconds))
        print(f"  done {m['id']}", file=sys.stderr, flush=True)
    print(f"{'model':<34} {'format':<11} {'exporter':<20} {'convert s':>9} {'max abs err':>11} "
          f"{'optimize':<14} {'speedup':>7}  note")
    for r in rows:
        err = f"{r['max_abs']:.1e}" if isinstance(r.get("max_abs"), (int, float)) else "-"
        speed = f"{r['speedup']:.2f}x" if isinstance(r.get("speedup"), (int, float)) else "-"
        secs = f"{r['convert_s']:.1f}" if "convert_s" in r else "-"
        note = r.get("note", "")
        if note and r["expect"] == "refuse":
            note = "(expected refusal) " + note
        print(f"{r['id']:<34} {r['format']:<11} {r.get('exporter') or '-'!s:<20} {secs:>9} {err:>11} "
              f"{r.get('chosen') or '-'!s:<14} {speed:>7}  {note[:200]}")
    import onnxruntime

    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__}, "
          f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
