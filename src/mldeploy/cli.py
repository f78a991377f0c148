"""The `mldeploy` command: parse, call one function, map errors to exit codes.

Exit codes: 0 done, 1 a check failed, 2 bad usage/config/input, 3 a bug in mldeploy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mldeploy import __version__, github
from mldeploy.errors import EXIT_BUG, CheckFailed, MldeployError, UsageError

if TYPE_CHECKING:
    from mldeploy.bundle import Bundle
    from mldeploy.config import Config
    from mldeploy.deploy.base import Status, Target

EPILOG = """exit codes: 0 done, 1 a check failed, 2 bad usage/config/input, 3 a bug in mldeploy
config precedence: flag > MLDEPLOY_<SECTION>__<KEY> environment > mldeploy.yaml > default
docs: https://github.com/acme/ml-deploy#readme"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="config file (default: $MLDEPLOY_CONFIG, else ./mldeploy.yaml if present)")
    common.add_argument("--debug", action="store_true",
                        help="show tracebacks and exporter logs (or set MLDEPLOY_DEBUG=1)")

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mldeploy", formatter_class=fmt, epilog=EPILOG,
        description="Ship a trained model to production: convert it to ONNX with a parity check, "
                    "then optimize, package and deploy it (AWS, GCP, Azure or a local Docker engine).")
    parser.add_argument("--version", action="version", version=f"mldeploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    conv = sub.add_parser(
        "convert", parents=[common], formatter_class=fmt, epilog=EPILOG,
        help="convert a PyTorch, TensorFlow/Keras or ONNX model into a parity-checked bundle",
        description="Convert a trained model into a bundle (model.onnx, signature.json, manifest.json).\n"
                    "The ONNX model must compute what the source computes, at batch 1 and at a batch\n"
                    "larger than the export example; otherwise nothing is written and the exit code is 1.",
        usage="mldeploy convert [MODEL] [options]")
    conv.add_argument("model", nargs="?", metavar="MODEL",
                      help="model file or SavedModel folder (default: model.path from the config)")
    conv.add_argument("--framework", choices=["auto", "torch", "tensorflow", "onnx"],
                      help="source framework (default: auto-detect)")
    conv.add_argument("--out", metavar="DIR", help="bundle folder (default: .mldeploy/bundle)")
    conv.add_argument("--input", dest="inputs", action="append", metavar="NAME:DTYPE:DIMS",
                      help="declare an input, e.g. x:float32:batch,3,224,224 (repeat per input; "
                           "required for TorchScript and state_dict models)")
    conv.add_argument("--factory", metavar="MODULE:FUNCTION",
                      help="for a state_dict: the function in your repo that builds the module")
    conv.add_argument("--allow-pickle", action="store_true", default=None,
                      help="load a fully pickled PyTorch module (this runs code from the file)")
    conv.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 18)")
    conv.add_argument("--sample", metavar="FILE", help="sample inputs for parity: .npz, .npy or .jsonl")
    conv.add_argument("--atol", type=float, metavar="X", help="absolute parity tolerance (default 1e-4)")
    conv.add_argument("--rtol", type=float, metavar="X", help="relative parity tolerance (default 1e-3)")
    conv.add_argument("--batch-size", type=int, metavar="N", help="the larger parity batch (default 8)")
    conv.add_argument("--torchscript", action="store_true", default=None,
                      help="also write a TorchScript copy (PyTorch sources)")
    conv.add_argument("--tflite", action="store_true", default=None,
                      help="also write a TF Lite model (TensorFlow sources)")
    conv.add_argument("--force", action="store_true",
                      help="convert again even if the bundle already holds this exact conversion")
    conv.add_argument("--detect-only", action="store_true",
                      help="print the detected framework (torch, tensorflow or onnx) and exit")
    conv.set_defaults(func=cmd_convert)

    opt = sub.add_parser(
        "optimize", parents=[common], formatter_class=fmt, epilog=EPILOG,
        help="make the bundle's model faster or smaller, measured, under an accuracy budget",
        description="Try optimization candidates (graph optimization, onnxslim, dynamic and static int8,\n"
                    "transformer fusions, fp16 for GPU, pruning), measure each against fp32 on your data\n"
                    "(accuracy, latency at batch 1 and batch N, size, load time), and keep the fastest (or\n"
                    "smallest) within the budget. fp32 stays as model.fp32.onnx. Needs only ONNX Runtime.")
    opt.add_argument("--bundle", metavar="DIR", help="bundle folder (default: .mldeploy/bundle)")
    opt.add_argument("--data", metavar="FILE", help="calibration/evaluation inputs: .npz (may hold labels), "
                                                    ".npy or .jsonl (default: generated, with a warning)")
    opt.add_argument("--objective", choices=["latency", "size"], help="what to minimize (default latency)")
    opt.add_argument("--candidates", metavar="A,B", help="comma-separated candidates (default: auto by model)")
    opt.add_argument("--batch-size", type=int, metavar="N", help="batch the latency is judged at (default 32)")
    opt.add_argument("--device", choices=["cpu", "gpu"], help="what the model will serve on (default cpu)")
    opt.add_argument("--require-improvement", action="store_true", default=None,
                     help="exit 1 when no candidate beats fp32 within budget")
    opt.add_argument("--force", action="store_true", help="measure again even if nothing changed")
    opt.set_defaults(func=cmd_optimize)

    bld = sub.add_parser(
        "build", parents=[common], formatter_class=fmt, epilog=EPILOG,
        help="build the bundle's slim serving image; push it by digest with --push",
        description="Build one serving image for the bundle (ONNX Runtime + mldeploy serve on a slim\n"
                    "Python base; never torch or TensorFlow) on the engine DOCKER_HOST names, and with\n"
                    "--push push it to a registry and record the digest in the manifest.")
    bld.add_argument("--bundle", metavar="DIR", help="bundle folder (default: .mldeploy/bundle)")
    bld.add_argument("--base", metavar="IMAGE", help="base image (default python:3.11-slim)")
    bld.add_argument("--dockerfile", metavar="FILE", help="your own Dockerfile instead of ours")
    bld.add_argument("--push", action="store_true", help="push to the registry and print the digest")
    bld.add_argument("--registry", metavar="HOST[/PATH]", help="registry, e.g. 127.0.0.1:5000 or ghcr.io/acme")
    bld.add_argument("--repository", metavar="NAME", help="repository (default mldeploy/<model name>)")
    bld.add_argument("--no-cache", action="store_true", help="build every step again, as a fresh CI runner does "
                                                            "(the image is the same either way)")
    bld.set_defaults(func=cmd_build)

    from mldeploy import targets as registry

    targets = ", ".join(f"{c} {'|'.join(registry.targets_of(c))}" for c in registry.clouds())
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--bundle", metavar="DIR", help="bundle folder (default: .mldeploy/bundle)")
    where.add_argument("--cloud", choices=registry.clouds(), help="where (default: deploy.cloud)")
    where.add_argument("--endpoint", metavar="NAME", help="endpoint name (default: deploy.endpoint, else the model's name)")
    where.add_argument("--target", metavar="NAME", help=f"{targets} (default: deploy.target)")
    where.add_argument("--region", metavar="NAME", help="cloud region (default: deploy.region)")
    where.add_argument("--port", type=int, metavar="N", help="cloud local: the endpoint's port (default 8080)")
    where.add_argument("--pr", type=int, metavar="N", default=_pr_number(),
                       help="pull request number: its canary is a slot of its own (default: $MLDEPLOY_PR)")
    dep = sub.add_parser(
        "deploy", parents=[common, where], formatter_class=fmt, epilog=EPILOG,
        help="deploy the bundle's image (by digest) as a canary or to production",
        description="Deploy the image `mldeploy build --push` recorded in the bundle to a slot: the canary\n"
                    "(taking --traffic percent) or production. The new slot must report ready, serve the\n"
                    "digest asked for and answer a smoke request before any traffic moves; otherwise it\n"
                    "is removed, production keeps serving as it was, and the exit code is 1.")
    dep.add_argument("--stage", choices=["canary", "production"], default="canary", help="slot (default canary)")
    dep.add_argument("--traffic", type=int, metavar="PERCENT", help="canary share (default deploy.canary_traffic)")
    dep.add_argument("--image", metavar="REPO@DIGEST", help="image to deploy (default: the bundle's last build)")
    dep.add_argument("--plan", action="store_true", help="print what would change, change nothing")
    dep.add_argument("--plan-out", metavar="FILE", help="also write the plan as JSON to FILE")
    dep.add_argument("--manifests", metavar="DIR", help="kubernetes: also write the objects the deploy would apply "
                                                        "as YAML files in DIR")
    dep.set_defaults(func=cmd_deploy)
    pub = sub.add_parser(
        "publish", parents=[common, where], formatter_class=fmt, epilog=EPILOG,
        help="upload the bundle's model to object storage (image.model: storage)",
        description="Upload the bundle's served files (model.onnx, signature.json, manifest.json) and their\n"
                    "sha256 listing to <storage.uri>/<model name>/<bundle sha256>/, never overwriting a key\n"
                    "(other bytes under one: exit 1), and record the publish (uri, sha256, the store's\n"
                    "version ids) in the manifest for `mldeploy deploy`. A re-run says up to date.\n"
                    "--prune lists the artifacts no slot of the endpoint serves, other than this bundle's\n"
                    "and the storage.keep newest; with --yes it deletes them.")
    pub.add_argument("--storage", metavar="URI", help="where (default: storage.uri)")
    pub.add_argument("--prune", action="store_true", help="list the artifacts retention would delete")
    pub.add_argument("--yes", action="store_true", help="with --prune: delete them")
    pub.set_defaults(func=cmd_publish)
    for verb, text in (("status", "print the endpoint's slots, images, traffic and health"),
                       ("promote", "make the canary production (all of the traffic)"),
                       ("rollback", "remove the canary; production takes all traffic")):
        p = sub.add_parser(verb, parents=[common, where], formatter_class=fmt, epilog=EPILOG, help=text,
                           description=text[0].upper() + text[1:] + ".")
        p.set_defaults(func=cmd_slots, verb=verb)
        if verb == "rollback":
            p.add_argument("--missing-ok", action="store_true",
                           help="no canary to roll back is success (tearing down a closed PR's canary)")
    des = sub.add_parser("destroy", parents=[common, where], formatter_class=fmt, epilog=EPILOG,
                         help="remove a local endpoint: its router, slot containers and network",
                         description="Remove a local endpoint (cloud: local): its router, its slot containers and\n"
                                     "its network, and nothing else. Clouds' endpoints are removed in the cloud.")
    des.set_defaults(func=cmd_destroy)
    doc = sub.add_parser("doctor", parents=[common, where], formatter_class=fmt, epilog=EPILOG,
                         help="check the cloud credentials, identity and deploy permissions",
                         description="Check who the cloud credentials belong to and whether they may deploy;\n"
                                     "explain the usual OIDC role-assumption failures. Prints no secret.")
    doc.add_argument("--trust", metavar="FILE", help="check this trust setup (docs/security.md) against the job's OIDC "
                     "token claims instead: which identity this job may assume; exit 1 on a hole")
    doc.add_argument("--claims", metavar="FILE", help="with --trust: the token's claims (JSON or a JWT; default the "
                     "running job's token)")
    doc.add_argument("--identity", choices=("push", "canary", "production"), help="with --trust: the identity this "
                     "job is about to use (exit 1 if it may not)")
    doc.set_defaults(func=cmd_doctor)

    ini = sub.add_parser(
        "init", formatter_class=fmt, epilog=EPILOG,
        help="start a model repo: mldeploy.yaml, the starter workflows and a .gitignore entry",
        description="Scaffold a model repo: detect the model's format, write mldeploy.yaml (with the inputs\n"
                    "the model records, or TODOs where it records none), the starter workflows in\n"
                    ".github/workflows and `.mldeploy/` in .gitignore. Overwrites nothing: exit 2 if a file exists.")
    ini.add_argument("model", nargs="?", metavar="MODEL_FILE",
                     help="the trained model (default: the one model file in the folder, if there is one)")
    ini.add_argument("--dir", default=".", metavar="DIR", help="the model repo's folder (default: the current one)")
    ini.add_argument("--debug", action="store_true", help="show tracebacks")
    ini.set_defaults(func=cmd_init)

    reh = sub.add_parser(
        "rehearse", formatter_class=fmt, epilog=EPILOG,
        help="run the model repo's own workflow under act on this machine, against the local Docker engine",
        description="Run a workflow of this model repo (.github/workflows) under act, offline: the kit mapped\n"
                    "to its checkout, the remote actions to stand-ins, GitHub's API to a local fake that\n"
                    "prints the pull request comment, the jobs on the local Docker engine and registry.\n"
                    "Exit 1 when a job failed or none ran; 2 when it cannot be rehearsed (a cloud, no act).")
    reh.add_argument("workflow", nargs="?", metavar="WORKFLOW",
                     help="file in .github/workflows (default: the one --event runs)")
    reh.add_argument("--event", choices=["pull_request", "release", "dispatch"],
                     help="pull_request (default), release (a release tag) or dispatch (a button: promote, rollback)")
    reh.add_argument("--pr", type=int, default=1, metavar="N", help="the pull request's number (default 1)")
    reh.add_argument("--kit", metavar="PATH", help="checkout of acme/ml-deploy (default: $MLDEPLOY_KIT, else the "
                                                   "checkout this mldeploy is installed from)")
    reh.add_argument("--dir", default=".", metavar="DIR", help="the model repo (default: the current folder)")
    reh.add_argument("--debug", action="store_true", help="show tracebacks")
    reh.set_defaults(func=cmd_rehearse)

    run = sub.add_parser(
        "run", parents=[common], formatter_class=fmt, epilog=EPILOG,
        help="the whole pipeline from mldeploy.yaml: convert, optimize, build, push, deploy, smoke",
        description="Run the pipeline: convert -> optimize -> build -> push -> deploy (a canary taking\n"
                    "deploy.canary_traffic percent, or production on the first deploy) -> smoke ->\n"
                    "promote (with --promote). Each step is what its own command does.")
    run.add_argument("--promote", action="store_true", help="promote the canary after a clean smoke test")
    run.set_defaults(func=cmd_run)

    srv = sub.add_parser(
        "serve", formatter_class=fmt, epilog=EPILOG,
        help="serve a bundle over HTTP (the serving image's entrypoint)",
        description="Serve the bundle's model with ONNX Runtime behind one HTTP server that speaks\n"
                    "SageMaker's, Vertex AI's, Azure ML's and the v2 (KServe) protocols. Settings come\n"
                    "from the environment (MLDEPLOY_*, and each cloud's own variables); see docs/serve.md.")
    srv.add_argument("ignored", nargs="?", choices=["serve"], help=argparse.SUPPRESS)  # SageMaker passes `serve`
    srv.add_argument("--bundle", metavar="DIR", help="bundle folder (default: $MLDEPLOY_BUNDLE, "
                     "$AZUREML_MODEL_DIR, /opt/ml/model or ./bundle, searched a few folders down)")
    srv.add_argument("--port", type=int, metavar="N", help="port (default: $AIP_HTTP_PORT, "
                     "$SAGEMAKER_BIND_TO_PORT, $PORT, else 8080)")
    srv.add_argument("--host", metavar="ADDR", help="address to listen on (default 0.0.0.0)")
    srv.add_argument("--workers", type=int, metavar="N", help="worker processes (default: the CPUs "
                     "the container may use)")
    srv.add_argument("--openapi", action="store_true", help="print the server's generic OpenAPI document and exit")
    srv.add_argument("--debug", action="store_true", help="show tracebacks")
    srv.set_defaults(func=cmd_serve)

    cfg = sub.add_parser("config", formatter_class=fmt, epilog=EPILOG, help="check mldeploy.yaml or print its JSON Schema",
                         description="Work with mldeploy.yaml, the config of a model repo.")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    val = cfg_sub.add_parser("validate", parents=[common], formatter_class=fmt, epilog=EPILOG,
                             help="check a config file; exit 2 if invalid",
                             description="Validate a config file (with MLDEPLOY_* environment overrides) "
                                         "and print the effective config as JSON.")
    val.add_argument("file", nargs="?", metavar="FILE", help="config file (default: ./mldeploy.yaml)")
    val.add_argument("--quiet", action="store_true", help="print nothing when the config is valid")
    val.set_defaults(func=cmd_config_validate)
    get = cfg_sub.add_parser("get", parents=[common], formatter_class=fmt, epilog=EPILOG,
                             help="print one value of the effective config (file, environment, defaults)",
                             description="Print the effective value of a dotted key, e.g. deploy.cloud.")
    get.add_argument("key", metavar="KEY", help="dotted key, e.g. deploy.cloud or image.registry")
    get.set_defaults(func=cmd_config_get)
    sch = cfg_sub.add_parser("schema", parents=[common], formatter_class=fmt, epilog=EPILOG, help="print the JSON Schema of mldeploy.yaml",
                             description="Print the JSON Schema of mldeploy.yaml, for editor completion "
                                         "(e.g. `# yaml-language-server: $schema=...`).")
    sch.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    sch.set_defaults(func=cmd_config_schema)

    rep = sub.add_parser(
        "report", parents=[common, where], formatter_class=fmt, epilog=EPILOG,
        help="the deploy report: step summary and one pull request comment, updated in place",
        description="Write what a deploy did (decision, endpoint, image, traffic, parity, optimization,\n"
                    "latency, canary analysis, the plan) as Markdown to the step summary; with --comment,\n"
                    "also create or update this endpoint's comment on pull request --pr (needs GITHUB_TOKEN).")
    rep.add_argument("--stage", help="canary, production, rollback or teardown")
    rep.add_argument("--decision", help="deployed, promoted, rolled-back, failed, ...")
    rep.add_argument("--from", dest="from_file", metavar="FILE",
                     help="a report made earlier (--out): print, summarize or comment it as it is")
    rep.add_argument("--plan", metavar="FILE", help="the deploy's plan JSON (deploy --plan-out)")
    rep.add_argument("--analysis", metavar="FILE", help="the canary analysis JSON (canary analyze --json)")
    rep.add_argument("--url", help="where the endpoint answers")
    rep.add_argument("--out", metavar="FILE", help="also write the Markdown to FILE")
    rep.add_argument("--comment", action="store_true", help="create or update the comment on pull request --pr")
    rep.set_defaults(func=cmd_report)

    mon = sub.add_parser("monitor", formatter_class=fmt, epilog=EPILOG,
                         help="baselines, drift checks and the cloud's monitoring",
                         description="Watch a deployed model: baseline statistics, drift of live inputs and\n"
                                     "predictions, and the cloud's own monitoring and alarms.")
    mon_sub = mon.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)
    # monitor baseline / drift (mldeploy.monitor.drift)
    bas = mon_sub.add_parser(
        "baseline", parents=[common], formatter_class=fmt, epilog=EPILOG,
        help="record statistics of reference inputs and of the model's outputs on them",
        description="Compute per-feature statistics of reference (training) inputs and of the bundle's\n"
                    "predictions on them: counts, missing, mean/std, quantiles, histograms on fixed bin\n"
                    "edges, category frequencies. Written to baseline.json in the bundle (and noted in\n"
                    "its manifest), or to --out FILE. `mldeploy monitor drift` compares traffic with it.")
    bas.add_argument("--data", metavar="FILE", help="reference inputs: .npz (one array per input), .npy or "
                                                    ".jsonl (default: optimize.data)")
    bas.add_argument("--bundle", metavar="DIR", help="bundle folder (default: .mldeploy/bundle)")
    bas.add_argument("--out", metavar="FILE", help="write the baseline here instead of into the bundle")
    bas.add_argument("--bins", type=int, metavar="N", help="histogram bins (default monitoring.drift.bins)")
    bas.add_argument("--force", action="store_true", help="compute again even if the baseline is up to date")
    bas.set_defaults(func=cmd_monitor_baseline)
    dri = mon_sub.add_parser(
        "drift", parents=[common], formatter_class=fmt, epilog=EPILOG,
        help="compare captured requests with the baseline; exit 1 on drift with --fail-on-drift",
        description="Read captured requests (the serving runtime's capture-*.jsonl or SageMaker data\n"
                    "capture; a folder, s3://, gs:// or https://ACCOUNT.blob.core.windows.net/...), newest\n"
                    "first, and judge drift per feature and for the predictions: PSI, Kolmogorov-Smirnov,\n"
                    "chi-square, Jensen-Shannon, new categories. Thresholds: monitoring.drift.\n"
                    "Exit 1 on drift only with --fail-on-drift (or monitoring.drift.fail_on_drift); 2 for a\n"
                    "baseline made for another model.")
    dri.add_argument("--capture", metavar="DIR|URI", help="where captured requests are (default: "
                                                          "monitoring.drift.capture)")
    dri.add_argument("--baseline", metavar="FILE", help="baseline (default: monitoring.baseline, else "
                                                        "baseline.json in the bundle)")
    dri.add_argument("--bundle", metavar="DIR", help="bundle folder (default: .mldeploy/bundle)")
    dri.add_argument("--max-records", type=int, default=100_000, metavar="N",
                     help="read at most this many of the newest records (default 100000)")
    dri.add_argument("--fail-on-drift", action="store_true", default=None, help="exit 1 when anything drifts")
    dri.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    dri.add_argument("--region", metavar="NAME", help="AWS region of an s3:// source (default: deploy.region)")
    dri.set_defaults(func=cmd_monitor_drift)
    # monitor setup (mldeploy.monitor.setup)
    mset = mon_sub.add_parser(
        "setup", parents=[common, where], formatter_class=fmt, epilog=EPILOG,
        help="set up the cloud's own monitoring and alarms of the endpoint",
        description="Set up the cloud's monitoring of a deployed endpoint: SageMaker Model Monitor (data quality,\n"
                    "from the baseline) and CloudWatch alarms with SNS; a Vertex AI model monitoring job and\n"
                    "Cloud Monitoring alert policies (Vertex AI, Cloud Run) with email channels; Azure Monitor\n"
                    "metric alerts with an action group; locally, a capture check and a\n"
                    "schedule for `mldeploy monitor drift`. Re-runs change nothing when nothing changed.")
    mset.add_argument("--baseline", metavar="FILE", help="baseline statistics (default: monitoring.baseline)")
    mset.add_argument("--plan", action="store_true", help="print what would change, change nothing")
    mset.add_argument("--plan-out", metavar="FILE", help="also write the plan as JSON to FILE")
    mset.set_defaults(func=cmd_monitor_setup)

    can = sub.add_parser("canary", formatter_class=fmt, epilog=EPILOG,
                         help="judge the canary against production",
                         description="Compare the canary slot with production over a window and decide\n"
                                     "promote, hold or rollback.")
    can_sub = can.add_subparsers(dest="canary_command", metavar="ACTION", required=True)
    # canary analyze (mldeploy.monitor.canary)
    ana = can_sub.add_parser(
        "analyze", parents=[common, where], formatter_class=fmt, epilog=EPILOG,
        help="decide promote, hold or rollback from both slots' metrics over a window",
        description="Compare the canary with production over the same window: 5xx error rate, latency\n"
                    "p50/p99 and (where requests are captured) how far their predictions diverge. Local:\n"
                    "the router's per-slot /metrics, scraped now and after --window seconds; AWS: CloudWatch\n"
                    "over the last --window seconds. Thresholds: monitoring.canary in mldeploy.yaml.\n"
                    "Exit 0 for promote and hold, 1 for rollback (unless --no-fail).")
    ana.add_argument("--window", type=float, metavar="SECONDS",
                     help="how long to look (default monitoring.canary.window_seconds); local: 0 reads "
                          "everything since the slots started, without waiting")
    ana.add_argument("--json", metavar="FILE", help="also write the decision, reasons and figures as JSON")
    ana.add_argument("--no-fail", action="store_true", help="exit 0 on rollback too (report only)")
    ana.add_argument("--missing-ok", action="store_true",
                     help="no canary to judge (the first deploy went to production) is success: decision none")
    ana.set_defaults(func=cmd_canary_analyze)
    return parser


def _input_flag(text: str) -> dict:
    parts = text.split(":")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise UsageError(f"--input {text!r} is not NAME:DTYPE:DIMS", hint="e.g. --input x:float32:batch,8")
    dims = [int(d) if d.strip().lstrip("-").isdigit() else d.strip() for d in parts[2].split(",")]
    return {"name": parts[0], "dtype": parts[1], "shape": dims}


def cmd_init(args: argparse.Namespace) -> int:
    from mldeploy.scaffold import init

    done = init(Path(args.dir), args.model)
    for path in done.written:
        print(f"wrote {path}")
    if done.gitignore != "unchanged":
        print(f"{done.gitignore} {Path(args.dir) / '.gitignore'} (.mldeploy/)")
    if done.todo:
        print(f"TODO in mldeploy.yaml: {', '.join(done.todo)} (see its comments)")
    print("next:")
    for step in done.next_steps:
        print(f"  {step}")
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    from mldeploy.rehearsal.rehearse import rehearse

    return rehearse(Path(args.dir), args.workflow, args.event, args.pr, args.kit)


def cmd_convert(args: argparse.Namespace) -> int:
    from mldeploy.config import load_config

    overrides = {
        "model.framework": args.framework, "model.factory": args.factory, "model.allow_pickle": args.allow_pickle,
        "model.opset": args.opset, "model.torchscript": args.torchscript, "model.tflite": args.tflite,
        "parity.sample": args.sample, "parity.atol": args.atol, "parity.rtol": args.rtol,
        "parity.batch_size": args.batch_size, "bundle": args.out, "model.path": args.model,
        "inputs": [_input_flag(t) for t in args.inputs] if args.inputs else None,
    }
    cfg = load_config(args.config, overrides=overrides)
    if args.detect_only:  # light: the action calls it before installing a framework
        from mldeploy.convert.detect import detect, model_path

        print(detect(model_path(cfg.model.path), cfg.model.framework)[0])
        return 0

    from mldeploy.convert import convert

    done = convert(cfg, force=args.force)
    github.set_output("bundle", str(done.bundle.path))
    github.set_output("onnx-path", str(done.bundle.model_path))
    github.set_output("parity-max-abs-error", done.report["parity"]["max_abs_error"])
    github.set_output("exporter", done.report["exporter"])
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from mldeploy.config import load_config

    overrides = {
        "bundle": args.bundle, "optimize.data": args.data, "optimize.objective": args.objective,
        "optimize.candidates": args.candidates,
        "optimize.batch_size": args.batch_size, "optimize.device": args.device,
        "optimize.require_improvement": args.require_improvement,
    }
    cfg = load_config(args.config, overrides=overrides)
    from mldeploy.optimize import optimize

    done = optimize(cfg, force=args.force)
    github.set_output("model-path", str(done.bundle.model_path))
    github.set_output("chosen", done.report["chosen"])
    github.set_output("speedup", done.report["speedup"])
    github.set_output("size-ratio", done.report["size_ratio"])
    github.set_output("accuracy-delta", done.report["accuracy_delta"])
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from mldeploy.config import load_config
    from mldeploy.image import build_and_push

    cfg = load_config(args.config, overrides={
        "bundle": args.bundle, "image.base": args.base, "image.dockerfile": args.dockerfile,
        "image.registry": args.registry, "image.repository": args.repository})
    report = build_and_push(cfg.bundle, base=cfg.image.base, registry=cfg.image.registry,
                            repository=cfg.image.repository, dockerfile=cfg.image.dockerfile,
                            environment=cfg.image.environment, push_image=args.push, cache=not args.no_cache,
                            model=cfg.image.model, storage_uri=cfg.storage.uri)
    size = report["size"]  # the image's size in bytes, as the engine reports it; None: the registry's, not built
    size_mb = f"{size / 1e6:.0f} MB" if isinstance(size, int) else "in the registry already"
    github.set_output("image", report["image"])
    github.set_output("digest", report.get("digest", ""))
    github.set_output("image-size", report["size"] or "")
    github.add_summary(f"### Serving image\n\n| image | size |\n|---|---|\n| `{report['image']}` | {size_mb} |\n")
    return 0


def _target(args: argparse.Namespace) -> tuple[Config, Bundle | None, Target]:
    from mldeploy.deploy import target_for

    cfg, bundle, endpoint = _where(args)
    return cfg, bundle, target_for(cfg, endpoint)


def _where(args: argparse.Namespace, more: dict[str, object] | None = None) -> tuple[Config, Bundle | None, str]:
    """The config with the `where` flags (and `more` overrides) applied, the bundle when it was
    needed, and the endpoint name."""
    from mldeploy.config import load_config, require_deploy_keys

    cfg = load_config(args.config, overrides={"bundle": args.bundle, "deploy.cloud": args.cloud,
                                              "deploy.target": args.target, "deploy.region": args.region,
                                              "deploy.endpoint": args.endpoint, "deploy.port": args.port,
                                              **(more or {})})
    if args.command in ("deploy", "monitor"):  # what creates resources; reading needs no more keys
        require_deploy_keys(cfg, args.config)
    from mldeploy.bundle import Bundle

    endpoint = cfg.deploy.endpoint
    bundle = None
    if endpoint is None or args.command == "deploy":
        bundle = Bundle.open(cfg.bundle)
        endpoint = endpoint or _model_name(bundle)
    return cfg, bundle, endpoint


def _pr_number() -> int | None:
    text = os.environ.get("MLDEPLOY_PR", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _model_name(bundle: Bundle) -> str:
    from mldeploy.image import _model_name as name

    return name(bundle)


def _print_status(status: Status) -> None:
    print(f"endpoint: {status.endpoint}  url: {status.url or '-'}")
    for slot, s in status.slots.items():
        ready = f"{s.readiness}  " if s.readiness else ""   # where the target counts its instances
        model = f"  model {s.model}" if s.model else ""      # image.model: storage
        print(f"  {slot:<10} {s.traffic:>3}%  {'healthy' if s.healthy else 'UNHEALTHY'}  {ready}{s.image}{model}")
    if isinstance(status.detail.get("traffic"), str):   # a target's word on how its shares are made
        print(f"  traffic {status.detail['traffic']}")
    github.set_output("url", status.url or "")


def cmd_deploy(args: argparse.Namespace) -> int:
    from mldeploy import provenance
    from mldeploy.deploy import Desired, smoke_body
    from mldeploy.publish import published_model
    from mldeploy.trust import check_pull_request

    cfg, bundle, target = _target(args)
    assert bundle is not None  # a deploy always opens the bundle
    image = args.image or next((s.get("image") for s in reversed(bundle.manifest["steps"])
                                if s.get("step") == "build"), None)
    if not image or "@sha256:" not in image:
        raise UsageError(f"no image digest to deploy (found {image!r})",
                         hint="run `mldeploy build --push` first, or pass --image REPO@sha256:...")
    traffic = cfg.deploy.canary_traffic if args.traffic is None else args.traffic
    if not 0 <= traffic <= 100:
        raise UsageError(f"--traffic {traffic} is not a percentage (0 to 100)")
    model = published_model(cfg, bundle)   # image.model: storage: the bundle's last publish
    plan = target.plan(Desired(target.endpoint, image, args.stage, traffic, smoke_body(bundle.signature), args.pr,
                               model))
    print(plan.text())
    github.add_summary(plan.markdown())
    if args.plan_out:
        Path(args.plan_out).write_text(plan.to_json() + "\n", encoding="utf-8")
    if args.manifests:
        if not hasattr(target, "write_manifests"):
            raise UsageError(f"--manifests is for Kubernetes; {target.name} has no manifests to write")
        print(f"wrote {len(target.write_manifests(plan, args.manifests))} manifests to {args.manifests}")
    if args.plan:
        return 0
    provenance.check(cfg.deploy.require_provenance, image)  # before anything changes: one line, exit 1
    before = target.status()
    production = before.slots["production"].image if "production" in before.slots else None
    check_pull_request(args.stage, traffic, cfg.deploy.canary_max_traffic, production is not None)
    expect: dict[str, str | None] = {"production": image if args.stage == "production" or not production
                                     else production}
    if plan.traffic_after.get(plan.desired.slot) and production and args.stage != "production":
        expect[plan.desired.slot] = image
    def record(status: Status) -> None:  # the report shows what serves, read back, not what was planned
        if args.plan_out:
            served = {slot: {"image": s.image, "traffic": s.traffic, "healthy": s.healthy,
                             **({"model": {"uri": s.model.uri, "sha256": s.model.sha256}} if s.model else {})}
                      for slot, s in status.slots.items()}
            Path(args.plan_out).write_text(json.dumps({**json.loads(plan.to_json()), "served": served}, indent=2)
                                           + "\n", encoding="utf-8")

    _truth(target, lambda: None if plan.empty else target.apply(plan),
           expect, {"production": production} if production else {}, record=record)
    github.set_output("image", image)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from mldeploy import publish

    if args.yes and not args.prune:
        raise UsageError("--yes deletes what --prune lists; pass both")
    cfg, _, endpoint = _where(args, {"storage.uri": args.storage})
    report = publish.publish(cfg)
    for warning in report["warnings"]:
        github.warning(warning, title="mldeploy publish")
    print(f"{'up to date' if report['up_to_date'] else 'published'}: {report['uri']}  sha256 {report['sha256']}")
    github.set_output("model-uri", report["uri"])
    github.set_output("model-sha256", report["sha256"])
    if args.prune:
        from mldeploy.deploy import target_for

        doomed, kept = publish.prune(cfg, target_for(cfg, endpoint).status(), delete=args.yes)
        verb = "deleted" if args.yes else "would delete (pass --yes to delete)"
        print(f"kept {len(kept)} serving or published by this bundle, and the {cfg.storage.keep} newest; "
              f"{verb}: {', '.join(sha[:12] for sha in doomed) or 'nothing'}")
    return 0


def cmd_slots(args: argparse.Namespace) -> int:
    from mldeploy.deploy import NoCanary, pick_canary
    from mldeploy.trust import check_pull_request

    _, _, target = _target(args)
    before = target.status()
    if args.verb == "status":
        _print_status(before)
        return 0
    check_pull_request(args.verb)  # a pull request's run never promotes
    slots = before.slots
    production = slots["production"].image if "production" in slots else None
    try:
        canary = slots[pick_canary(target.endpoint, slots, args.pr, args.verb)].image
    except UsageError:  # none, or several: the command itself says so, in its target's words
        canary = None
    was = {"production": production} if production else {}
    try:
        _truth(target, lambda: getattr(target, args.verb)(args.pr),
               {"production": canary if args.verb == "promote" else production} if production else {}, was, args.verb)
    except NoCanary as e:
        if not getattr(args, "missing_ok", False):
            raise
        print(f"rollback: nothing to roll back ({e.message})")
        _truth(target, lambda: None, was, was)
    return 0


def _truth(target: Target, command: Callable[[], Status | None], expect: Mapping[str, str | None],
           expect_on_failure: Mapping[str, str | None], verb: str | None = None,
           record: Callable[[Status], None] | None = None) -> Status:
    """Run the command (deploy, promote, rollback, teardown), then read back every slot whatever it did:
    exit 1 naming the slot when it does not serve what it should, or is unhealthy. What is printed and
    put in the step summary is that read-back, never the intent."""
    from mldeploy.deploy import one_line, read_back_problems

    try:
        report, error = command(), None
    except Exception as e:  # (Ctrl-C: the target restored what it changed; no more cloud calls then)
        report, error = None, e
    try:
        status = target.status()
    except Exception:
        if error is not None:  # the cloud is failing: its first error says more than the read-back's
            raise error from None
        raise
    if record:
        record(status)
    if verb and error is None:
        print(f"{verb}: {'done' if report is not None and report.changed else 'nothing to do'}")
    _print_status(status)
    github.add_summary(_read_back_markdown(status))
    if problems := read_back_problems(status, expect if error is None else expect_on_failure):
        failed = f"{one_line(error)}; and now " if error else ""
        raise CheckFailed(failed + "; ".join(problems), hint="`mldeploy status` shows every slot") from None
    if error is not None:
        raise error
    return status


def _read_back_markdown(status: Status) -> str:
    rows = "\n".join(f"| {slot} | {s.traffic}% | {'healthy' if s.healthy else '**unhealthy**'}"
                     f"{f' ({s.readiness})' if s.readiness else ''} | `{s.image}`"
                     f"{f' model `{s.model}`' if s.model else ''} |" for slot, s in status.slots.items())
    return (f"### What serves now: `{status.endpoint}`\n\nRead back after the command.\n\n"
            f"| slot | traffic | health | image |\n|---|---|---|---|\n{rows}\n")


def cmd_destroy(args: argparse.Namespace) -> int:
    from mldeploy.deploy.base import Removable

    cfg, _, target = _target(args)
    if not isinstance(target, Removable):
        raise UsageError(f"destroy removes local endpoints only; {target.endpoint} is on {cfg.deploy.cloud}",
                         hint="remove a cloud endpoint in the cloud, where its owners can see it go")
    removed = target.destroy()["removed"]
    print(f"destroy: removed {', '.join(removed)}" if removed else f"destroy: {target.endpoint} had nothing to remove")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.trust or args.claims or args.identity:
        from mldeploy.doctor import run as trust_doctor

        return trust_doctor(args.trust, args.claims, args.identity)
    from mldeploy.config import load_config
    from mldeploy.deploy import doctor

    cfg = load_config(args.config, overrides={"deploy.cloud": args.cloud, "deploy.target": args.target,
                                              "deploy.region": args.region})
    rows = doctor(cfg.deploy)
    for check, passed, detail in rows:
        print(f"{'ok  ' if passed else 'FAIL'}  {check}: {detail}")
    return 0 if all(passed for _, passed, _ in rows) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from mldeploy.config import load_config
    from mldeploy.pipeline import run

    status, report = run(load_config(args.config), promote=args.promote)
    _print_status(status)
    github.set_output("image", report["image"])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.openapi:
        import json

        from mldeploy.serve.openapi import document

        print(json.dumps(document(), indent=2))
        return 0
    from mldeploy.serve.logs import log
    from mldeploy.serve.server import serve

    try:
        return serve(args.bundle, args.port, args.host, args.workers)
    except MldeployError as e:  # a container's stdout is JSON lines: say it as one
        log("error", e.describe(), fd=2)
        return e.exit_code


def cmd_config_validate(args: argparse.Namespace) -> int:
    from mldeploy.config import check_files, find_config_file, load_config, require_deploy_keys

    cfg = load_config(args.file or args.config)
    require_deploy_keys(cfg, args.file or args.config)
    files = check_files(cfg, args.file or args.config)
    if not args.quiet:
        where = find_config_file(args.file or args.config) or "defaults (no config file)"
        print(f"valid: {where}" + "".join(f"\n  found {f}" for f in files), file=sys.stderr)
        print(cfg.model_dump_json(indent=2))
    return 0


def cmd_config_get(args: argparse.Namespace) -> int:
    from mldeploy.config import load_config

    value = load_config(args.config).model_dump(mode="json", by_alias=True)
    for part in args.key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise UsageError(f"{args.key} is not a config key", hint="`mldeploy config schema` lists them")
        value = value[part]
    print("" if value is None else value if isinstance(value, str) else json.dumps(value))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.from_file:
        markdown = _read_report(args.from_file)
    elif not (args.stage and args.decision):
        raise UsageError("report needs --stage and --decision (or --from FILE)")
    else:
        markdown = _new_report(args)
    github.set_output("report", markdown)
    if not args.from_file:
        print(markdown)
        github.add_summary(markdown)
    if args.out:
        Path(args.out).write_text(markdown, encoding="utf-8")
    if args.comment:
        if not args.pr:
            raise UsageError("--comment needs the pull request's number", hint="pass --pr N or set MLDEPLOY_PR")
        if not markdown.startswith("<!-- mldeploy-report "):
            raise UsageError(f"{args.from_file} is not an mldeploy report", hint="make it with mldeploy report --out")
        print(f"commented: {github.upsert_comment(args.pr, markdown, marker=markdown.splitlines()[0])}")
    return 0


def _read_report(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the report {path}: {e.strerror}") from None


def _new_report(args: argparse.Namespace) -> str:
    from mldeploy.report import build_report

    try:  # the endpoint's name keys the comment (a plan names it too)
        cfg, _, endpoint = _where(args)
        bundle = cfg.bundle
    except MldeployError:  # no bundle to name it (a teardown job): then the plan or --endpoint must
        bundle, endpoint = args.bundle, args.endpoint
    server, repo, run = (os.environ.get(k, "") for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
    return build_report(stage=args.stage, decision=args.decision, bundle=bundle, plan=args.plan,
                        analysis=args.analysis, url=args.url, endpoint=endpoint,
                        run_url=f"{server}/{repo}/actions/runs/{run}" if server and repo and run else None)


def cmd_config_schema(args: argparse.Namespace) -> int:
    from mldeploy.config import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {args.out}: {e.strerror}") from None
    else:
        sys.stdout.write(text)
    return 0


def cmd_canary_analyze(args: argparse.Namespace) -> int:
    """Exit 1 on rollback, so a workflow step fails and its rollback step runs; hold is 0: not yet
    judged is no failure (the workflow reads the `decision` output to wait or promote)."""
    from mldeploy.deploy import NoCanary, target_for
    from mldeploy.monitor.canary import ROLLBACK, judge

    if args.window is not None and args.window < 0:
        raise UsageError(f"--window {args.window:g} is negative", hint="give seconds, or 0 (local: since start)")
    cfg, _, endpoint = _where(args)
    try:
        window = cfg.monitoring.canary.window_seconds if args.window is None else args.window
        analysis = judge(cfg, target_for(cfg, endpoint).slot_metrics(window, args.pr))
    except NoCanary as e:
        if not args.missing_ok:
            raise
        print(f"canary analyze: nothing to judge ({e.message})")
        github.set_output("decision", "none")
        return 0
    print(analysis.text())
    github.add_summary(analysis.markdown())
    github.set_output("decision", analysis.decision)
    github.set_output("reasons", "; ".join(analysis.reasons))
    if args.json:
        try:
            Path(args.json).write_text(analysis.to_json() + "\n", encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {args.json}: {e.strerror}") from None
    return 1 if analysis.decision == ROLLBACK and not args.no_fail else 0


def cmd_monitor_setup(args: argparse.Namespace) -> int:
    from mldeploy.deploy import target_for
    from mldeploy.monitor.setup import run

    cfg, _, endpoint = _where(args, {"monitoring.baseline": args.baseline})
    plan = run(target_for(cfg, endpoint).monitor_plan(cfg, args.config), plan_only=args.plan)
    if args.plan_out:
        Path(args.plan_out).write_text(plan.to_json() + "\n", encoding="utf-8")
    github.add_summary(plan.markdown())
    for name, value in plan.outputs.items():
        github.set_output(name, value)
    return 0


def cmd_monitor_baseline(args: argparse.Namespace) -> int:
    from mldeploy.config import load_config
    from mldeploy.monitor.baseline import create, table

    cfg = load_config(args.config, overrides={"bundle": args.bundle, "monitoring.drift.bins": args.bins})
    data = args.data or cfg.optimize.data
    if not data:
        raise UsageError("no reference data for the baseline", hint="pass --data FILE (.npz, .npy or .jsonl)")
    found, path, written = create(cfg.bundle, data, bins=cfg.monitoring.drift.bins, out=args.out, force=args.force)
    print(table(found))
    print(f"{found['records']} reference records; {'written' if written else 'up to date, left unchanged'}")
    github.set_output("baseline", str(path))
    return 0


def cmd_monitor_drift(args: argparse.Namespace) -> int:
    from mldeploy.config import load_config
    from mldeploy.errors import CheckFailed
    from mldeploy.monitor.drift import headline, markdown, run, text

    cfg = load_config(args.config, overrides={"bundle": args.bundle, "deploy.region": args.region,
                                              "monitoring.drift.fail_on_drift": args.fail_on_drift})
    report = run(cfg, baseline_path=args.baseline, capture=args.capture, max_records=args.max_records,
                 json_out=args.json)
    print(text(report))
    github.add_summary(markdown(report))
    github.set_output("drift", "true" if report["drift"] else "false")
    github.set_output("drift-status", report["status"])
    if report["drift"] and cfg.monitoring.drift.fail_on_drift:
        raise CheckFailed(headline(report).split(" (", 1)[0],
                          hint="investigate the drifted features; a new baseline after retraining resets it")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # argparse itself exits 2 on bad usage
    debug = getattr(args, "debug", False) or os.environ.get("MLDEPLOY_DEBUG", "").lower() in ("1", "true", "yes")
    if debug:
        os.environ["MLDEPLOY_DEBUG"] = "1"  # deeper modules show exporter logs too
    try:
        return args.func(args)
    except MldeployError as e:
        if debug:
            traceback.print_exc()
        for file, line, message in getattr(e, "problems", [(e.file, e.line, None)]):
            text = e.describe() if message is None else message
            github.error(text, file=file, line=line, title=f"mldeploy {args.command}")
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mldeploy ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # anything else is a bug in mldeploy, not the user's doing
        if debug:
            traceback.print_exc()
        github.error(f"internal error: {type(e).__name__}: {e} (a bug in mldeploy {__version__}; "
                     f"rerun with --debug for the traceback and report it)", title=f"mldeploy {args.command}")
        return EXIT_BUG


if __name__ == "__main__":
    raise SystemExit(main())
