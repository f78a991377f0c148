"""Where canary analysis gets its numbers: per target, requests, 5xx errors and latency p50/p99 of
the production and canary slots over the same window (and, where requests are captured, the
predictions each slot made).

  local      the router's per-slot /metrics (Prometheus text of the serving runtime), scraped at
             the start and at the end of the window and differenced; p50/p99 from the histogram;
             predictions from each slot container's capture files when it captures
  sagemaker  CloudWatch AWS/SageMaker Invocations, Invocation5XXErrors, ModelLatency p50/p99 per
             EndpointName + VariantName; predictions from each variant's data capture in S3 when
             the endpoint captures (deploy.aws.sagemaker.data_capture_percent)
  lambda     CloudWatch AWS/Lambda Invocations, Errors, Duration p50/p99 per version behind the
             alias: FunctionName + Resource <function>:live + ExecutedVersion
  vertex     Cloud Monitoring prediction/online/response_count (by response_code) and
             prediction_latencies (total; p50/p99 from the summed distribution) per deployed_model_id
             of the endpoint
  cloudrun   Cloud Monitoring run.googleapis.com/request_count (by response_code_class) and
             request_latencies per revision_name of the service
  azureml    Azure Monitor RequestsPerMinute (by statusCode and modelStatusCode) and
             RequestLatency_P50/P99 of the online endpoint per deployment, minute by minute
  others     none yet: the analysis answers hold and says so
No cloud SDK is imported here: each cloud's calls live in its deploy module.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from mldeploy.errors import UsageError
from mldeploy.monitor.canary import SlotStats, histogram_quantile, prediction_values

DURATION = "mldeploy_request_duration_seconds"
REQUESTS = "mldeploy_requests_total"
# Routes that are not predictions: probes, metadata, the scrape itself, and paths nobody serves.
NOT_PREDICTIONS = {"/", "/ping", "/health", "/v2", "/v2/health/live", "/v2/health/ready", "/metrics",
                   "/openapi.json", "unknown"}
SAMPLE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
POLL_SECONDS = 1.0


@dataclass
class Collected:
    production: SlotStats
    canary: SlotStats
    window_seconds: float
    source: str
    unavailable: str | None = None     # why there are no numbers at all
    notes: list[str] = field(default_factory=list)


def collect(deploy, endpoint: str, window: float, pr: int | None = None,
            sleep: Callable[[float], None] = time.sleep) -> Collected:
    """Both slots' statistics over the last `window` seconds (local: the next `window` seconds, or
    since the containers started when window is 0)."""
    if deploy.cloud == "local":
        return local(endpoint, deploy.port, window, sleep)
    if (deploy.cloud, deploy.target) == ("aws", "sagemaker"):
        return sagemaker(deploy, endpoint, window, pr)
    if (deploy.cloud, deploy.target) == ("aws", "lambda"):
        return lambda_(deploy, endpoint, window, pr)
    if (deploy.cloud, deploy.target) == ("gcp", "vertex"):
        return vertex(deploy, endpoint, window, pr)
    if (deploy.cloud, deploy.target) == ("gcp", "cloudrun"):
        return cloudrun(deploy, endpoint, window, pr)
    if (deploy.cloud, deploy.target) == ("azure", "azureml"):
        return azureml(deploy, endpoint, window, pr)
    where = f"{deploy.cloud} {deploy.target}"
    return Collected(SlotStats("production"), SlotStats("canary"), window, where,
                     unavailable=f"no metrics source for {where} yet: judge the canary in the cloud's console")


# -- local: the router's per-slot Prometheus metrics ----------------------------------------------
def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(name, sorted label pairs): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m:
            name, labels, value = m.groups()
            pairs = tuple(sorted((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                                 for k, v in LABEL.findall(labels or "")))
            samples[(name, pairs)] = float(value)
    return samples


def _is_prediction(route: str) -> bool:
    return route not in NOT_PREDICTIONS and not (route.startswith("/v2/models/") and not route.endswith("/infer"))


def runtime_counts(samples: dict) -> tuple[float, float, dict[float, float]]:
    """(prediction requests, 5xx answers, duration buckets upper bound -> cumulative count), summed
    over every prediction route of one serving runtime's /metrics."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for (name, labels), value in samples.items():
        tags = dict(labels)
        if not _is_prediction(tags.get("route", "")):
            continue
        if name == REQUESTS:
            requests += value
            errors += value if tags.get("code", "").startswith("5") else 0
        elif name == DURATION + "_bucket":
            le = float(tags["le"])  # float("+Inf") is inf
            buckets[le] = buckets.get(le, 0.0) + value
    return requests, errors, buckets


def window_stats(slot: str, before: dict | None, after: dict) -> SlotStats:
    """A slot's statistics between two scrapes (before None: since the runtime started). A counter
    that went down means the container restarted: its value after is all of the window we know."""
    r1, e1, b1 = runtime_counts(after)
    r0, e0, b0 = runtime_counts(before) if before is not None else (0.0, 0.0, {})
    if r1 < r0:
        r0 = e0 = 0.0
        b0 = {}
    buckets = [(le, count - b0.get(le, 0.0)) for le, count in b1.items()]
    stats = SlotStats(slot, int(r1 - r0), int(e1 - e0))
    for q in (0.5, 0.99):
        seconds = histogram_quantile(q, buckets)
        setattr(stats, f"p{int(q * 100)}_ms", None if seconds is None else seconds * 1000)
    return stats


def scrape(port: int, slot: str) -> dict | None:
    """One slot's /metrics through the local router; None when the router has no such slot."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"x-mldeploy-slot": slot})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return parse_prometheus(r.read().decode())
    except urllib.error.HTTPError as e:
        if e.code in (502, 503):
            return None
        raise UsageError(f"the local endpoint's {slot} slot answered {e.code} to /metrics") from None
    except OSError as e:
        raise UsageError(f"nothing answers on 127.0.0.1:{port} ({getattr(e, 'reason', e)})",
                         hint="deploy first (`mldeploy deploy --cloud local`), or set deploy.port / --port") from None


def local(endpoint: str, port: int, window: float, sleep: Callable[[float], None] = time.sleep) -> Collected:
    slots = ("production", "canary")
    before = {s: scrape(port, s) for s in slots} if window > 0 else {s: None for s in slots}
    started = time.time() if window > 0 else 0.0
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:  # short steps: Ctrl-C and a timeout act at once
        sleep(min(POLL_SECONDS, left))
    after = {s: scrape(port, s) for s in slots}
    if after["production"] is None:
        raise UsageError(f"the local endpoint on port {port} has no production slot", hint="deploy one first")
    if after["canary"] is None:
        from mldeploy.deploy import NoCanary

        raise NoCanary(f"the local endpoint on port {port} has no canary to analyze",
                       hint="deploy one with --stage canary")
    stats = {s: window_stats(s, before[s], after[s]) for s in slots}
    found = Collected(stats["production"], stats["canary"], window, f"local router 127.0.0.1:{port}")
    for slot, predictions in local_predictions(endpoint, port, started).items():
        if isinstance(predictions, str):
            stats[slot].notes.append(predictions)
        else:
            stats[slot].predictions = predictions
    return found


def local_predictions(endpoint: str, port: int, since: float) -> dict[str, list | str]:
    """Per slot, the predictions its container captured since `since` (a Unix time), or why none."""
    import datetime as dt

    from mldeploy.deploy.local import LocalTarget

    try:
        target = LocalTarget(endpoint, port)
        routes = target.routes()
    except UsageError as e:
        return {"production": f"predictions not read: {e.message}"}
    out: dict[str, list | str] = {}
    for slot in ("production", "canary"):
        try:
            container = target.client.containers.get(routes[slot]["container"]) if slot in routes else None
        except Exception:  # docker's NotFound: replaced between the two reads
            container = None
        env = dict(e.split("=", 1) for e in (container.attrs["Config"].get("Env") or [])) if container else {}
        folder = env.get("MLDEPLOY_CAPTURE_DIR")
        if not folder:
            out[slot] = f"{slot} does not capture requests (MLDEPLOY_CAPTURE_DIR is not set in its container)"
            continue
        try:
            stream, _ = container.get_archive(folder)
        except Exception:  # docker's NotFound: nothing captured yet
            out[slot] = []
            continue
        records = []
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith(".jsonl"):
                    for line in tar.extractfile(member).read().splitlines():
                        try:
                            record = json.loads(line)
                        except ValueError:
                            continue  # a line being written
                        if dt.datetime.fromisoformat(record["time"]).timestamp() >= since:
                            records.append(record)
        out[slot] = prediction_values(records)
    return out


# -- AWS: CloudWatch ------------------------------------------------------------------------------
def _cloudwatch(region: str | None, namespace: str, dims: dict[str, dict[str, str]], metrics: tuple[str, str, str],
                latency_to_ms: float, window: float) -> dict[str, SlotStats]:
    """Per slot: requests (Sum), errors (Sum) and latency p50/p99 of one namespace's metrics."""
    from mldeploy.deploy.aws import metric_window

    invocations, errors, latency = metrics
    queries = {}
    for i, (slot, d) in enumerate(dims.items()):
        queries[f"s{i}_requests"] = (namespace, invocations, d, "Sum")
        queries[f"s{i}_errors"] = (namespace, errors, d, "Sum")
        queries[f"s{i}_p50"] = (namespace, latency, d, "p50")
        queries[f"s{i}_p99"] = (namespace, latency, d, "p99")
    values = metric_window(region, queries, window)
    out = {}
    for i, slot in enumerate(dims):
        stats = out[slot] = SlotStats(slot, int(sum(values[f"s{i}_requests"])), int(sum(values[f"s{i}_errors"])))
        for q in ("p50", "p99"):  # one period normally; over several, the worst one counts
            found = values[f"s{i}_{q}"]
            setattr(stats, f"{q}_ms", max(found) * latency_to_ms if found else None)
    return out


def sagemaker(deploy, endpoint: str, window: float, pr: int | None) -> Collected:
    from mldeploy.deploy import pick_canary
    from mldeploy.deploy.sagemaker import SageMakerTarget

    target = SageMakerTarget(endpoint, deploy)
    current = target.read()
    canary = pick_canary(target.endpoint, (current or {}).get("slots", {}), pr, "analyze")
    dims = {slot: {"EndpointName": target.endpoint, "VariantName": slot} for slot in ("production", canary)}
    stats = _cloudwatch(target.region, "AWS/SageMaker", dims, ("Invocations", "Invocation5XXErrors", "ModelLatency"),
                        1e-3, window)  # ModelLatency is in microseconds
    found = Collected(stats["production"], stats[canary], window, f"CloudWatch AWS/SageMaker {target.endpoint}")
    capture = deploy.aws.sagemaker
    if not (capture.data_capture_percent and capture.data_capture_s3):
        found.notes.append("prediction divergence not measured: the endpoint does not capture requests "
                           "(deploy.aws.sagemaker.data_capture_percent and data_capture_s3)")
        return found
    since = time.time() - window
    for slot in ("production", canary):  # SageMaker writes DestinationS3Uri/ENDPOINT/VARIANT/yyyy/mm/dd/hh/
        stats[slot].predictions = sagemaker_predictions(
            f"{capture.data_capture_s3.rstrip('/')}/{target.endpoint}/{slot}/", since, target.region)
    return found


def sagemaker_predictions(source: str, since: float, region: str | None) -> list:
    """The predictions in one variant's data capture (s3://.../ENDPOINT/VARIANT/) since `since` (Unix
    time), read from the responses as the server wrote them; files last written before `since` are
    not read. Capture reaches S3 a few minutes late, so the newest requests may be missing."""
    import datetime as dt

    from mldeploy.monitor.captured import Mismatch, objects

    records = []
    for _, modified, data in objects(source, region):
        if modified < since:
            break  # newest first: every file after this one is older still
        for line in data.splitlines():
            try:
                doc = json.loads(line)
                when = dt.datetime.fromisoformat(doc["eventMetadata"]["inferenceTime"]).timestamp()
                if when >= since:
                    records.append({"outputs": _response_outputs(doc["captureData"]["endpointOutput"])})
            except (ValueError, KeyError, TypeError, Mismatch):
                continue  # not a record with a readable JSON answer (drift reports those; here they just don't count)
    return prediction_values(records)


def _response_outputs(part: dict) -> dict:
    """{output: rows} from a captured answer of the serving runtime ({"predictions"}, {"outputs"}
    columnar or Open Inference Protocol v2)."""
    from mldeploy.monitor.captured import body_of

    body = json.loads(body_of(part)[0])
    value = body.get("predictions", body.get("outputs")) if isinstance(body, dict) else body
    if isinstance(value, list) and value and all(isinstance(t, dict) and "datatype" in t for t in value):  # v2
        return {t["name"]: _reshaped(t["data"], t["shape"]) for t in value}
    return value if isinstance(value, dict) else {"predictions": value}


def _reshaped(flat: list, shape: list[int]) -> list:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshaped(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def lambda_(deploy, endpoint: str, window: float, pr: int | None) -> Collected:
    from mldeploy.deploy import pick_canary
    from mldeploy.deploy.lambda_ import ALIAS, LambdaTarget

    target = LambdaTarget(endpoint, deploy)
    current = target.read()
    slots = (current or {}).get("slots", {})
    canary = pick_canary(target.function, slots, pr, "analyze")
    # each version behind the alias on its own, so production's figures leave the canary's requests out
    dims = {slot: {"FunctionName": target.function, "Resource": f"{target.function}:{ALIAS}",
                   "ExecutedVersion": slots[slot]["version"]} for slot in ("production", canary)}
    stats = _cloudwatch(target.region, "AWS/Lambda", dims, ("Invocations", "Errors", "Duration"), 1.0, window)
    return Collected(stats["production"], stats[canary], window, f"CloudWatch AWS/Lambda {target.function}:{ALIAS}",
                     notes=["Lambda counts function errors (crashes, timeouts) as errors, not 5xx answers",
                            "prediction divergence not measured: Lambda does not capture requests"])


def _compared(name: str, slots: dict, pr: int | None) -> str:
    """The canary to analyze; production must be there to compare it with."""
    from mldeploy.deploy import pick_canary

    canary = pick_canary(name, slots, pr, "analyze")
    if "production" not in slots:
        raise UsageError(f"{name} has {canary} but no production slot to compare it with",
                         hint="deploy production first (`mldeploy deploy --stage production`)")
    return canary


# -- GCP: Cloud Monitoring ------------------------------------------------------------------------
def _cloud_monitoring(project_id: str, resource: str, slot_label: str, slots: dict[str, str],
                      requests: tuple[str, str], latency: tuple[str, str], window: float) -> dict[str, SlotStats]:
    """Per slot (the value of `slot_label`, e.g. resource.labels.revision_name): requests and 5xx answers
    of the metric `requests` (name, label holding the response code or its class) and p50/p99 of the
    latency distribution `latency` (name, extra filter), in ms, over the window."""
    from mldeploy.deploy.gcp import time_series

    def field(label: str) -> str:  # resource.labels.x (filters) -> resource.label.x (groupByFields)
        return label.replace(".labels.", ".label.")

    def slot_of(series: dict) -> str | None:
        kind, name = slot_label.split(".labels.")
        return by_value.get(series[kind].get(name))

    by_value = {value: slot for slot, value in slots.items()}
    quoted = ", ".join(f'"{v}"' for v in slots.values())
    which = f"{resource} AND {slot_label} = one_of({quoted})"
    stats = {slot: SlotStats(slot) for slot in slots}
    metric, code_label = requests
    code_kind, code_name = code_label.split(".labels.")
    for series in time_series(project_id, f'metric.type = "{metric}" AND {which}', window,
                              [field(slot_label), field(code_label)], f"read {metric}"):
        slot, count = slot_of(series), int(sum(series["values"]))
        if slot:
            stats[slot].requests += count
            stats[slot].errors += count if series[code_kind].get(code_name, "").startswith("5") else 0
    metric, extra = latency
    buckets: dict[str, dict[float, int]] = {slot: {} for slot in slots}
    for series in time_series(project_id, f'metric.type = "{metric}" AND {which}{extra}', window,
                              [field(slot_label)], f"read {metric}"):
        slot = slot_of(series)
        for distribution in series["values"] if slot else ():
            for upper, count in distribution:
                buckets[slot][upper] = buckets[slot].get(upper, 0) + count
    for slot, counts in buckets.items():
        cumulative, total = [], 0
        for upper in sorted(counts):
            total += counts[upper]
            cumulative.append((upper, total))
        stats[slot].p50_ms = histogram_quantile(0.5, cumulative)
        stats[slot].p99_ms = histogram_quantile(0.99, cumulative)
    return stats


# Cloud Monitoring: the GCP targets' series, and how one endpoint's are selected (alerts use them too)
VERTEX_RESPONSES = "aiplatform.googleapis.com/prediction/online/response_count"
VERTEX_LATENCIES = "aiplatform.googleapis.com/prediction/online/prediction_latencies"
VERTEX_TOTAL = ' AND metric.labels.latency_type = "total"'   # the whole request, not the model alone
CLOUDRUN_REQUESTS = "run.googleapis.com/request_count"
CLOUDRUN_LATENCIES = "run.googleapis.com/request_latencies"


def vertex_resource(region: str, endpoint_id: str) -> str:
    return (f'resource.type = "aiplatform.googleapis.com/Endpoint" AND resource.labels.location = '
            f'"{region}" AND resource.labels.endpoint_id = "{endpoint_id}"')


def cloudrun_resource(location: str, service: str) -> str:
    return (f'resource.type = "cloud_run_revision" AND resource.labels.location = "{location}" '
            f'AND resource.labels.service_name = "{service}"')


def vertex(deploy, endpoint: str, window: float, pr: int | None) -> Collected:
    from mldeploy.deploy.vertex import VertexTarget

    target = VertexTarget(endpoint, deploy)
    current = target.read() or {"slots": {}}
    slots = current["slots"]
    canary = _compared(target.endpoint, slots, pr)
    endpoint_id = current["name"].rsplit("/", 1)[-1]
    stats = _cloud_monitoring(
        target.project, vertex_resource(target.region, endpoint_id), "metric.labels.deployed_model_id",
        {slot: slots[slot]["id"] for slot in ("production", canary)},
        (VERTEX_RESPONSES, "metric.labels.response_code"), (VERTEX_LATENCIES, VERTEX_TOTAL), window)
    return Collected(stats["production"], stats[canary], window,
                     f"Cloud Monitoring Vertex AI endpoint {target.endpoint} ({endpoint_id})",
                     notes=["prediction divergence not measured: Vertex AI request-response logging is not read yet"])


def cloudrun(deploy, endpoint: str, window: float, pr: int | None) -> Collected:
    from mldeploy.deploy.cloudrun import CloudRunTarget

    target = CloudRunTarget(endpoint, deploy)
    slots = (target.read() or {"slots": {}})["slots"]
    canary = _compared(target.service, slots, pr)
    stats = _cloud_monitoring(
        target.project, cloudrun_resource(target.location, target.service), "resource.labels.revision_name",
        {slot: slots[slot]["revision"] for slot in ("production", canary)},
        (CLOUDRUN_REQUESTS, "metric.labels.response_code_class"), (CLOUDRUN_LATENCIES, ""), window)
    return Collected(stats["production"], stats[canary], window, f"Cloud Monitoring Cloud Run {target.service}",
                     notes=["Cloud Run counts every request to a revision, probes and smoke requests included",
                            "prediction divergence not measured: Cloud Run does not capture requests"])


# -- Azure: Azure Monitor -------------------------------------------------------------------------
def azureml(deploy, endpoint: str, window: float, pr: int | None) -> Collected:
    """Requests and errors from RequestsPerMinute split by deployment, statusCode and modelStatusCode:
    an error is a 5xx answer, or a model's 5xx that Azure ML passed on as 424. Latency p50/p99 are
    the minutes' RequestLatency_P50/P99 weighted by that minute's requests (Azure Monitor keeps
    percentiles per minute only)."""
    from mldeploy.deploy.azure import metric_series, workspace
    from mldeploy.deploy.azureml import AzureMLTarget
    from mldeploy.monitor.azure_alerts import ENDPOINT_METRICS

    target = AzureMLTarget(endpoint, deploy)
    current = target.read() or {"slots": {}}
    slots = current["slots"]
    canary = _compared(target.endpoint, slots, pr)
    names = {slots[slot]["deployment"]: slot for slot in ("production", canary)}
    which = " or ".join(f"deployment eq '{name}'" for name in names)
    subscription = workspace(deploy)[0]
    resource_id = current["entity"].id
    stats = {slot: SlotStats(slot) for slot in names.values()}
    per_minute: dict[str, dict] = {slot: {} for slot in names.values()}
    for series in metric_series(subscription, resource_id, ENDPOINT_METRICS, ["RequestsPerMinute"], "Total",
                                f"{which} and statusCode eq '*' and modelStatusCode eq '*'", window,
                                f"read the Azure Monitor metrics of {target.endpoint}"):
        slot = names.get(series["dimensions"].get("deployment"))
        if not slot:
            continue
        dims = series["dimensions"]
        failed = str(dims.get("statuscode", "")).startswith("5") or str(dims.get("modelstatuscode", "")).startswith("5")
        for minute, count in series["values"]:
            per_minute[slot][minute] = per_minute[slot].get(minute, 0) + count
            stats[slot].requests += int(count)
            stats[slot].errors += int(count) if failed else 0
    for series in metric_series(subscription, resource_id, ENDPOINT_METRICS, ["RequestLatency_P50", "RequestLatency_P99"],
                                "Average", which, window, f"read the Azure Monitor latency of {target.endpoint}"):
        slot = names.get(series["dimensions"].get("deployment"))
        if slot and series["values"]:
            weights = [per_minute[slot].get(minute, 0) for minute, _ in series["values"]]
            if not sum(weights):  # latency without counted requests: every minute alike
                weights = [1] * len(weights)
            value = sum(w * v for w, (_, v) in zip(weights, series["values"])) / sum(weights)
            setattr(stats[slot], "p50_ms" if series["metric"].endswith("P50") else "p99_ms", value)
    return Collected(stats["production"], stats[canary], window,
                     f"Azure Monitor online endpoint {target.endpoint}",
                     notes=["prediction divergence not measured: Azure ML data collection is not read yet"])
