#!/usr/bin/env bash
# The main job on the embedded default (cloud: local), on a fresh machine: set up what is missing
# (the Python environment; as root, a Docker engine, a local registry and a slim base image), then
# run the whole pipeline on the example model repo: convert -> optimize -> build -> push -> deploy
# -> smoke, and show a canary taking its share of traffic and being promoted.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
scripts/setup-venv.sh torch,serve,image
eval "$(scripts/docker-up.sh)"
mldeploy=$PWD/.venv/bin/mldeploy
cd examples/model-repo
"$mldeploy" run --promote
# A fresh machine has no earlier model, so the first run went straight to production. Show the
# canary path with a second image of the same model (access logs on: a setting a pull request might
# change), since a canary of production's own image compares nothing and changes nothing.
echo "--- canary: a second image (MLDEPLOY_ACCESS_LOG on) taking $("$mldeploy" config get deploy.canary_traffic)% of traffic, then promoted"
MLDEPLOY_IMAGE__ENVIRONMENT='{"MLDEPLOY_ACCESS_LOG": "true"}' "$mldeploy" build --push >/dev/null
"$mldeploy" deploy --stage canary
url=$("$mldeploy" status | sed -n 's/^endpoint: .*url: //p')
python3 - "$url" <<'PY'
import collections, json, sys, urllib.request
url, counts = sys.argv[1], collections.Counter()
body = json.dumps({"inputs": {"features": [[0.0] * 16]}}).encode()
for _ in range(500):
    req = urllib.request.Request(url + "/predict", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        counts[r.headers["x-mldeploy-slot"]] += 1
print("500 requests:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
PY
"$mldeploy" promote
echo "done in $((SECONDS - started)) s; the endpoint answers at $url (try: curl $url/predict -d '{\"inputs\": [[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}')"
