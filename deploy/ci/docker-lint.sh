#!/usr/bin/env bash
# make docker-lint: offline checks of the deployment files (no engine needed).
#   hadolint Dockerfile; docker compose config for every profile and the GPU override, and
#   the keys file's wiring (optional for the api, required by the gallery profile);
#   promtool check config; nginx -t; the Grafana dashboard and provisioning parse.
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

fail() { echo "docker-lint: $*" >&2; exit 1; }
# No .env and no FACEVERIFY_API_KEYS_FILE from the caller: the checks below set it themselves.
unset FACEVERIFY_API_KEYS_FILE
COMPOSE+=(--env-file /dev/null)
KEYS=$(mktemp)
trap 'rm -f "$KEYS"' EXIT
echo '[]' >"$KEYS"
with_keys() { FACEVERIFY_API_KEYS_FILE=$KEYS "${COMPOSE[@]}" "$@"; }

echo "docker compose config (default, scale, monitoring, gallery, gpu)"
"${COMPOSE[@]}" -f docker-compose.yml config --quiet
"${COMPOSE[@]}" -f docker-compose.yml --profile scale --profile monitoring config --quiet
with_keys -f docker-compose.yml --profile gallery config --quiet
"${COMPOSE[@]}" -f docker-compose.yml -f docker-compose.gpu.yml config --quiet
with_keys -f docker-compose.yml -f docker-compose.gpu.yml --profile gallery config --quiet
services=$(with_keys -f docker-compose.yml --profile scale --profile monitoring --profile gallery config --services | sort | tr '\n' ' ')
[[ $services == "api gallery-api gallery-lb grafana lb postgres prometheus " ]] \
  || fail "unexpected services: $services"
# The gallery replicas take PostgreSQL's URL; the default api keeps SQLite on its volume.
with_keys -f docker-compose.yml --profile gallery config | grep -q 'FACEVERIFY_GALLERY_URL: postgresql://faceverify:' \
  || fail "the gallery profile's replicas do not use PostgreSQL"
# The GPU override reserves a device for the api and for the gallery-api replicas.
gpu=$(with_keys -f docker-compose.yml -f docker-compose.gpu.yml --profile gallery config --format json \
  | python3 -c '
import json, sys
services = json.load(sys.stdin)["services"]
print(" ".join(sorted(n for n, s in services.items() if any(
    d.get("driver") == "nvidia" for d in ((s.get("deploy") or {}).get("resources") or {})
    .get("reservations", {}).get("devices", [])))))')
[[ $gpu == "api gallery-api" ]] || fail "the GPU override reserves NVIDIA devices for '$gpu', not 'api gallery-api'"

echo "docker compose: the keys file (optional for the api, required by the gallery profile)"
# Without FACEVERIFY_API_KEYS_FILE the api gets no FACEVERIFY_API_KEYS_FILE at all ...
! "${COMPOSE[@]}" -f docker-compose.yml config api | grep -q FACEVERIFY_API_KEYS_FILE \
  || fail "the api gets FACEVERIFY_API_KEYS_FILE without a keys file"
# ... and the gallery profile is refused, with a message that names the variable; naming a
# gallery service (which activates its profile) too.
if out=$("${COMPOSE[@]}" -f docker-compose.yml --profile gallery config --quiet 2>&1); then
  fail "the gallery profile is accepted without FACEVERIFY_API_KEYS_FILE"
fi
grep -q 'the-gallery-profile-needs-FACEVERIFY_API_KEYS_FILE not found' <<<"$out" \
  || fail "unexpected refusal: $out"
! "${COMPOSE[@]}" -f docker-compose.yml config --quiet gallery-lb 2>/dev/null \
  || fail "gallery-lb is accepted without FACEVERIFY_API_KEYS_FILE"
# With it, both read the file, mounted read-only where their FACEVERIFY_API_KEYS_FILE points.
with_keys -f docker-compose.yml --profile gallery config --format json \
  | python3 -c '
import json, sys
c = json.load(sys.stdin)
for name in ("api", "gallery-api"):
    s = c["services"][name]
    path = s["environment"].get("FACEVERIFY_API_KEYS_FILE")
    (mount,) = s["configs"]
    assert mount["target"] == path, (name, path, mount)
    assert c["configs"][mount["source"]]["file"] == sys.argv[1], (name, c["configs"])
    print(f"  {name}: FACEVERIFY_API_KEYS_FILE={path}, mounted from the keys file")
' "$KEYS" || fail "keys file wiring (above)"

echo "promtool check config"
"$TOOLS/prometheus/usr/bin/promtool" check config deploy/prometheus/prometheus.yml

echo "nginx -t deploy/nginx/faceverify.conf"
# In an http block, as the image's nginx.conf includes it; `api` resolved to a local address
# (nginx resolves upstream names when it loads the configuration), logs in the temporary dir.
NGX=$(mktemp -d)
trap 'rm -f "$KEYS"; rm -rf "$NGX"' EXIT
sed -e 's/server api:8000/server 127.0.0.1:8000/' -e "s|/var/log/nginx/|$NGX/|" \
  deploy/nginx/faceverify.conf >"$NGX/faceverify.conf"
{
  echo "pid $NGX/nginx.pid;"
  echo "error_log stderr;"
  echo "events {}"
  echo "http {"
  for d in client_body proxy fastcgi uwsgi scgi; do echo "    ${d}_temp_path $NGX/$d;"; done
  echo "    include faceverify.conf;"
  echo "}"
} >"$NGX/nginx.conf"
"$TOOLS/nginx/usr/sbin/nginx" -t -q -p "$NGX" -c "$NGX/nginx.conf" -e stderr

echo "grafana provisioning and dashboard parse"
python3 - <<'PY'
import json, pathlib
for p in pathlib.Path("deploy/grafana").rglob("*.json"):
    d = json.loads(p.read_text())
    assert d.get("panels"), f"{p}: no panels"
    print(f"  {p}: {len(d['panels'])} panels")
PY
echo "docker-lint: OK"
