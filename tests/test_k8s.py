"""The Kubernetes manifests (deploy/k8s), proven offline.

Every overlay, alone and with every component, is rendered by the real kustomize (kubectl's
built-in one, or a standalone `kustomize`; `deploy/k8s/install_kubectl.py` finds or installs
it), validated against the Kubernetes JSON schemas that the `kubernetes-validate` package
ships (strict: unknown fields fail), and checked against the code: probe paths are routes of
the app, the container port is the one the image's entry point binds, every FACEVERIFY_*
variable is a field of app.config.Settings whose value the Settings class accepts, and every
metric the autoscaler or the Prometheus adapter names is one app/metrics.py exports.

The rendering tests skip (with the reason) only when no kubectl/kustomize is available;
`make k8s-check` sets FACEVERIFY_K8S_CHECK=1, which turns that skip into a failure.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.config import ENV_PREFIX, Settings
from app.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml"))
# The oldest Kubernetes minor still commonly run, and the newest the schemas know.
SCHEMA_VERSIONS = ("1.29", kubernetes_validate.latest_version())
APP_PORT_DEFAULT = 8000  # the entry point's and `make serve`'s default bind
IMAGE_TAGS = {"cpu": "0.1.0", "gpu": "0.1.0-cuda"}
DEVICES = {"cpu": "cpu", "gpu": "cuda"}


def _load_installer():
    spec = importlib.util.spec_from_file_location("install_kubectl",
                                                  K8S / "install_kubectl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _load_installer().find_tool()
NO_TOOL = ("no kubectl (with kustomize v5+) or kustomize binary found on PATH, in $KUBECTL or "
           "in .tools/bin: run `python3 deploy/k8s/install_kubectl.py` (`make k8s-check` "
           "and .ci/run do)")
if TOOL is None and os.environ.get("FACEVERIFY_K8S_CHECK") == "1":
    raise RuntimeError(NO_TOOL)
needs_tool = pytest.mark.skipif(TOOL is None, reason=NO_TOOL)

VARIANTS = [(o, None) for o in OVERLAYS] + [(o, c) for o in OVERLAYS for c in COMPONENTS]


def _variant_id(v):
    overlay, component = v
    return overlay if component is None else f"{overlay}+{component}"


def kustomize(directory: Path) -> list[dict]:
    if TOOL is None:
        pytest.skip(NO_TOOL)
    cmd, _ = TOOL
    proc = subprocess.run(cmd + [str(directory)], check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"{shlex.join(cmd)} {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=VARIANTS, ids=_variant_id)
def rendered(request, tmp_path_factory):
    overlay, component = request.param
    if component is None:
        docs = kustomize(K8S / "overlays" / overlay)
    else:
        # An overlay with a component on top, as a user would write it in their overlay.
        # kustomize refuses absolute paths, so the temporary kustomization uses relative ones.
        d = tmp_path_factory.mktemp(f"{overlay}-{component}")
        rel = Path(os.path.relpath(K8S, d))
        (d / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [str(rel / "overlays" / overlay)],
            "components": [str(rel / "components" / component)]}))
        docs = kustomize(d)
    return overlay, component, docs


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container_of(deployment):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def exported_metric_names() -> set[str]:
    """Every series name the service's /metrics can carry (app/metrics.py)."""
    names = set()
    for family in Metrics(max_batch_size=32).registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        names.update(s.name for s in family.samples)
    return names


@pytest.fixture(scope="module")
def app_client():
    """The real app, without its lifespan (no weights needed): routes answer, 404 or not."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    return TestClient(create_app(Settings(_env_file=None)))


def served(client, path: str) -> bool:
    """GET `path` reaches a route of the app: anything but 404/405 (/health/ready answers
    503 not_ready before the warm-up, which is still the route answering)."""
    return client.get(path).status_code not in (404, 405)


# ---------------------------------------------------------------------------- rendering
def test_every_overlay_and_component_is_found():
    assert {"cpu", "gpu"} <= set(OVERLAYS)
    assert {"hpa-inflight", "gallery", "gallery-sqlite"} <= set(COMPONENTS)


@needs_tool
def test_tool_version_is_reported():
    cmd, version = TOOL
    print(f"rendering with {shlex.join(cmd)}: {version}")
    assert "v" in version


def test_renders_the_expected_objects(rendered):
    _, component, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    extra = ["PersistentVolumeClaim"] if component == "gallery-sqlite" else []
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "Service"] + extra), kinds
    # Secrets are referenced, never shipped: no key can end up in the repository this way.
    assert all(d["kind"] != "Secret" for d in docs)
    for d in docs:
        assert d["metadata"].get("namespace") == "faceverify"


@pytest.mark.parametrize("k8s_version", SCHEMA_VERSIONS)
def test_validates_against_the_kubernetes_schemas(rendered, k8s_version):
    _, _, docs = rendered
    for d in docs:
        try:
            kubernetes_validate.validate(d, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{d['kind']}/{d['metadata']['name']} is invalid for Kubernetes "
                        f"{k8s_version}: {exc}")


# ---------------------------------------------------------------------------- wiring
def test_selectors_and_references_line_up(rendered):
    _, component, docs = rendered
    dep = one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items()
    svc = one(docs, "Service")
    assert svc["spec"]["selector"] and svc["spec"]["selector"].items() <= pod_labels.items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    if component == "gallery-sqlite":  # one pod on purpose (its SQLite file); see gallery tests
        assert hpa["spec"]["minReplicas"] == hpa["spec"]["maxReplicas"] == 1
    else:
        assert hpa["spec"]["minReplicas"] >= 2, "one pod must serve while the PDB lets one go"
    assert pdb["spec"].get("maxUnavailable") == 1
    cm = one(docs, "ConfigMap")
    refs = [e["configMapRef"]["name"] for e in container_of(dep).get("envFrom", [])]
    assert refs == [cm["metadata"]["name"]]


# ---------------------------------------------------------------------------- code checks
def test_probes_and_ports_exist_in_the_app(rendered, app_client):
    _, _, docs = rendered
    dep = one(docs, "Deployment")
    c = container_of(dep)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": APP_PORT_DEFAULT}
    # The image's entry point binds $PORT; the pod pins it to the container port.
    assert int(env_of(c)["PORT"]["value"]) == ports["http"]
    expected = {"livenessProbe": "/health/live", "readinessProbe": "/health/ready",
                "startupProbe": "/health/ready"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path and served(app_client, path), (probe, get)
        assert get["port"] in ports or get["port"] in ports.values()
    assert not served(app_client, "/health/no-such-probe")  # the check can fail
    svc = one(docs, "Service")
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports or p["targetPort"] in ports.values()
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/path"] == "/metrics"
    scrape = app_client.get(ann["prometheus.io/path"])
    assert scrape.status_code == 200 and "faceverify_queue_depth" in scrape.text
    assert int(ann["prometheus.io/port"]) == ports["http"]


def test_image_entry_point_binds_the_port_the_pod_expects():
    entry = ROOT / "deploy" / "docker-entrypoint.sh"
    dockerfile = ROOT / "Dockerfile"
    if not entry.exists() or not dockerfile.exists():
        pytest.skip("no Dockerfile / deploy/docker-entrypoint.sh in this tree")
    text = entry.read_text()
    assert re.search(r'--port "?\$\{PORT', text), "the entry point must bind $PORT"
    assert re.search(r'--timeout-graceful-shutdown "?\$\{GRACEFUL_TIMEOUT_S', text)
    df = dockerfile.read_text()
    assert re.search(rf"^EXPOSE {APP_PORT_DEFAULT}\b", df, re.MULTILINE)
    assert re.search(r"^USER 10001(:10001)?\s*$", df, re.MULTILINE)
    assert "/app/weights" in df


def test_configmap_holds_only_real_settings_with_valid_values(rendered, monkeypatch):
    overlay, _, docs = rendered
    data = one(docs, "ConfigMap")["data"]
    fields = set(Settings.model_fields)
    for key in data:
        assert key.startswith(ENV_PREFIX), f"{key} is not a FACEVERIFY_* setting"
        assert key[len(ENV_PREFIX):].lower() in fields, f"{key} is not a field of Settings"
    assert "FACEVERIFY_API_KEYS" not in data, "API keys come from the Secret, never the map"
    c = container_of(one(docs, "Deployment"))
    env = env_of(c)
    for name in env:
        if name.startswith(ENV_PREFIX):
            assert name[len(ENV_PREFIX):].lower() in fields, f"{name} is not a setting"
    # The values parse as the pod would parse them: from the environment, nothing else.
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    threads = env["FACEVERIFY_TORCH_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads["resource"] == "limits.cpu" and threads["divisor"] in ("1", 1)
    monkeypatch.setenv("FACEVERIFY_TORCH_THREADS",
                       str(int(float(c["resources"]["limits"]["cpu"]))))
    s = Settings(_env_file=None)
    assert s.device == DEVICES[overlay]
    assert str(s.weights) == "/app/weights/faceverify-encoder.safetensors"
    assert s.max_concurrent_requests <= s.max_queue


def test_api_keys_come_from_an_optional_secret_reference(rendered):
    _, _, docs = rendered
    env = env_of(container_of(one(docs, "Deployment")))
    keys = env["FACEVERIFY_API_KEYS"]
    assert "value" not in keys
    ref = keys["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True and ref["name"] and ref["key"]


def test_no_key_is_written_anywhere_under_deploy_k8s():
    for path in K8S.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".env"):
            for line in path.read_text().splitlines():
                if line.lstrip().startswith("#"):
                    continue
                assert not re.match(r"\s*FACEVERIFY_API_KEYS\s*=", line), path
                assert "api-keys:" not in line.replace(" ", ""), path
                # a database URL with credentials belongs in the Secret faceverify-gallery
                assert not re.search(r"postgres(ql)?://", line), path


# ---------------------------------------------------------------------------- galleries
def _gallery_settings(docs, monkeypatch) -> Settings:
    """The gallery settings a pod gets: the ConfigMap's values (env entries with a value too)."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for key, value in one(docs, "ConfigMap")["data"].items():
        monkeypatch.setenv(key, value)
    for name, e in env_of(container_of(one(docs, "Deployment"))).items():
        if name.startswith(ENV_PREFIX + "GALLERY_") and "value" in e:
            monkeypatch.setenv(name, e["value"])
    return Settings(_env_file=None)


def test_galleries_never_split_across_pods(rendered, monkeypatch):
    """A SQLite file is one pod's gallery: with galleries on, either the store is shared (the
    URL comes from the Secret, meant for PostgreSQL) or the autoscaler keeps exactly one pod,
    whose file lives on a PersistentVolumeClaim (an emptyDir dies with its pod)."""
    _, component, docs = rendered
    s = _gallery_settings(docs, monkeypatch)
    c = container_of(one(docs, "Deployment"))
    url_env = env_of(c).get("FACEVERIFY_GALLERY_URL")
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    if component not in ("gallery", "gallery-sqlite"):
        assert s.gallery_enabled is False, "galleries on with a SQLite file per pod"
        assert url_env is None
        return
    assert s.gallery_enabled is True
    if component == "gallery":
        assert "value" not in url_env and "FACEVERIFY_GALLERY_URL" not in one(
            docs, "ConfigMap")["data"], "the URL holds a password: Secret only"
        ref = url_env["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("faceverify-gallery", "url")
        assert ref.get("optional", False) is False, \
            "without the Secret each pod would fall back to a SQLite gallery of its own"
        assert hpa["minReplicas"] >= 2
        return
    # gallery-sqlite: one pod, the file on a claim mounted where the URL points
    assert url_env is None and s.gallery_url.startswith("sqlite:////")
    db = Path(s.gallery_url[len("sqlite:///"):])
    assert hpa["minReplicas"] == hpa["maxReplicas"] == 1
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert str(db.parent) in mounts and mounts[str(db.parent)] != "tmp"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[str(db.parent)]]
    assert "emptyDir" not in volume, "an emptyDir is deleted with its pod"
    pvc = one(docs, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pod["securityContext"]["fsGroup"] == 10001, "the claim must be writable by uid 10001"


KEYS_SECRET, KEYS_SECRET_KEY = "faceverify-api-keys-file", "keys.json"


def test_gallery_components_require_a_scoped_keys_file(rendered, monkeypatch):
    """Galleries hold biometric data: with a gallery component the pods need the keys file
    (Secret faceverify-api-keys-file, key keys.json), mounted read-only as a file that
    FACEVERIFY_API_KEYS_FILE names. The reference is not optional (a pod without it does not
    start), the mount is a directory (the kubelet updates a rotated Secret in place; subPath
    mounts never change), and no pod may serve galleries anonymously."""
    _, component, docs = rendered
    s = _gallery_settings(docs, monkeypatch)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container_of(dep)
    env = env_of(c)
    data = one(docs, "ConfigMap")["data"]
    assert data.get("FACEVERIFY_GALLERY_ALLOW_ANONYMOUS", "false").lower() == "false"
    assert "FACEVERIFY_GALLERY_ALLOW_ANONYMOUS" not in env
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    if component not in ("gallery", "gallery-sqlite"):
        assert not s.gallery_enabled
        assert "FACEVERIFY_API_KEYS_FILE" not in env and not secret_volumes
        return
    path = Path(env["FACEVERIFY_API_KEYS_FILE"]["value"])
    assert "FACEVERIFY_API_KEYS_FILE" not in data
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
    assert mount.get("readOnly") is True and "subPath" not in mount
    secret = secret_volumes[mount["name"]]
    assert secret["secretName"] == KEYS_SECRET
    assert secret.get("optional", False) is False, "galleries must not start without keys"
    assert [(i["key"], i["path"]) for i in secret["items"]] == [(KEYS_SECRET_KEY, path.name)]
    # readable by the service's group (the pod's fsGroup), by nobody else, written by no one
    mode = secret["defaultMode"]
    assert mode & 0o040 and not mode & 0o222 and not mode & 0o007, oct(mode)
    assert pod["securityContext"]["fsGroup"] == 10001


def test_image_has_the_default_sqlite_directory():
    """The image's default store, sqlite:///data/gallery.db from WORKDIR /app, needs /app/data
    owned by the service's user (a mounted volume takes its place; tests/test_deploy.py)."""
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("no Dockerfile in this tree")
    df = dockerfile.read_text()
    assert re.search(r"^WORKDIR /app\s*$", df, re.MULTILINE)
    assert Settings.model_fields["gallery_url"].default == "sqlite:///data/gallery.db"
    assert re.search(r"install -d -o 10001 -g 10001 .*/app/data", df)


# ---------------------------------------------------------------------------- pod hygiene
def test_pod_runs_non_root_read_only_with_a_tmp_volume(rendered):
    _, _, docs = rendered
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["enableServiceLinks"] is False, "service links would inject FACEVERIFY_* vars"
    c = container_of(one(docs, "Deployment"))
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert env_of(c)["TMPDIR"]["value"] == "/tmp"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind


def test_shutdown_and_startup_budgets(rendered):
    _, component, docs = rendered
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container_of(one(docs, "Deployment"))
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    graceful = int(env_of(c)["GRACEFUL_TIMEOUT_S"]["value"])
    drain_margin = 10  # the batcher's queue (docs/operations.md "Graceful shutdown")
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + graceful + drain_margin
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 300
    strategy = one(docs, "Deployment")["spec"]["strategy"]
    if component == "gallery-sqlite":
        # one pod and a ReadWriteOnce claim: the old pod must let the volume go first
        assert strategy == {"type": "Recreate"}
    else:
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, \
            "a rollout waits for warm pods before removing one"


def test_overlay_specifics(rendered):
    overlay, _, docs = rendered
    c = container_of(one(docs, "Deployment"))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert c["image"] == f"faceverify:{IMAGE_TAGS[overlay]}"
    gpus = c["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert str(gpus) == "1"
        assert str(c["resources"]["requests"]["nvidia.com/gpu"]) == "1"
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert any(k.startswith("nvidia.com/") for k in pod["nodeSelector"])
    else:
        assert gpus is None and "tolerations" not in pod


# ---------------------------------------------------------------------------- autoscaling
def _adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def test_adapter_rules_map_metrics_the_service_exports():
    exported = exported_metric_names()
    rules = _adapter_rules()
    assert rules
    for rule in rules:
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
        assert series in exported, f"{series} is not exported by app/metrics.py"
        assert re.search(rule["name"]["matches"], series)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        for name in re.findall(r"\bfaceverify_[a-zA-Z0-9_]+", rule["metricsQuery"]):
            assert name in exported, f"{name} in metricsQuery is not exported"
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]


def test_hpa_metric_is_cpu_or_one_the_adapter_publishes(rendered):
    _, component, docs = rendered
    metrics = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    published = {r["name"]["as"] for r in _adapter_rules()}
    assert metrics
    for m in metrics:
        if m["type"] == "Resource":
            assert component != "hpa-inflight"
            assert m["resource"]["name"] == "cpu"
            assert 0 < m["resource"]["target"]["averageUtilization"] <= 90
        else:
            assert m["type"] == "Pods" and component == "hpa-inflight"
            assert m["pods"]["metric"]["name"] in published
            target = m["pods"]["target"]
            assert target["type"] == "AverageValue"
            data = one(docs, "ConfigMap")["data"]
            limit = int(data["FACEVERIFY_MAX_CONCURRENT_REQUESTS"])
            assert 0 < float(target["averageValue"]) < limit / 4, \
                "scale well before requests are refused with 503"
