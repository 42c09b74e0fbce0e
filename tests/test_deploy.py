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
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "faceverify-api")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # DNS service discovery of the compose service name: one target per replica.
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["api"] and sd["type"] == "A" and sd["port"] == 8000


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_api_service():
    api = compose()["services"]["api"]
    assert api["build"]["target"] == "runtime"
    assert "TORCH_INDEX_URL" in api["build"]["args"]
    assert api["restart"] in ("unless-stopped", "always")
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    assert all(p.startswith("${FACEVERIFY_BIND:-127.0.0.1}:") for p in api["ports"])
    limits = api["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    # Only documented settings (docs/api.md) are passed to the service.
    from app.config import Settings
    known = {"FACEVERIFY_" + n.upper() for n in Settings.model_fields}
    passed = {k for k in api["environment"] if k.startswith("FACEVERIFY_")}
    assert passed <= known, sorted(passed - known)


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
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["api"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


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
    # the network: the lb reaches the replicas as `api`, and the default api is not there
    assert gapi["networks"]["gallery"]["aliases"] == ["api"]
    assert pg["networks"] == glb["networks"] == ["gallery"]
    assert "networks" not in api and "gallery" in c["networks"]
    assert glb["volumes"] == services["lb"]["volumes"]
    assert glb["depends_on"]["gallery-api"]["condition"] == "service_healthy"


def test_nginx_balances_the_api_service():
    conf = (ROOT / "deploy/nginx/faceverify.conf").read_text()
    assert re.search(r"upstream\s+faceverify_api\s*{[^}]*server\s+api:8000", conf)
    assert "proxy_pass http://faceverify_api;" in conf
    assert "client_max_body_size" in conf


@pytest.mark.parametrize("pattern", ["tests/", "cache/", "runs/", ".venv/", "bench/"])
def test_dockerignore_keeps_out(pattern):
    rules = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*"                                   # an allow-list
    assert not any(r.lstrip("!").startswith(pattern) for r in rules if r.startswith("!"))


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") >= 2                       # multi-stage
    assert "ARG TORCH_INDEX_URL=" in text
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/health/ready" in text
    assert "COPY weights /opt/app/weights" in text and "COPY --from=builder /opt/app /app" in text
    # the default gallery store (sqlite:///data/gallery.db from WORKDIR /app) has its directory
    assert re.search(r"^WORKDIR /app$", text, re.MULTILINE)
    assert "install -d -o 10001 -g 10001 -m 0750 /app/data" in text
    entry = (ROOT / "deploy/docker-entrypoint.sh").read_text()
    assert "uvicorn app.main:app" in entry and "WEB_CONCURRENCY" in entry
