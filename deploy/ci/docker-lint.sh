#!/usr/bin/env bash
# make docker-lint: offline checks of the deployment files (no engine needed).
#   hadolint Dockerfile; docker compose config for every profile and the GPU override;
#   promtool check config; the Grafana dashboard and provisioning parse.
# (tests/test_deploy.py also checks, in `make test`, that every metric the dashboard and the
# configs name is one the service exports.)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOLS=${FV_TOOLS:-/var/tmp/faceverify-docker/tools}
bash "$ROOT/deploy/ci/docker-tools.sh" "$TOOLS" >/dev/null
cd "$ROOT"
COMPOSE=("$TOOLS/venv/bin/docker-compose")

echo "hadolint Dockerfile"
"$TOOLS/venv/bin/hadolint" --failure-threshold info Dockerfile

echo "docker compose config (default, scale, monitoring, gallery, gpu)"
"${COMPOSE[@]}" -f docker-compose.yml config --quiet
"${COMPOSE[@]}" -f docker-compose.yml --profile scale --profile monitoring config --quiet
"${COMPOSE[@]}" -f docker-compose.yml --profile gallery config --quiet
"${COMPOSE[@]}" -f docker-compose.yml -f docker-compose.gpu.yml config --quiet
"${COMPOSE[@]}" -f docker-compose.yml -f docker-compose.gpu.yml --profile gallery config --quiet
services=$("${COMPOSE[@]}" -f docker-compose.yml --profile scale --profile monitoring --profile gallery config --services | sort | tr '\n' ' ')
[[ $services == "api gallery-api gallery-lb grafana lb postgres prometheus " ]] \
  || { echo "unexpected services: $services" >&2; exit 1; }
# The gallery replicas take PostgreSQL's URL; the default api keeps SQLite on its volume.
"${COMPOSE[@]}" -f docker-compose.yml --profile gallery config | grep -q 'FACEVERIFY_GALLERY_URL: postgresql://faceverify:' \
  || { echo "the gallery profile's replicas do not use PostgreSQL" >&2; exit 1; }
"${COMPOSE[@]}" -f docker-compose.yml -f docker-compose.gpu.yml config | grep -q 'driver: nvidia' \
  || { echo "the GPU override reserves no NVIDIA device" >&2; exit 1; }

echo "promtool check config"
"$TOOLS/prometheus/usr/bin/promtool" check config deploy/prometheus/prometheus.yml

echo "grafana provisioning and dashboard parse"
python3 - <<'PY'
import json, pathlib
for p in pathlib.Path("deploy/grafana").rglob("*.json"):
    d = json.loads(p.read_text())
    assert d.get("panels"), f"{p}: no panels"
    print(f"  {p}: {len(d['panels'])} panels")
PY
echo "docker-lint: OK"
