"""Deployment files (Dockerfile, compose, nginx, Prometheus, Grafana): offline consistency checks.

The image and the stack themselves are proven on a real engine by `make docker-smoke`;
`make docker-lint` runs hadolint, `docker compose config` and `promtool check config`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from app.metrics import Metrics
from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "faceverify.json"
METRIC = re.compile(r"\bfaceverify_[a-z0-9_]+")


def exported_series() -> set[str]:
    """Every series name the service's /metrics can show (histograms: _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in Metrics(max_batch_size=32).registry.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "gauge": [""], "summary": ["_sum", "_count", ""]}.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
    return names


def dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in d.get("templating", {}).get("list", [])
              if v.get("definition")]
    return exprs


def test_dashboard_names_only_exported_metrics():
    exported = exported_series()
    named = {m for e in dashboard_exprs() for m in METRIC.findall(e)}
    assert named, "the dashboard queries no faceverify metric"
    assert named <= exported, f"not exported by app/metrics.py: {sorted(named - exported)}"


def test_dashboard_has_the_documented_panels():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "faceverify"
    text = " ".join(dashboard_exprs())
    for needed in ("faceverify_requests_total",                    # throughput, errors by code
                   "histogram_quantile(0.5, sum by (le, route) (rate(faceverify_request_duration",
                   "histogram_quantile(0.99, sum by (le, route) (rate(faceverify_request_duration",
                   "faceverify_batch_size_bucket", "faceverify_queue_depth",
                   'status=~"4..|5.."'):
        assert needed in text, needed
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "prometheus"


def test_grafana_datasource_matches_the_dashboard():
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")
                        .read_text())["datasources"]
    assert [d["uid"] for d in ds] == ["prometheus"]
    assert ds[0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/faceverify.yml")
                          .read_text())["providers"][0]
    assert prov["options"]["path"] == "/var/lib/grafana/dashboards"


def test_prometheus_scrapes_every_api_replica():
    cfg = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    # DNS service discovery of the compose service names: one target per replica, the api
    # replicas and the gallery profile's replicas each in a job of their own.
    for name, service in (("faceverify-api", "api"), ("faceverify-gallery-api", "gallery-api")):
        job = jobs[name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        sd = job["dns_sd_configs"][0]
        assert sd["names"] == [service] and sd["type"] == "A" and sd["port"] == 8000


def test_prometheus_networks_name_each_replica_once():
    """On the `gallery` network the gallery replicas also answer to `api` (for nginx): were
    Prometheus there, the api job could find them too. It reaches them on `metrics` instead,
    where `api` names nothing, and the api replicas on `default`, where no gallery replica is."""
    c = compose()
    services = c["services"]
    prom, gapi, api = services["prometheus"], services["gallery-api"], services["api"]
    assert sorted(prom["networks"]) == ["default", "metrics"]
    assert "metrics" in c["networks"]
    on = {name: networks_of(svc) for name, svc in services.items()}
    assert set(on["gallery-api"]) & set(prom["networks"]) == {"metrics"}
    assert set(on["api"]) & set(prom["networks"]) == {"default"}
    # who answers to `api` on each network Prometheus is on: only the api service
    for net in prom["networks"]:
        named_api = {n for n in services if net in on[n]
                     and (n == "api" or "api" in on[n][net].get("aliases", []))}
        assert named_api <= {"api"}, (net, named_api)
    assert not on["gallery-api"]["metrics"].get("aliases")
    assert not set(on["postgres"]) & set(prom["networks"]), "Prometheus has no route to it"


def networks_of(service: dict) -> dict[str, dict]:
    """A compose service's networks as {name: settings} (list or map syntax; default)."""
    nets = service.get("networks") or ["default"]
    if isinstance(nets, list):
        return {n: {} for n in nets}
    return {n: v or {} for n, v in nets.items()}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_api_service():
    api = compose()["services"]["api"]
    assert api["build"]["target"] == "runtime"
    assert api["build"]["args"]["FACEVERIFY_EXTRAS"] == "${FACEVERIFY_EXTRAS-}"  # the CPU image
    assert api["restart"] in ("unless-stopped", "always")
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    assert all(p.startswith("${FACEVERIFY_BIND:-127.0.0.1}:") for p in api["ports"])
    limits = api["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    # Only documented settings (docs/api.md) are passed to the service.
    from app.config import Settings
    known = {"FACEVERIFY_" + n.upper() for n in Settings.model_fields}
    passed = {k for k in api["environment"] if k.startswith("FACEVERIFY_")}
    passed |= {k for k in env_file_settings(ROOT / "deploy/compose/api-keys-file.env")}
    assert passed <= known, sorted(passed - known)
    for name in ("FACEVERIFY_GALLERY_ALLOW_ANONYMOUS", "FACEVERIFY_GALLERY_MAX_STALENESS_S",
                 "FACEVERIFY_API_KEYS"):
        assert name in api["environment"], name
    assert api["environment"]["FACEVERIFY_GALLERY_ALLOW_ANONYMOUS"].endswith(":-false}")
    # unset unless set on the host: the service's default (3 sync intervals) applies
    assert api["environment"]["FACEVERIFY_GALLERY_MAX_STALENESS_S"] is None


def env_file_settings(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#"))


KEYS_VAR = "FACEVERIFY_API_KEYS_FILE"


def test_compose_api_takes_an_optional_keys_file():
    """The keys file on the host (FACEVERIFY_API_KEYS_FILE) is mounted read-only (configs)
    and the container's FACEVERIFY_API_KEYS_FILE points at it. Without the host variable the
    container gets no FACEVERIFY_API_KEYS_FILE at all (an empty value would be a path to the
    service): the env_file that sets it is named only when the variable is set."""
    c = compose()
    api = c["services"]["api"]
    assert KEYS_VAR not in api["environment"], "comes from the env_file, only with a keys file"
    (entry,) = api["env_file"]
    assert entry["required"] is False
    assert entry["path"] == f"./deploy/compose/api-keys-file${{{KEYS_VAR}:+.env}}"
    assert not (ROOT / "deploy/compose/api-keys-file").exists()   # unset: no env file
    target = env_file_settings(ROOT / "deploy/compose/api-keys-file.env")[KEYS_VAR]
    (mount,) = api["configs"]
    assert mount["target"] == target and target.startswith("/etc/")
    source = c["configs"][mount["source"]]["file"]
    assert source == f"${{{KEYS_VAR}:-./deploy/compose/no-api-keys.json}}"
    assert json.loads((ROOT / "deploy/compose/no-api-keys.json").read_text()) == []


def test_compose_api_keeps_its_sqlite_gallery_on_a_named_volume():
    """The root filesystem is read-only: the gallery's SQLite file must be on a volume, a
    named one so that enrollments survive restarts and re-creation (docs/deploy.md)."""
    c = compose()
    api = c["services"]["api"]
    assert api["read_only"] is True
    url = api["environment"]["FACEVERIFY_GALLERY_URL"]
    assert url.startswith("sqlite:////"), url
    data_dir = str(Path(url[len("sqlite:///"):]).parent)
    mounts = dict(v.split(":")[:2] for v in api["volumes"])  # source -> target
    volume = next(src for src, dst in mounts.items() if dst == data_dir)
    assert volume in c["volumes"], f"{volume} is not a named volume"
    # the image makes that directory the service user's, so a new volume starts writable
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"install -d -o 10001 -g 10001 .*{re.escape(data_dir)}\b", dockerfile)


def test_compose_profiles():
    services = compose()["services"]
    assert services["lb"]["profiles"] == ["scale"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    for name in ("postgres", "gallery-api", "gallery-lb"):
        assert services[name]["profiles"] == ["gallery"], name
    for name in ("lb", "prometheus", "grafana", "gallery-api", "gallery-lb"):
        assert all(p.startswith("${FACEVERIFY_BIND:-127.0.0.1}:") for p in services[name]["ports"])
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    # the GPU override covers the api and the gallery profile's replicas alike (an override
    # of `api` does not reach gallery-api, which copies the api only inside the base file)
    assert set(gpu) == {"api", "gallery-api"}
    for name in ("api", "gallery-api"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
        assert gpu[name]["environment"]["FACEVERIFY_DEVICE"] == "${FACEVERIFY_DEVICE:-cuda}"
        assert gpu[name]["image"] == "${FACEVERIFY_IMAGE:-faceverify:gpu}"
        assert gpu[name]["build"]["args"]["TORCH_INDEX_URL"] == "${TORCH_INDEX_URL-}"
        assert gpu[name]["build"]["args"]["FACEVERIFY_EXTRAS"] == "gpu"  # CUDA torch
        assert "replicas" not in gpu[name]["deploy"]


def test_compose_gallery_profile():
    """PostgreSQL, N api replicas on it, and nginx in front, on a network of their own where
    the replicas answer to `api` (the lb's nginx configuration, reused)."""
    c = compose()
    services = c["services"]
    pg, gapi, glb, api = (services[n] for n in ("postgres", "gallery-api", "gallery-lb", "api"))
    # PostgreSQL: a configurable image (a stand-in in CI), healthy = pg_isready, a named
    # volume, no published port, the password from the environment.
    assert pg["image"] == "${POSTGRES_IMAGE:-postgres:15}"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "ports" not in pg
    volume, target = pg["volumes"][0].split(":")[:2]
    assert target == "/var/lib/postgresql/data" and volume in c["volumes"]
    password = pg["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${FACEVERIFY_POSTGRES_PASSWORD:-")
    # the replicas: the api's image and settings, the store in that database
    url = gapi["environment"]["FACEVERIFY_GALLERY_URL"]
    user, db = pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_DB"]
    assert url == f"postgresql://{user}:{password}@postgres:5432/{db}"
    assert gapi["environment"]["FACEVERIFY_GALLERY_ENABLED"] == "true"
    assert gapi["depends_on"]["postgres"]["condition"] == "service_healthy"
    replicas = re.fullmatch(r"\$\{FACEVERIFY_GALLERY_REPLICAS:-(\d+)\}", gapi["deploy"]["replicas"])
    assert replicas and int(replicas.group(1)) >= 2
    for key in ("image", "healthcheck", "read_only", "cap_drop", "security_opt", "tmpfs"):
        assert gapi[key] == api[key], key
    assert not gapi.get("volumes"), "no file store for the replicas"
    shared = {k: v for k, v in api["environment"].items() if "GALLERY" not in k}
    assert shared.items() <= gapi["environment"].items()
    for name in ("FACEVERIFY_GALLERY_ALLOW_ANONYMOUS", "FACEVERIFY_GALLERY_MAX_STALENESS_S",
                 "FACEVERIFY_GALLERY_SYNC_INTERVAL_S"):
        assert gapi["environment"][name] == api["environment"][name], name
    # the network: the lb reaches the replicas as `api`, and the default api is not there
    assert gapi["networks"]["gallery"]["aliases"] == ["api"]
    assert pg["networks"] == glb["networks"] == ["gallery"]
    assert "networks" not in api and "gallery" in c["networks"]
    assert glb["volumes"] == services["lb"]["volumes"]
    assert glb["depends_on"]["gallery-api"]["condition"] == "service_healthy"


def test_compose_gallery_profile_requires_a_keys_file():
    """The gallery replicas always read the mounted keys file, and the profile does not
    start without FACEVERIFY_API_KEYS_FILE: compose opens a required env_file only for the
    services it runs (a ${VAR:?} would be interpolated, and fail, for every command), and
    without the variable that file's name has no `.env` and does not exist."""
    c = compose()
    gapi = c["services"]["gallery-api"]
    check = "./deploy/compose/the-gallery-profile-needs-FACEVERIFY_API_KEYS_FILE"
    assert gapi["env_file"] == [{"path": f"{check}${{{KEYS_VAR}:+.env}}", "required": True}]
    assert not (ROOT / check).exists()
    assert env_file_settings(ROOT / f"{check}.env") == {}, "the check file sets nothing"
    (mount,) = gapi["configs"]
    assert gapi["environment"][KEYS_VAR] == mount["target"]
    assert mount["target"] == c["services"]["api"]["configs"][0]["target"]
    source = c["configs"][mount["source"]]["file"]
    assert source.startswith(f"${{{KEYS_VAR}:-./deploy/compose/the-gallery-profile-needs-")
    assert not (ROOT / source.split(":-", 1)[1].rstrip("}")).exists()
    assert "${" + KEYS_VAR + ":?" not in (ROOT / "docker-compose.yml").read_text()


def test_nginx_balances_the_api_service():
    conf = (ROOT / "deploy/nginx/faceverify.conf").read_text()
    assert re.search(r"upstream\s+faceverify_api\s*{[^}]*server\s+api:8000", conf)
    assert "proxy_pass http://faceverify_api;" in conf
    assert "client_max_body_size" in conf


NGINX_CONF = ROOT / "deploy/nginx/faceverify.conf"


def nginx_locations(conf: str) -> dict[str, str]:
    """{location argument: body} of the config's server (no nested blocks in them)."""
    return {m.group(1).strip(): m.group(2)
            for m in re.finditer(r"^\s*location\s+([^{]+?)\s*{([^}]*)}", conf, re.MULTILINE)}


def nginx_location_for(locations: dict[str, str], path: str) -> str:
    """The location nginx picks for `path`: exact, then the longest prefix unless a regex
    (in order) matches."""
    if f"= {path}" in locations:
        return f"= {path}"
    prefixes = [loc for loc in locations if not loc.startswith(("=", "~")) and
                path.startswith(loc)]
    for loc in locations:
        if loc.startswith("~ ") and re.search(loc[2:], path):
            return loc
    return max(prefixes, key=len)


# (method, path, may nginx resend it to another replica after sending it?)
ROUTES = [("POST", "/verify", True), ("POST", "/embed", True),
          ("POST", "/galleries/staff/identify", True),
          ("POST", "/galleries/staff/subjects/alice/verify", True),
          ("POST", "/galleries/staff/subjects/alice/faces", False),
          ("DELETE", "/galleries/staff/subjects/alice", False),
          ("DELETE", "/galleries/staff/subjects/alice/faces/" + "0" * 32, False),
          ("GET", "/galleries/staff/subjects", False)]


@pytest.mark.parametrize("method,path,retried", ROUTES)
def test_nginx_never_replays_gallery_writes(method, path, retried):
    """Enroll (a POST that stores a face) and deletes go to one replica, once; reads (the
    1:1 routes, identify, subject verify) may move on to another replica (non_idempotent)."""
    locations = nginx_locations(NGINX_CONF.read_text())
    body = locations[nginx_location_for(locations, path)]
    assert "proxy_pass http://faceverify_api;" in body
    rule = re.search(r"proxy_next_upstream\s+([^;]+);", body).group(1).split()
    if retried:
        assert "non_idempotent" in rule and "http_503" in rule
    else:
        assert rule == ["off"], (path, rule)


def test_nginx_access_log_names_routes_not_subjects():
    conf = NGINX_CONF.read_text()
    assert re.search(r"^\s*access_log\s+\S+\s+faceverify;", conf, re.MULTILINE)
    fmt = re.search(r"log_format faceverify((?:\s+'[^']*')+);", conf).group(1)
    assert "$faceverify_route" in fmt
    for leaky in ("$request ", "$request\"", "$request_uri", "$uri", "$args", "$query_string"):
        assert leaky not in fmt, leaky
    block = re.search(r"map \$uri \$faceverify_route {(.*?)^}", conf, re.S | re.M).group(1)
    rules = [(m.group(1), m.group(2)) for m in
             re.finditer(r'^\s*~(\S+)\s+"([^"]+)";', block, re.MULTILINE)]
    for _, path, _ in ROUTES:
        if path.startswith("/galleries/"):
            template = next(t for rx, t in rules if re.search(rx, path))
            assert "staff" not in template and "alice" not in template, (path, template)
            assert template.startswith("/galleries/{gallery}/")


def find_nginx() -> str | None:
    import os
    import shutil
    for candidate in (os.environ.get("FV_NGINX"), shutil.which("nginx"),
                      "/var/tmp/faceverify-docker/tools/nginx/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


NGINX = find_nginx()


@pytest.mark.skipif(NGINX is None, reason="no nginx binary (make docker-lint unpacks one into "
                                          "/var/tmp/faceverify-docker/tools; or set FV_NGINX)")
def test_nginx_retries_reads_and_never_writes_live(tmp_path):
    """The real nginx with the real configuration in front of two stand-in replicas, one of
    which answers every request 503: identify and /verify reach the healthy one on every
    try; an enroll or a delete reaches exactly one replica (a 503 goes back to the client),
    and the access log holds no gallery or subject name."""
    import http.client
    import http.server
    import os
    import socket
    import subprocess
    import threading
    import time

    hits: list[tuple[str, str, str]] = []

    def replica(name: str, status: int):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hits.append((name, self.command, self.path))
                body = b'{"ok": true}' if status == 200 else b'{"error": {"code": "overloaded"}}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    bad, good = replica("bad", 503), replica("good", 200)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    access = tmp_path / "access.log"
    conf = NGINX_CONF.read_text()
    conf = conf.replace("server api:8000 max_fails=2 fail_timeout=5s;",
                        f"server 127.0.0.1:{bad.server_port} max_fails=0;\n"
                        f"    server 127.0.0.1:{good.server_port} max_fails=0;")
    conf = conf.replace("listen 80 default_server;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("/var/log/nginx/access.log", str(access))
    (tmp_path / "faceverify.conf").write_text(conf)
    temp = "\n".join(f"    {d}_temp_path {tmp_path}/{d};"
                     for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "") +
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"daemon off;\nevents {{}}\nhttp {{\n{temp}\n    include faceverify.conf;\n}}\n")
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                             "-e", str(tmp_path / "error.log")])
    try:
        def call(method: str, path: str) -> int:
            deadline = time.monotonic() + 10
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    c.request(method, path, body=b"x" * 10 if method == "POST" else None)
                    status = c.getresponse().status
                    c.close()
                    return status
                except ConnectionRefusedError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)

        for method, path, retried in ROUTES:
            statuses = []
            for _ in range(4):                   # round robin: both replicas come first
                hits.clear()
                statuses.append(call(method, path))
                tried = [h[0] for h in hits]
                if retried:
                    assert statuses[-1] == 200 and tried[-1] == "good", (path, tried)
                else:
                    assert len(tried) == 1, (method, path, tried)   # never resent
                    assert statuses[-1] == (200 if tried == ["good"] else 503)
            if not retried:
                assert 503 in statuses, (path, statuses)          # the bad one was reached
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        bad.shutdown()
        good.shutdown()
    log = access.read_text()
    assert "/galleries/{gallery}/subjects/{subject}/faces" in log
    assert "alice" not in log and "staff" not in log


@pytest.mark.parametrize("pattern", ["tests/", "cache/", "runs/", ".venv/", "bench/"])
def test_dockerignore_keeps_out(pattern):
    rules = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*"                                   # an allow-list
    assert not any(r.lstrip("!").startswith(pattern) for r in rules if r.startswith("!"))


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") >= 2                       # multi-stage
    assert "ARG TORCH_INDEX_URL=" in text and "ARG FACEVERIFY_EXTRAS=" in text
    assert "COPY faceverify /opt/app/faceverify" in text
    assert "torch in the CPU image" in text  # the CPU build refuses torch
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/health/ready" in text
    assert "COPY weights /opt/app/weights" in text and "COPY --from=builder /opt/app /app" in text
    # the default gallery store (sqlite:///data/gallery.db from WORKDIR /app) has its directory
    assert re.search(r"^WORKDIR /app$", text, re.MULTILINE)
    assert "install -d -o 10001 -g 10001 -m 0750 /app/data" in text
    entry = (ROOT / "deploy/docker-entrypoint.sh").read_text()
    assert "uvicorn app.main:app" in entry and "WEB_CONCURRENCY" in entry
