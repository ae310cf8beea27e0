"""docker-compose.yml, Dockerfile, .env.example and the Makefile's Docker targets,
checked as text (CI has no Docker engine).  The same topology runs without Docker in
test_postgres.py::test_three_search_processes_and_the_dashboard_on_one_database."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from lenet_hpo.cli import build_parser, dashboard_command

ROOT = Path(__file__).resolve().parents[1]
VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(node, env):
    """Compose's variable substitution: ${X}, ${X:-default}, ${X-default}, ${X:?error}, $$."""

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?") and not value:
            raise KeyError(f"{name}: {arg}")
        return value or ""

    if isinstance(node, str):
        return VAR.sub(sub, node)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def env_example():
    pairs = (
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module", params=["defaults", ".env.example"])
def compose(raw, request):
    """The file as Compose sees it: with only a password set, and with .env.example."""
    env = {"POSTGRES_PASSWORD": "pw"} if request.param == "defaults" else env_example()
    return interpolate(raw, env)


def host_ports(service):
    """(host address, host port, container port) of each published port."""
    out = []
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        assert len(parts) == 3, f"{spec!r}: publish as ADDRESS:HOST_PORT:CONTAINER_PORT so the address is explicit"
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def test_services_and_no_password_default(raw, compose):
    assert set(compose["services"]) == {"postgres", "worker", "dashboard"}
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {})  # no built-in password: it must come from .env


def test_postgres_is_pinned_healthchecked_persistent_and_loopback_only(compose):
    pg = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+\.\d+[\w.-]*", pg["image"]), "pin the PostgreSQL image to a minor version"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    volume = pg["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in compose["volumes"]  # a named volume
    assert [addr for addr, _, _ in host_ports(pg)] == ["127.0.0.1"]


def test_workers_wait_for_a_healthy_database_and_search_with_the_storage_from_env(compose):
    worker = compose["services"]["worker"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in worker and "container_name" not in worker  # or --scale could not start several
    command = worker["command"]
    assert command[0] == "search" and "--storage" not in command
    args = build_parser().parse_args(command)  # a valid command line for our CLI
    assert args.workers == 1 and args.threads >= 1
    storage = worker["environment"]["LENET_HPO_STORAGE"]
    assert storage.startswith("postgresql+psycopg://") and "@postgres:5432/" in storage
    assert worker["init"] is True and worker["stop_grace_period"]  # SIGTERM reaches search; time to fail its trial


def test_dashboard_reads_the_same_database_and_is_published_on_loopback(compose):
    dash = compose["services"]["dashboard"]
    worker = compose["services"]["worker"]
    assert dash["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert dash["environment"]["LENET_HPO_STORAGE"] == worker["environment"]["LENET_HPO_STORAGE"]
    args = build_parser().parse_args(dash["command"])
    assert args.command == "dashboard" and args.func is dashboard_command and args.storage is None
    ((addr, _, container_port),) = host_ports(dash)
    # inside its container it must listen beyond loopback for Docker to forward to it;
    # on the host it is reachable from this machine only
    assert addr == "127.0.0.1" and container_port == args.port


def test_env_example_sets_every_variable_and_dot_env_stays_out_of_git(raw):
    used = {m.group(1) for m in VAR.finditer((ROOT / "docker-compose.yml").read_text()) if m.group(1)}
    assert used <= set(env_example()), used - set(env_example())
    assert env_example()["POSTGRES_BIND"] == "127.0.0.1"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


def test_dockerfile_cpu_torch_pinned_like_the_makefile_and_not_root():
    text = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert text.startswith("#") and "\nFROM python:3.11-slim\n" in text
    assert "download.pytorch.org/whl/cpu" in text
    for name in ("TORCH_VERSION", "TORCHVISION_VERSION"):
        pinned = re.search(rf"^{name} \?= (\S+)$", makefile, re.M).group(1)
        assert f"ARG {name}={pinned}\n" in text
    assert re.search(r"^USER (?!root)\w+$", text, re.M)
    assert 'ENTRYPOINT ["python", "-m", "lenet_hpo"]' in text


def test_make_help_lists_the_docker_targets():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # colours
    for target in ("up", "db", "scale", "logs", "down"):
        assert re.search(rf"\b{target}\b.*Docker", out), target
