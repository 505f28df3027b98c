"""make deploy-lint has teeth: each linter fails on a copy of our own files with one fault.

The linters (hadolint, kubectl kustomize, kubernetes-validate, checkov) live in
.venv-deploy, which ``make image-test`` puts on PATH with IMAGE_TEST=1; plain ``make
test`` skips this module and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.image_support import ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("IMAGE_TEST") != "1",
    reason="needs the linters of .venv-deploy: run by `make image-test`",
)

KUBERNETES = ROOT / "deploy" / "kubernetes"


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found is not None, f"{name} is not on PATH (make image-test puts .venv-deploy/bin there)"
    return found


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def manifests_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """deploy/kubernetes copied, with ``old`` replaced by ``new`` (once) in ``file``."""
    target = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, target)
    text = (target / file).read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {file}"
    (target / file).write_text(text.replace(old, new))
    return target


def test_hadolint_passes_ours_and_fails_a_root_user(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    assert run(hadolint, str(ROOT / "Dockerfile")).returncode == 0
    bad = tmp_path / "Dockerfile"
    bad.write_text((ROOT / "Dockerfile").read_text().replace("USER 10001:10001", "USER root"))
    result = run(hadolint, str(bad))
    assert result.returncode != 0
    assert "DL3002" in result.stdout, result.stdout


def test_kustomize_and_schemas_pass_ours_and_fail_a_misspelt_field(tmp_path: Path) -> None:
    kubectl, validate = tool("kubectl"), tool("kubernetes-validate")
    rendered = run(kubectl, "kustomize", str(KUBERNETES))
    assert rendered.returncode == 0, rendered.stderr
    good = tmp_path / "good.yaml"
    good.write_text(rendered.stdout)
    assert run(validate, "--strict", "--quiet", str(good)).returncode == 0
    faulty = manifests_copy(tmp_path, "deployment.yaml", "readinessProbe:", "readinesProbe:")
    bad = tmp_path / "bad.yaml"
    bad.write_text(run(kubectl, "kustomize", str(faulty)).stdout)
    result = run(validate, "--strict", "--quiet", str(bad))
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


def test_kustomize_fails_on_a_missing_resource(tmp_path: Path) -> None:
    faulty = manifests_copy(tmp_path, "kustomization.yaml", "  - service.yaml\n", "  - svc.yaml\n")
    assert run(tool("kubectl"), "kustomize", str(faulty)).returncode != 0


# One fault per copy of deployment.yaml, and the check that must catch it.
WEAKENED = {
    "writable-root.yaml": (
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: false",
        "CKV_K8S_22",
    ),
    "escalation.yaml": (
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalation: true",
        "CKV_K8S_20",
    ),
    "no-memory-limit.yaml": ("              memory: 320Mi\n", "", "CKV_K8S_13"),
}


def test_checkov_passes_ours_and_fails_each_weakened_deployment(tmp_path: Path) -> None:
    """One checkov run (it takes seconds to start) over our deployment and three copies."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    original = (KUBERNETES / "deployment.yaml").read_text()
    (folder / "deployment.yaml").write_text(original)
    shutil.copy(KUBERNETES / "networkpolicy.yaml", folder)  # the policy graph check needs it
    for name, (old, new, _check) in WEAKENED.items():
        assert original.count(old) == 1, old
        (folder / name).write_text(original.replace(old, new))
    result = run(
        tool("checkov"),
        "--quiet",
        "--skip-download",
        "--framework",
        "kubernetes",
        "--output",
        "json",
        "--directory",
        str(folder),
    )
    assert result.returncode != 0
    failed: dict[str, set[str]] = {}
    for finding in json.loads(result.stdout)["results"]["failed_checks"]:
        failed.setdefault(finding["file_path"].lstrip("/"), set()).add(finding["check_id"])
    assert "deployment.yaml" not in failed, failed
    for name, (_old, _new, check) in WEAKENED.items():
        assert check in failed.get(name, set()), (name, failed)
