"""The Dockerfile, checked structurally (no Docker daemon in CI)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import ray

from k8s import validate
from k8s.render import OUTPUT, REPO_ROOT, load_yaml
from tests.k8s_helpers import PYPROJECT, included_packages


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # installed by the dev extra
    result = subprocess.run([str(hadolint), "--no-color", "Dockerfile"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_rays_gpu_image_at_the_pinned_version() -> None:
    (base,) = [args for op, args in instructions() if op == "FROM"]
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-(?P<flavour>gpu|cu\d+)", base)
    assert match, base
    assert match["ray"] == ray.__version__
    assert f'"ray[serve]=={ray.__version__}"' in PYPROJECT
    minimum = re.search(r'requires-python = ">=([\d.]+)"', PYPROJECT)[1]
    assert (int(match["py"]), int(match["minor"])) >= tuple(map(int, minimum.split(".")))


def test_project_is_installed_as_a_package() -> None:
    ops = instructions()
    installs = [args for op, args in ops if op == "RUN" and re.search(r"pip install\b[^&]*\s\.(\s|$)", args)]
    assert installs, "the image must `pip install .` the project"
    assert not any(re.search(r"\s(-e|--editable)\s", args) for args in installs), "editable installs point at sources"
    # The sources are copied in before they are installed.
    copy_at = next(i for i, (op, args) in enumerate(ops) if op == "COPY" and args.split()[-2:][0] == ".")
    install_at = next(i for i, (op, args) in enumerate(ops) if op == "RUN" and args in installs)
    assert copy_at < install_at


def test_every_project_package_is_installed() -> None:
    # A top-level package missing from packages.find is missing from the image.
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(included_packages()), packages - set(included_packages())


def test_local_state_stays_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "artifacts"} <= ignored


def test_both_model_modes_are_supported() -> None:
    ops = instructions()
    hf_home = next(args.split("=", 1)[1] for op, args in ops if op == "ENV" and args.startswith("HF_HOME="))
    # Baked: an optional build argument fills the Hugging Face cache at build time.
    assert ("ARG", 'MODEL_ID=""') in ops
    assert any(op == "RUN" and "snapshot_download" in args and "$MODEL_ID" in args for op, args in ops)
    # Pods choose offline (baked) or download at start, and no volume hides the baked cache.
    gpu_envs = []
    for _, template in validate.pod_templates(load_yaml(OUTPUT)):
        for container in template["spec"]["containers"]:
            for mount in container.get("volumeMounts", []):
                assert not Path(hf_home).is_relative_to(mount["mountPath"]), mount
            gpu_envs += [e["value"] for e in container.get("env", []) if e["name"] == "HF_HUB_OFFLINE"]
    assert gpu_envs and set(gpu_envs) <= {"0", "1"}
