"""The Docker and compose files agree with the app they deploy (the Kubernetes manifests:
test_kubernetes.py).

No engine runs here, so the files are parsed and cross-checked: probe paths are real
routes, ports agree, every FCN_ variable is a real setting, the model path baked into the
images exists in the repository, the service images never install torch and pin an ONNX
Runtime built for their CUDA.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import anyio
import httpx
import onnxruntime as ort
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from model.cli import build_parser
from model.zoo.pretrained import MIRROR_VARIABLE, model_path
from service import healthcheck
from service.config import OTHER_VARIABLES, Settings
from service.main import create_app

ROOT = Path(__file__).resolve().parents[2]
SERVICE_DOCKERFILES = ("docker/service.Dockerfile", "docker/service-cpu.Dockerfile")
# What the service images install: the serve extra, and the CPU image OpenVINO's too.
SERVE_EXTRA = re.compile(r"'\.\[serve(,openvino)?\]'")
PRETRAINED_DOCKERFILE = "docker/pretrained.Dockerfile"
DOCKERFILES = (*SERVICE_DOCKERFILES, "docker/train.Dockerfile", PRETRAINED_DOCKERFILE)
PRETRAINED_COMPOSE = ROOT / "docker" / "compose.pretrained.yml"
K8S = ROOT / "deploy" / "kubernetes"
SETTINGS = {f"FCN_{name.upper()}" for name in Settings.model_fields}
DEFAULT_PORT = Settings.model_fields["port"].default
ENV_REFERENCE = re.compile(r"\bFCN_[A-Z0-9_]+")
# Variables that compose itself reads to fill in the file; they never reach the service.
COMPOSE_ONLY = {"FCN_HOST_PORT", "FCN_MODELS_DIR", "FCN_PRETRAINED"}
# Read by `fcn pretrained` (model.zoo), in its own container, never by the service.
ZOO_VARIABLES = {"FCN_CACHE", "FCN_MIRROR"}


def answers(path: str) -> bool:
    """Whether the app routes GET ``path`` (any status but 404/405; no model is loaded)."""
    app = create_app(Settings(model_path=ROOT / "models" / "demo" / "fcn8s.onnx"))

    async def get() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get(path)).status_code

    return anyio.run(get) not in (404, 405)


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / name).read_text()
    text = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in text.splitlines()]
    pairs = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        pairs.append((instruction.upper(), rest.strip()))
    return pairs


def env_of(pairs: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in pairs:
        if instruction == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def compose(path: Path = ROOT / "docker-compose.yml") -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


HEALTHCHECK = ["python", "-m", "service.healthcheck"]


def health_command(instruction: str) -> list[str]:
    """The command of a HEALTHCHECK instruction's exec form."""
    options, _, command = instruction.partition("CMD ")
    assert "--interval" in options, instruction
    return [str(part) for part in yaml.safe_load(command)]


def onnxruntime_pin(runs: str) -> SpecifierSet:
    """The onnxruntime-gpu version an image's pip installs name."""
    match = re.search(r"'onnxruntime-gpu([~=<>!][^']*)'", runs)
    assert match, "the image does not pin onnxruntime-gpu"
    return SpecifierSet(match.group(1))


@pytest.mark.parametrize("name", SERVICE_DOCKERFILES)
def test_service_images_serve_the_bundled_model_as_a_non_root_user(name: str) -> None:
    pairs = dockerfile(name)
    env = env_of(pairs)
    assert {k for k in env if k.startswith("FCN_")} <= SETTINGS
    assert env["FCN_PORT"] == str(DEFAULT_PORT)
    assert ("EXPOSE", str(DEFAULT_PORT)) in pairs

    # The default model path inside the image is the repository's demo model, copied in.
    model_in_image = Path(env["FCN_MODEL_PATH"])
    copies = [shlex.split(rest) for instruction, rest in pairs if instruction == "COPY"]
    sources = {Path(c[-1].rstrip("/")): Path(c[0].rstrip("/")) for c in copies if len(c) == 2}
    folder = sources[model_in_image.parent]
    assert (ROOT / folder / model_in_image.name).is_file()

    users = [rest for instruction, rest in pairs if instruction == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    health = [rest for instruction, rest in pairs if instruction == "HEALTHCHECK"]
    assert len(health) == 1
    assert health_command(health[0]) == HEALTHCHECK

    # The service never needs torch: only the serve extra is installed (the CPU image with
    # OpenVINO's).
    runs = " ".join(rest for instruction, rest in pairs if instruction == "RUN")
    assert SERVE_EXTRA.search(runs)
    assert "torch" not in runs
    assert ("CMD", '["fcn-serve"]') in pairs


def packages() -> list[str]:
    """The project's packages, as pyproject.toml has setuptools find them."""
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    names = [pattern.rstrip("*") for pattern in found["packages"]["find"]["include"]]
    assert {"contract", "model", "service"} <= set(names)
    return names


@pytest.mark.parametrize("name", SERVICE_DOCKERFILES)
def test_dependencies_install_before_the_code_is_copied(name: str) -> None:
    pairs = dockerfile(name)
    steps = [f"{instruction} {rest}" for instruction, rest in pairs]
    dependencies = next(i for i, step in enumerate(steps) if SERVE_EXTRA.search(step))
    assert steps[dependencies - 1] == "COPY pyproject.toml ./"
    install = steps[dependencies]
    for package in packages():
        # An empty package stands in for each, so that pip can build the project from
        # pyproject.toml alone; it is removed before the real code comes.
        assert re.search(rf"\bmkdir [^&]*\b{package}\b", install), (name, package)
        assert f"{package}/__init__.py" in install, (name, package)
        assert re.search(rf"\brm -rf [^&]*\b{package}\b", install), (name, package)
        code = steps.index(f"COPY {package}/ {package}/")
        assert dependencies < code, (name, package)
        # Then the project itself, without touching the dependencies again.
        assert any("pip install --no-deps ." in step for step in steps[code:]), (name, package)


def test_the_training_image_copies_every_package() -> None:
    steps = [f"{instruction} {rest}" for instruction, rest in dockerfile("docker/train.Dockerfile")]
    for package in packages():
        assert f"COPY {package}/ {package}/" in steps, package


def test_the_pinned_onnxruntime_is_built_for_the_base_images_cuda() -> None:
    pairs = dockerfile(SERVICE_DOCKERFILES[0])
    base = next(rest for instruction, rest in pairs if instruction == "FROM")
    match = re.match(r"nvidia/cuda:(\d+)\.", base)
    assert match, base
    runs = " ".join(rest for instruction, rest in pairs if instruction == "RUN")
    pin = onnxruntime_pin(runs)
    # Both images run the same release, within what the serve extra allows.
    cpu_runs = " ".join(r for i, r in dockerfile(SERVICE_DOCKERFILES[1]) if i == "RUN")
    assert onnxruntime_pin(cpu_runs) == pin
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (allowed,) = [
        r.specifier
        for r in map(Requirement, project["optional-dependencies"]["serve"])
        if r.name == "onnxruntime-gpu"
    ]
    installed = Version(ort.__version__)
    if installed not in pin:
        pytest.skip(f"onnxruntime-gpu {installed} here, the images pin {pin}: cannot read its CUDA")
    assert installed in allowed
    from onnxruntime.capi import build_and_package_info

    built_for = build_and_package_info.cuda_version.split(".")[0]
    assert built_for == match.group(1), (
        f"onnxruntime-gpu {installed} is built for CUDA {built_for}, the image has {base}"
    )


def test_the_healthcheck_reads_the_port_the_server_binds() -> None:
    assert healthcheck.DEFAULT_PORT == DEFAULT_PORT
    assert healthcheck.PATH == "/readyz"
    assert answers(healthcheck.PATH)
    assert healthcheck.target({}) == ("127.0.0.1", DEFAULT_PORT)
    assert healthcheck.target({"FCN_HOST": "0.0.0.0", "FCN_PORT": "9001"}) == ("127.0.0.1", 9001)
    assert healthcheck.target({"FCN_HOST": "10.0.0.7"}) == ("10.0.0.7", DEFAULT_PORT)


def test_gpu_image_is_built_on_cuda_with_cudnn() -> None:
    base = next(
        rest for instruction, rest in dockerfile(SERVICE_DOCKERFILES[0]) if instruction == "FROM"
    )
    assert base.startswith("nvidia/cuda:")
    assert "cudnn" in base
    assert "runtime" in base


def test_training_image_installs_torch_and_the_fcn_command() -> None:
    pairs = dockerfile("docker/train.Dockerfile")
    runs = " ".join(rest for instruction, rest in pairs if instruction == "RUN")
    assert "'.[train]'" in runs
    assert [rest for instruction, rest in pairs if instruction == "USER"][-1] != "root"


def test_dockerignore_keeps_what_the_images_copy() -> None:
    patterns = (ROOT / ".dockerignore").read_text().split()
    for name in DOCKERFILES:
        for instruction, rest in dockerfile(name):
            if instruction == "COPY":
                source = shlex.split(rest)[0].rstrip("/")
                assert f"!{source}" in patterns or f"!{source}/" in patterns, (name, source)


def test_compose_serves_on_8000_with_a_gpu_reservation_and_a_cpu_profile() -> None:
    services = compose()["services"]
    gpu, cpu = services["fcn"], services["fcn-cpu"]
    assert "profiles" not in gpu  # plain `docker compose up` starts it
    assert cpu["profiles"] == ["cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]

    for name, service in services.items():
        published, target = service["ports"][0].rsplit(":", 1)
        assert target == str(DEFAULT_PORT), name
        assert published.endswith("8000}") or published == "8000", name
        assert service["restart"] in ("unless-stopped", "always", "on-failure")
        assert any(v.endswith(":/models:ro") for v in service["volumes"]), name
        assert service["healthcheck"]["test"] == ["CMD", *HEALTHCHECK], name
        assert service["platform"] == "linux/amd64", name
        dockerfile_env = env_of(dockerfile(service["build"]["dockerfile"]))
        assert service["image"].startswith("fcn-service:")
        # Every variable passed through is a real setting.
        assert set(service["environment"]) <= SETTINGS, name
        model_default = service["environment"]["FCN_MODEL_PATH"]
        assert dockerfile_env["FCN_MODEL_PATH"] in model_default
    # A GPU is reserved, so a missing one must fail the start, not fall back to the CPU.
    assert gpu["environment"]["FCN_REQUIRE_GPU"] == "${FCN_REQUIRE_GPU:-true}"


def test_every_fcn_variable_named_anywhere_is_a_real_setting() -> None:
    files = [
        ROOT / "docker-compose.yml",
        PRETRAINED_COMPOSE,
        *(ROOT / name for name in DOCKERFILES),
        *sorted(K8S.glob("*.yaml")),
    ]
    zoo = {PRETRAINED_COMPOSE, ROOT / PRETRAINED_DOCKERFILE}
    for path in files:
        named = set(ENV_REFERENCE.findall(path.read_text())) - COMPOSE_ONLY
        if path in zoo:
            named -= ZOO_VARIABLES
        assert named <= SETTINGS, (path.name, sorted(named - SETTINGS))
    assert MIRROR_VARIABLE in ZOO_VARIABLES
    # The service lets exactly these through its check of unknown FCN_* variables.
    assert COMPOSE_ONLY | ZOO_VARIABLES == OTHER_VARIABLES


def test_the_pretrained_overlay_fetches_once_then_serves_that_file() -> None:
    base, overlay = compose()["services"], compose(PRETRAINED_COMPOSE)["services"]
    step = overlay.pop("pretrained")
    assert set(overlay) == set(base)  # it changes every service, and adds only the step
    assert (ROOT / step["build"]["dockerfile"]).is_file()
    assert step["restart"] == "no"  # a step that ends, not a service
    # Its command is one the fcn parser takes, with the name compose requires to be set.
    command = [str(part) for part in step["command"]]
    name = "${FCN_PRETRAINED:?"
    assert command[2].startswith(name)
    args = build_parser(command[1:]).parse_args([*command[1:2], "voc-fcn8s", *command[3:]])
    assert (args.command, args.name) == ("pretrained", "voc-fcn8s")
    written = model_path("${FCN_PRETRAINED}", args.out)
    volumes = dict(v.split(":", 1) for v in step["volumes"])
    assert volumes["pretrained"] == str(args.out)
    pairs = dockerfile(step["build"]["dockerfile"])
    assert volumes["pretrained-cache"] == env_of(pairs)["FCN_CACHE"]
    for label, service in overlay.items():
        assert service["depends_on"]["pretrained"]["condition"] == (
            "service_completed_successfully"
        ), label
        assert f"pretrained:{args.out}:ro" in service["volumes"], label
        assert service["environment"]["FCN_MODEL_PATH"] == str(written), label
    assert set(compose(PRETRAINED_COMPOSE)["volumes"]) == set(volumes)


def test_the_pretrained_image_converts_on_cpu_torch_as_a_user_that_owns_its_volumes() -> None:
    pairs = dockerfile(PRETRAINED_DOCKERFILE)
    runs = " ".join(rest for instruction, rest in pairs if instruction == "RUN")
    assert "download.pytorch.org/whl/cpu" in runs
    assert "'.[train]'" in runs
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {r.split(">", 1)[0]: r for r in extra["optional-dependencies"]["train"]}
    assert f"'{bounds['torch']}'" in runs  # the bounds pyproject.toml allows, no others
    assert f"'{bounds['torchvision']}'" in runs
    assert [rest for instruction, rest in pairs if instruction == "USER"][-1] == "fcn"
    (volume,) = [rest for instruction, rest in pairs if instruction == "VOLUME"]
    for folder in yaml.safe_load(volume):
        assert re.search(rf"mkdir -p [^&]*{folder}\b", runs), folder
        assert re.search(rf"chown fcn [^&]*{folder}\b", runs), folder


def test_make_serve_with_a_model_name_makes_the_file_it_then_serves(tmp_path: Path) -> None:
    """``make serve MODEL=NAME`` (dry run): ``fcn pretrained NAME --out DIR``, then the
    service on the very file that command writes."""
    made = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "serve", "MODEL=voc-fcn8s", f"VENV={tmp_path}/venv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    fetch = next(shlex.split(line) for line in made if " pretrained " in line)
    args = build_parser(fetch[1:]).parse_args(fetch[1:])
    assert (args.command, args.name) == ("pretrained", "voc-fcn8s")
    serve = next(shlex.split(line) for line in made if line.rstrip().endswith("fcn-serve"))
    assert serve[0] == f"FCN_MODEL_PATH={model_path('voc-fcn8s', args.out)}"
    # Without MODEL, the demo, as README's first command says.
    plain = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "serve", f"VENV={tmp_path}/venv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert " pretrained " not in plain
    assert "models/demo/fcn8s.onnx" in plain
