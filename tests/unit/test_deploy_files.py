"""The deployment files under docker/, checked by parsing: no Docker engine, cluster,
Prometheus or Grafana is needed (promtool and kubectl are used when on PATH).

Besides syntax, the files are checked against the code they deploy: every container
command against its Procfile line, environment names against config.settings, PromQL
against the metric families of celeriac.observability.metrics, the KEDA triggers against the Redis
lists kombu really uses for the Celery queues.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kombu.transport.redis import Channel
from prometheus_client import CollectorRegistry
from pydantic import AliasChoices

from app.exporter import build_app, protected
from celeriac.execution.priority import QUEUES
from celeriac.observability import metrics
from celeriac.store.schema import TERMINAL_STATUSES
from config.celery import native_priorities
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
PROMETHEUS = DOCKER / "prometheus"
GRAFANA = DOCKER / "grafana"

# Compose services that run the Celeriac image, and the rest of the stack.
CELERIAC_SERVICES = {"web", "worker", "beat", "flower", "exporter", "simulator", "autoscaler"}
REQUIRED_SERVICES = CELERIAC_SERVICES | {"redis", "postgres", "prometheus", "grafana"}
K8S_PROCESSES = {"web", "worker", "beat", "flower", "exporter", "simulator"}
# Environment variables read by something other than config.settings.
OTHER_ENV = {
    "FLOWER_BASIC_AUTH",  # Flower reads FLOWER_* options itself
    "REDIS_ADDRESS",  # host:port for the KEDA redis scaler
    "REDIS_PASSWORD",  # password for the KEDA redis scaler
    # Read by Flower's config file, config/flowerconfig.py.
    *re.findall(
        r'os\.environ\.get\("([A-Z_]+)"',
        (Path(__file__).resolve().parents[2] / "config" / "flowerconfig.py").read_text(),
    ),
}
LISTEN_ALL = "0.0.0.0"


# --- helpers: files -------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[Any]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} holds no YAML document"
    return docs


def load_yaml(path: Path) -> Any:
    docs = load_yaml_documents(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def yaml_files() -> list[Path]:
    return sorted([*DOCKER.rglob("*.yaml"), *DOCKER.rglob("*.yml")])


def compose() -> dict[str, Any]:
    return load_yaml(DOCKER / "compose.yaml")  # type: ignore[no-any-return]


def compose_services() -> dict[str, Any]:
    return compose()["services"]  # type: ignore[no-any-return]


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(load_yaml_documents(path))
    return docs


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == kind}


def k8s_deployment(process: str) -> dict[str, Any]:
    return k8s_objects("Deployment")[f"celeriac-{process}"]


def only_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]  # type: ignore[no-any-return]


# --- helpers: commands ----------------------------------------------------------------

_DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")


def expand_defaults(text: str) -> str:
    """``${NAME:-default}`` becomes ``default``, as the shell (Procfile) and Compose
    interpolation do when NAME is unset. Any other ``$`` is left for the check below."""
    expanded = _DEFAULTED.sub(r"\1", text)
    assert "$" not in expanded, f"unexpected variable in {text!r}"
    return expanded


def procfile() -> dict[str, list[str]]:
    processes: dict[str, list[str]] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, command = line.partition(":")
        processes[name.strip()] = shlex.split(expand_defaults(command))
    assert processes, "empty Procfile"
    return processes


@dataclass(frozen=True)
class Command:
    program: str
    positionals: tuple[str, ...]
    options: dict[str, str | None]


def _is_option(token: str) -> bool:
    return token.startswith("-") and token != "-"


def parse_command(argv: list[str]) -> Command:
    """Splits argv into program, positional arguments and options. An option takes
    the next token as its value unless that is another option (``-`` is a value)."""
    assert isinstance(argv, list) and argv, f"expected an exec-form command, got {argv!r}"
    args = [expand_defaults(str(a)) for a in argv]
    positionals: list[str] = []
    options: dict[str, str | None] = {}
    i = 1
    while i < len(args):
        token = args[i]
        if not _is_option(token):
            positionals.append(token)
        else:
            if token.startswith("--") and "=" in token:
                key, value = token.split("=", 1)
            elif i + 1 < len(args) and not _is_option(args[i + 1]):
                key, value = token, args[i + 1]
                i += 1
            else:
                key, value = token, None
            assert key not in options, f"option {key} given twice in {argv}"
            options[key] = value
        i += 1
    return Command(args[0], tuple(positionals), options)


def assert_matches_procfile(process: str, argv: list[str], where: str) -> None:
    """A container runs the Procfile's command with the same program, arguments and
    options. Only these may differ: the listen address (all interfaces), the worker's
    node name (still unique per host) and beat's schedule file (in /tmp)."""
    expected = parse_command(procfile()[process])
    actual = parse_command(argv)
    label = f"{where}: {process}"
    assert actual.program == expected.program, label
    assert actual.positionals == expected.positionals, label
    assert set(actual.options) == set(expected.options), (
        f"{label}: options {sorted(actual.options)} != Procfile {sorted(expected.options)}"
    )
    for key, want in expected.options.items():
        got = actual.options[key]
        if key == "--bind":
            assert want is not None and got is not None, label
            assert got.rpartition(":")[::2] == (LISTEN_ALL, want.rpartition(":")[2]), (
                f"{label}: --bind {got} should be {LISTEN_ALL}:<Procfile port>"
            )
        elif key in ("--host", "--address"):
            assert got == LISTEN_ALL, f"{label}: {key} {got}"
        elif key == "-n":
            assert got is not None and got.endswith("@%h"), f"{label}: node name {got}"
        elif key == "--schedule":
            assert got is not None and got.startswith("/tmp/"), f"{label}: schedule {got}"
        else:
            assert got == want, f"{label}: {key} {got!r} != Procfile {want!r}"


# --- helpers: environment -------------------------------------------------------------


def settings_env_names() -> set[str]:
    names: set[str] = set()
    prefix = str(Settings.model_config.get("env_prefix", ""))
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(c for c in alias.choices if isinstance(c, str) and c.isupper())
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add((prefix + field_name).upper())
    return names


def assert_known_env(names: Any, where: str) -> None:
    unknown = set(names) - settings_env_names() - OTHER_ENV
    assert not unknown, f"{where}: variables nothing reads (typos?): {sorted(unknown)}"


def settings_from(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in settings_env_names() | OTHER_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if value is not None:  # None: Compose passes the host's value through
            monkeypatch.setenv(name, expand_defaults(str(value)))
    return Settings()


# --- helpers: PromQL ------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
             "and", "or", "unless", "bool", "offset"}
_IDENT = r"[A-Za-z_:][A-Za-z0-9_:]*"


def metric_labels() -> dict[str, tuple[str, ...]]:
    """Every series name the exporter serves, with its label names."""
    series: dict[str, tuple[str, ...]] = {}
    for family in metrics.COUNTERS:
        series[family.name] = family.labels
    for family in metrics.HISTOGRAMS:
        series[f"{family.name}_bucket"] = (*family.labels, "le")
        series[f"{family.name}_sum"] = family.labels
        series[f"{family.name}_count"] = family.labels
    return series


def promql_metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    found = re.finditer(rf"(?<![\w.$]){_IDENT}(\s*\()?", text)
    return {m.group(0) for m in found if not m.group(1) and m.group(0) not in _KEYWORDS}


def promql_grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    return labels


def promql_matchers(expr: str) -> Iterator[tuple[str, str, str, str]]:
    """(metric, label, operator, value) for every matcher written after a metric name."""
    for metric, body in re.findall(rf"({_IDENT})\s*\{{([^}}]*)\}}", expr):
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            yield metric, label, op, value


def assert_promql_uses_known_series(expr: str, allowed_extra: set[str], where: str) -> None:
    known = metric_labels()
    names = promql_metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - set(known) - allowed_extra
    assert not unknown, f"{where}: unknown metrics {sorted(unknown)} in {expr!r}"
    exported = names & set(known)
    available = {label for name in exported for label in known[name]}
    for metric, label, _op, value in promql_matchers(expr):
        if metric in known:
            assert label in known[metric], f"{where}: {metric} has no label {label!r}"
        if metric == "agent_requests_total" and label == "status":
            assert value in TERMINAL_STATUSES, f"{where}: no run ends as {value!r}"
    if exported and names <= set(known):
        grouping = promql_grouping_labels(expr)
        assert grouping <= available, (
            f"{where}: grouping by {sorted(grouping - available)}, not labels of {sorted(names)}"
        )


def alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(PROMETHEUS / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def planned_metric_names() -> set[str]:
    """celeriac_* series documented by the alert rules before the exporter serves them."""
    names: set[str] = set()
    for rule in alert_rules():
        names |= {n for n in promql_metric_names(rule["expr"]) if n.startswith("celeriac_")}
    return names


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "celeriac.json").read_text())  # type: ignore[no-any-return]


def dashboard_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


# --- helpers: Dockerfile --------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def dockerfile_global_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, value in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in value:
            name, _, default = value.partition("=")
            args[name] = default
    return args


def dockerfile_user_id() -> int:
    users = [args for keyword, args in dockerfile_stages()[-1] if keyword == "USER"]
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user}: use a numeric uid so runAsNonRoot can verify it"
    return int(user)


def copy_sources(args: str) -> list[str]:
    parts = [p for p in shlex.split(args) if not p.startswith("--")]
    return parts[:-1]


# --- every file parses ----------------------------------------------------------------


def test_docker_dir_has_the_expected_files() -> None:
    for relative in (
        "Dockerfile", "compose.yaml", "README.md", "prometheus/prometheus.yml",
        "prometheus/alerts.yml", "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/celeriac.yaml", "grafana/dashboards/celeriac.json",
    ):
        assert (DOCKER / relative).is_file(), relative
    assert list(K8S.glob("*.yaml")), "no Kubernetes manifests"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DOCKER)))
def test_yaml_file_parses(path: Path) -> None:
    for doc in load_yaml_documents(path):
        assert isinstance(doc, dict), f"{path}: top level is {type(doc).__name__}"


def test_grafana_dashboard_json_parses() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    assert board["schemaVersion"] >= 36
    assert board["panels"]


# --- the command checks themselves ----------------------------------------------------


def test_procfile_defaults_are_expanded() -> None:
    worker = parse_command(procfile()["worker"])
    assert worker.options["--pool"] == "threads"
    assert worker.options["--concurrency"] == "16"


@pytest.mark.parametrize(
    ("process", "argv"),
    [
        ("worker", ["celery", "-A", "tasks", "worker", "-Q", "high,default", "--pool", "threads",
                    "--concurrency", "16", "--loglevel", "INFO", "-n", "worker@%h"]),
        ("worker", ["celery", "-A", "tasks", "worker", "-Q", "high,default,low",
                    "--concurrency", "16", "--loglevel", "INFO", "-n", "worker@%h"]),
        ("exporter", ["python", "-m", "app.exporterx", "--host", "0.0.0.0", "--port", "9808"]),
        ("exporter", ["python", "-m", "app.exporter", "--host", "127.0.0.1", "--port", "9808"]),
        ("web", ["gunicorn", "--bind", "0.0.0.0:8080", "--worker-class", "gthread", "--workers",
                 "2", "--threads", "32", "--timeout", "120", "--access-logfile", "-",
                 "app:create_app()"]),
        ("web", "gunicorn --bind 0.0.0.0:8000 app:create_app()"),
        ("web", ["gunicorn", "-c", "python:config.gunicornx", "--bind", "0.0.0.0:8000",
                 "app:create_app()"]),
    ],
)
def test_command_check_rejects_drift(process: str, argv: Any) -> None:
    with pytest.raises(AssertionError):
        assert_matches_procfile(process, argv, "example")


def test_promql_helpers() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(x_bucket{a="b"}[$__rate_interval])))'
            " / on (model) group_left sum(y_total offset 5m) > 1e-9")
    assert promql_metric_names(expr) == {"x_bucket", "y_total"}
    assert promql_grouping_labels(expr) == {"le", "model"}
    assert list(promql_matchers(expr)) == [("x_bucket", "a", "=", "b")]
    with pytest.raises(AssertionError):
        assert_promql_uses_known_series("rate(agent_request_total[5m])", set(), "typo")
    with pytest.raises(AssertionError):
        assert_promql_uses_known_series(
            "sum by (tool) (rate(agent_tool_calls_total[5m]))", set(), "wrong label"
        )
    with pytest.raises(AssertionError):
        assert_promql_uses_known_series(
            'rate(agent_requests_total{status="succeeded"}[5m])', set(), "no such status"
        )


# --- Dockerfile -----------------------------------------------------------------------


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    assert dockerfile_user_id() != 0
    builder_runs = " ".join(args for keyword, args in stages[0] if keyword == "RUN")
    assert re.search(r"pip install (\S+ )*'?\.(\[[a-z,]+\])?'?(\s|$)", builder_runs), (
        "builder must pip install . (with extras or not)"
    )


def test_dockerfile_runtime_stage() -> None:
    final = dockerfile_stages()[-1]
    base = final[0][1].split()[0]
    for name, value in dockerfile_global_args().items():
        base = base.replace(f"${{{name}}}", value)
    assert base == "python:3.11-slim"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11", "pyproject's Python changed: update the Dockerfile's base"

    instructions = dict.fromkeys(keyword for keyword, _ in final)
    assert "HEALTHCHECK" in instructions
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    exposed = {args for keyword, args in final if keyword == "EXPOSE"}
    assert "8000" in exposed

    copied = set()
    for keyword, args in final:
        if keyword == "COPY" and "--from=" not in args:
            copied |= {PurePosixPath(src).as_posix().rstrip("/") for src in copy_sources(args)}
    assert {"app", "tasks", "celeriac", "config", "Procfile"} <= copied
    assert any(k == "COPY" and "--from=builder" in a and "/opt/venv" in a for k, a in final)

    healthcheck = next(args for keyword, args in final if keyword == "HEALTHCHECK")
    assert "/healthz" in healthcheck and ":8000" in healthcheck


def test_dockerfile_copies_what_the_build_needs() -> None:
    """Every COPY source exists and is not excluded by the build's ignore file, and
    the builder copies every package pyproject.toml installs."""
    ignore_file = DOCKER / "Dockerfile.dockerignore"
    ignored = set()
    if ignore_file.exists():
        ignored = {line.strip().rstrip("/") for line in ignore_file.read_text().splitlines()
                   if line.strip() and not line.startswith("#")}
    for stage in dockerfile_stages():
        for keyword, args in stage:
            if keyword == "COPY" and "--from=" not in args:
                for src in copy_sources(args):
                    assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                    top = PurePosixPath(src).parts[0]
                    assert top not in ignored, f"COPY {src}: excluded by {ignore_file.name}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in includes}
    builder_copied = {
        PurePosixPath(src).parts[0]
        for keyword, args in dockerfile_stages()[0] if keyword == "COPY"
        for src in copy_sources(args)
    }
    assert packages | {"pyproject.toml"} <= builder_copied


def test_dockerfile_default_command_is_the_procfile_web() -> None:
    cmds = [args for keyword, args in dockerfile_stages()[-1] if keyword == "CMD"]
    assert cmds, "no CMD"
    argv = json.loads(cmds[-1])  # exec form: signals reach gunicorn directly
    assert_matches_procfile("web", argv, "Dockerfile CMD")
    assert "app:create_app()" in argv


# --- Compose --------------------------------------------------------------------------


def test_compose_has_every_service() -> None:
    missing = REQUIRED_SERVICES - set(compose_services())
    assert not missing, f"compose.yaml lacks {sorted(missing)}"


def test_compose_commands_match_the_procfile() -> None:
    services = compose_services()
    for process in procfile():
        assert process in services, f"Procfile process {process!r} has no Compose service"
        assert_matches_procfile(process, services[process]["command"], "compose.yaml")


def test_compose_key_arguments() -> None:
    services = compose_services()
    worker = parse_command(services["worker"]["command"])
    assert worker.positionals == ("worker",)
    assert worker.options["-Q"] == ",".join(QUEUES)
    assert parse_command(services["exporter"]["command"]).options["-m"] == "app.exporter"
    assert "app:create_app()" in parse_command(services["web"]["command"]).positionals
    assert services["web"]["command"][0] == "gunicorn"
    autoscaler = services["autoscaler"]
    assert autoscaler["command"] == ["python", "-m", "app.autoscaler"]
    assert autoscaler["profiles"] == ["autoscaler"], "default `up` must not need the autoscaler"
    assert "profiles" not in services["worker"]


def test_compose_celeriac_services_build_this_image() -> None:
    for name in CELERIAC_SERVICES:
        build = compose_services()[name]["build"]
        assert (DOCKER / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).resolve() == DOCKER / "Dockerfile", name


def test_compose_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose_services()
    for name in CELERIAC_SERVICES:
        env = services[name]["environment"]
        assert isinstance(env, dict), f"{name}: use the map form so the anchor merges"
        assert_known_env(env, f"compose {name}")
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["DATABASE_URL"] == "postgresql://celeriac:celeriac@postgres:5432/celeriac", name
        assert env["CELERIAC_SIMULATOR_URL"] == "http://simulator:8765", name
        assert str(env["CELERIAC_DEV_MODE"]) == "0", name
    # The URLs point at the services that serve them.
    simulator = parse_command(services["simulator"]["command"])
    assert simulator.options["--port"] == "8765"
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes", "Redis needs AOF"
    postgres_env = services["postgres"]["environment"]
    assert (postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"],
            postgres_env["POSTGRES_DB"]) == ("celeriac", "celeriac", "celeriac")
    # And config.settings accepts them as they are when nothing is set on the host.
    settings = settings_from(services["web"]["environment"], monkeypatch)
    assert settings.simulated
    assert settings.simulator_url == "http://simulator:8765"
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.dev_mode is False


def _has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False)
    # Without its own, a Celeriac container inherits the image's HEALTHCHECK.
    return "build" in service


def test_compose_dependencies() -> None:
    services = compose_services()
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            if spec["condition"] == "service_healthy":
                assert _has_healthcheck(services[target]), f"{name} waits on {target}'s health"
    for name in ("web", "worker"):
        for dependency in ("redis", "postgres"):
            assert services[name]["depends_on"][dependency]["condition"] == "service_healthy"


def test_compose_volumes() -> None:
    doc = compose()
    declared = set(doc.get("volumes") or {})
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    assert any(v.endswith(":/data") for v in doc["services"]["redis"]["volumes"])


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file in docker/ that a bind mount puts at container_path."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(".") and (
            container_path == target or container_path.startswith(target.rstrip("/") + "/")
        ):
            return DOCKER / source / container_path[len(target):].lstrip("/")
    raise AssertionError(f"nothing is mounted at {container_path}")


def test_compose_monitoring_wiring() -> None:
    services = compose_services()
    prometheus = services["prometheus"]
    config = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = _host_path(prometheus, config.split("=", 1)[1])
    assert config_path.resolve() == (PROMETHEUS / "prometheus.yml").resolve()

    grafana = services["grafana"]
    assert _host_path(grafana, "/etc/grafana/provisioning/datasources").is_dir()
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "celeriac.yaml")
    path = provider["providers"][0]["options"]["path"]
    assert (_host_path(grafana, path) / "celeriac.json").is_file()
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert _host_path(grafana, home).is_file()

    datasource = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    url = datasource["datasources"][0]["url"]
    assert re.fullmatch(r"http://prometheus:9090/?", url)


# --- Prometheus -----------------------------------------------------------------------


def test_prometheus_scrapes_exporter_and_flower() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert "alerts.yml" in config["rule_files"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()
    targets: dict[str, str] = {}
    for job in config["scrape_configs"]:
        interval = job.get("scrape_interval", config["global"]["scrape_interval"])
        assert interval == "15s", job["job_name"]
        for static in job["static_configs"]:
            for target in static["targets"]:
                targets[target] = job.get("metrics_path", "/metrics")
    services = compose_services()
    exporter_port = parse_command(services["exporter"]["command"]).options["--port"]
    assert exporter_port == "9808"
    assert targets.get(f"exporter:{exporter_port}") == "/metrics"
    flower_port = parse_command(services["flower"]["command"]).options.get("--port", "5555")
    assert targets.get(f"flower:{flower_port}") == "/metrics"
    for target in targets:
        assert target.split(":")[0] in services, f"{target}: no such Compose service"


def test_alert_rules() -> None:
    doc = load_yaml(PROMETHEUS / "alerts.yml")
    assert doc["groups"]
    names = []
    for group in doc["groups"]:
        assert group["name"] and group["rules"], group.get("name")
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels",
                                 "annotations"}, rule.get("alert")
            assert isinstance(rule["alert"], str) and rule["alert"]
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}
            names.append(rule["alert"])
    assert len(names) == len(set(names)), "duplicate alert names"

    exprs = " ".join(rule["expr"] for rule in alert_rules())
    for needed in ('agent_requests_total{status="failed"}', "agent_latency_seconds_bucket",
                   'agent_provider_calls_total{outcome!="completed"}', "celeriac_circuit_state",
                   "celeriac_queue_depth", "celeriac_queue_oldest_age_seconds",
                   "celeriac_budget_remaining_usd"):
        assert needed in exprs, f"no alert on {needed}"


def test_alert_rules_use_real_or_documented_metrics() -> None:
    planned = planned_metric_names()
    assert planned, "no celeriac_* metric documented in alerts.yml"
    for rule in alert_rules():
        assert_promql_uses_known_series(rule["expr"], planned, rule["alert"])


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not on PATH")
    return path


def _run(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_rules_and_config(tmp_path: Path) -> None:
    promtool = _promtool()
    _run([promtool, "check", "rules", "alerts.yml"], PROMETHEUS)
    # promtool opens every credentials_file, and the token file exists only inside
    # the Prometheus container: check a copy that points at a file here instead.
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    for job in config["scrape_configs"]:
        if "credentials_file" in job.get("authorization", {}):
            token = tmp_path / f"{job['job_name']}.token"
            token.write_text("example-token\n")
            job["authorization"]["credentials_file"] = str(token)
    for rule_file in config["rule_files"]:
        shutil.copy(PROMETHEUS / rule_file, tmp_path / rule_file)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    _run([promtool, "check", "config", "prometheus.yml"], tmp_path)
    if (PROMETHEUS / "alerts.test.yml").exists():
        _run([promtool, "test", "rules", "alerts.test.yml"], PROMETHEUS)


def test_promtool_parses_dashboard_queries(tmp_path: Path) -> None:
    promtool = _promtool()
    rules = []
    for i, (_panel, target) in enumerate(dashboard_targets()):
        expr = target["expr"].replace("$__rate_interval", "1m").replace("$__range", "1d")
        rules.append({"record": f"celeriac:dashboard_query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run([promtool, "check", "rules", str(path)], tmp_path)


# --- Grafana --------------------------------------------------------------------------


def test_grafana_provisioning() -> None:
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["uid"]
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "celeriac.yaml")
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_grafana_panels_are_well_formed() -> None:
    uid = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")[
        "datasources"][0]["uid"]
    ids = []
    for panel in dashboard()["panels"]:
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0 and grid["y"] >= 0, panel["title"]
        assert panel["datasource"]["uid"] == uid, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


def test_grafana_queries_use_exported_metrics() -> None:
    planned = planned_metric_names()
    known = metric_labels()
    for panel, target in dashboard_targets():
        where = f"panel {panel['title']!r} {target['refId']}"
        expr = target["expr"]
        assert_promql_uses_known_series(expr, planned, where)
        names = promql_metric_names(expr)
        grouping = promql_grouping_labels(expr)
        shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        available = grouping or {label for n in names if n in known for label in known[n]}
        assert shown <= available, f"{where}: legend shows {sorted(shown - available)}"


def test_grafana_dashboard_covers_the_overview() -> None:
    panels = dashboard()["panels"]
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    everything = " ".join(exprs.values())
    for needed in ('agent_requests_total{status="completed"}',
                   'agent_requests_total{status="failed"}', "agent_latency_seconds_sum",
                   "agent_latency_seconds_count",
                   "increase(agent_cost_usd_sum[24h])", "agent_latency_seconds_bucket",
                   "agent_tool_calls_total", "agent_provider_calls_total",
                   "agent_provider_tokens_total"):
        assert needed in everything, f"no panel queries {needed}"
    pies = [p for p in panels if p["type"] == "piechart"]
    assert any("tool_name" in exprs[p["title"]] for p in pies), "no tool usage pie chart"
    assert any(p["type"] == "heatmap" for p in panels) or "histogram_quantile" in everything


# --- Kubernetes -----------------------------------------------------------------------


def test_k8s_documents_have_identity() -> None:
    docs = k8s_documents()
    assert docs
    seen = set()
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), doc
        name = doc.get("metadata", {}).get("name")
        assert name, f"{doc['kind']} without metadata.name"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "celeriac", f"{doc['kind']}/{name}"
        key = (doc["kind"], name)
        assert key not in seen, f"{key} defined twice"
        seen.add(key)
    kinds = {doc["kind"] for doc in docs}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "ScaledObject"} <= kinds


def test_k8s_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_k8s_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(result.stdout) if d}
    assert built == {(d["kind"], d["metadata"]["name"]) for d in k8s_documents()}


def _effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    return container.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


def test_k8s_deployments_run_non_root() -> None:
    uid = dockerfile_user_id()
    deployments = k8s_objects("Deployment")
    assert {f"celeriac-{p}" for p in K8S_PROCESSES} <= set(deployments)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            assert container.get("image"), where
            assert _effective(pod, container, "runAsNonRoot") is True, where
            assert _effective(pod, container, "runAsUser") == uid, f"{where}: uid != image's"
            assert _effective(pod, container, "allowPrivilegeEscalation") is False, where
            if _effective(pod, container, "readOnlyRootFilesystem"):
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"
                assert "emptyDir" in volumes[mounts["/tmp"]], where


def test_k8s_deployment_shapes() -> None:
    deployments = k8s_objects("Deployment")
    config_maps, secrets = k8s_objects("ConfigMap"), k8s_objects("Secret")
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        for container in spec["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, name
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, name

    web = k8s_deployment("web")
    assert web["spec"]["replicas"] == 2
    container = only_container(web)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]

    worker = k8s_deployment("worker")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 300
    # KEDA owns the worker count; a replicas field would be reset by every apply.
    assert "replicas" not in worker["spec"]

    beat = k8s_deployment("beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate", "two beats would double every schedule"


def test_k8s_commands_match_the_procfile() -> None:
    processes = procfile()
    for process in K8S_PROCESSES:
        assert process in processes, f"{process} is deployed but not in the Procfile"
        container = only_container(k8s_deployment(process))
        assert container["name"] == process
        assert "args" not in container, "put the whole command in command:"
        assert_matches_procfile(process, container["command"], "k8s")
    worker = parse_command(only_container(k8s_deployment("worker"))["command"])
    assert worker.options["-Q"] == ",".join(QUEUES)


def test_k8s_services_reach_their_pods() -> None:
    deployments = k8s_objects("Deployment")
    services = k8s_objects("Service")
    assert {f"celeriac-{p}" for p in ("web", "flower", "exporter", "simulator")} <= set(services)
    for name, service in services.items():
        selector = service["spec"]["selector"]
        matches = [d for d in deployments.values()
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} Deployments"
        ports = {p.get("name"): p["containerPort"]
                 for c in matches[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"{name}: {target}"


def test_k8s_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    config = k8s_objects("ConfigMap")["celeriac-config"]["data"]
    secret = k8s_objects("Secret")["celeriac-secrets"]
    secret_data = secret.get("stringData", {})
    assert_known_env(config, "ConfigMap")
    assert_known_env(secret_data, "Secret")
    assert not set(config) & set(secret_data)
    for key in ("REDIS_URL", "DATABASE_URL", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        assert secret_data.get(key) == "", f"Secret: {key} must be an empty placeholder"
    assert all(isinstance(v, str) for v in config.values()), "ConfigMap values are strings"

    # The simulator URL names the simulator Service and port.
    simulator = k8s_objects("Service")["celeriac-simulator"]
    port = simulator["spec"]["ports"][0]["port"]
    assert config["CELERIAC_SIMULATOR_URL"] == f"http://celeriac-simulator:{port}"

    # Filled in as documented, the settings validate; keys left empty stay simulated.
    filled = {**config, **secret_data, "REDIS_URL": "redis://redis.example:6379/0",
              "DATABASE_URL": "postgresql://celeriac:pw@db.example:5432/celeriac"}
    settings = settings_from(filled, monkeypatch)
    assert settings.simulated
    assert settings.broker_url is None
    assert settings.dev_mode is False


def redis_lists(queue: str) -> set[str]:
    """The Redis lists that hold a queue's messages, as kombu's Redis transport names
    them for the priorities Celeriac sends there (none, unless native_priorities says
    the broker has them; then kombu adds "<queue>\\x06\\x16<step>" lists)."""
    channel = Channel.__new__(Channel)  # class attributes and methods only, no connection
    levels = range(10) if native_priorities("redis://redis:6379/0") else [None]
    return {
        channel._q_for_pri(queue, channel._get_message_priority({"properties": {"priority": p}}))
        for p in levels
    }


def test_keda_scales_the_worker_on_every_queue_list() -> None:
    (scaled,) = k8s_objects("ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    worker = k8s_deployment("worker")
    target = spec["scaleTargetRef"]
    assert target["name"] == worker["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("envSourceContainerName", "worker") == only_container(worker)["name"]
    bounds = (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"])
    assert bounds == (1, 10, 120)

    config = k8s_objects("ConfigMap")["celeriac-config"]["data"]
    secret = k8s_objects("Secret")["celeriac-secrets"]["stringData"]
    lists = []
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
        assert meta["listLength"] == "100"
        assert meta["addressFromEnv"] in config
        if "passwordFromEnv" in meta:
            assert meta["passwordFromEnv"] in secret
        lists.append(meta["listName"])
    assert len(lists) == len(set(lists))
    expected = set().union(*(redis_lists(q) for q in QUEUES))
    assert set(lists) == expected, f"missing {sorted(expected - set(lists))!r}"
    queues = {name.split(Channel.sep)[0] for name in lists}
    assert queues == set(QUEUES) == {"high", "default", "low"}


# --- credentials outside dev mode -----------------------------------------------------
# Outside dev mode the exporter exits without CELERIAC_METRICS_TOKEN and Flower without
# FLOWER_BASIC_AUTH: a deployment that starts them without these restarts them in a loop.
# So each deployment must either refuse to start them (Compose's ${VAR:?}, a Secret
# Kubernetes waits for) or give them what the real start-up code (app.exporter,
# config/flowerconfig.py) accepts; and whatever checks or scrapes /metrics sends the token.

EXAMPLE_TOKEN = "example-metrics-token"
EXAMPLE_CREDENTIALS = {"CELERIAC_METRICS_TOKEN": EXAMPLE_TOKEN, "FLOWER_BASIC_AUTH": "u:pw"}


class ComposeRefuses(Exception):
    """Compose stops before starting anything: a ``${VAR:?message}`` is unset."""


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, host: dict[str, str]) -> str:
    """Compose's interpolation of one value against the host's variables."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        value = host.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":?", "?"):
            if missing:
                raise ComposeRefuses(f"{name}: {arg}")
            return value or ""
        if op in (":-", "-"):
            return arg if missing else value or ""
        return value or ""

    expanded = _INTERPOLATION.sub(one, text)
    assert "$" not in expanded, f"unexpected variable syntax in {text!r}"
    return expanded


def compose_env(service: str, host: dict[str, str]) -> dict[str, str]:
    """A service's container environment when Compose runs with ``host``'s variables."""
    env: dict[str, str] = {}
    for name, value in compose_services()[service]["environment"].items():
        if value is None:  # passed through from the host when set there
            if name in host:
                env[name] = host[name]
        else:
            env[name] = interpolate(str(value), host)
    return env


def _use_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings_env_names() | OTHER_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def exporter_starts(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether app.exporter's own start-up check accepts this environment (building the
    app opens no connection)."""
    _use_env(env, monkeypatch)
    try:
        build_app(Settings(), CollectorRegistry())
    except SystemExit:
        return False
    return True


def flower_starts(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether config/flowerconfig.py, executed as Flower executes it, lets Flower start."""
    _use_env(env, monkeypatch)
    try:
        runpy.run_path(str(ROOT / "config" / "flowerconfig.py"))
    except SystemExit:
        return False
    return True


STARTS = {"exporter": exporter_starts, "flower": flower_starts}


def test_credential_checks_catch_a_deployment_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checks below fail on what the deploy files once did: DEV_MODE=0 with no
    token and an empty or passed-through FLOWER_BASIC_AUTH."""
    assert not exporter_starts({"CELERIAC_DEV_MODE": "0"}, monkeypatch)
    assert not exporter_starts({"CELERIAC_DEV_MODE": "0", "CELERIAC_METRICS_TOKEN": ""},
                               monkeypatch)
    assert exporter_starts({"CELERIAC_DEV_MODE": "0", "CELERIAC_METRICS_TOKEN": "t"},
                           monkeypatch)
    assert not flower_starts({"CELERIAC_DEV_MODE": "0", "FLOWER_BASIC_AUTH": ""}, monkeypatch)
    assert flower_starts({"CELERIAC_DEV_MODE": "0", "FLOWER_BASIC_AUTH": "u:p"}, monkeypatch)
    assert interpolate("${A:-x}/${B}", {}) == "x/"
    assert interpolate("${A:?set A}", {"A": "1"}) == "1"
    with pytest.raises(ComposeRefuses):
        interpolate("${A:?set A}", {"A": ""})


@pytest.mark.parametrize("service", sorted(STARTS))
def test_compose_never_starts_monitoring_without_credentials(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = STARTS[service]
    try:
        bare = compose_env(service, {})
    except ComposeRefuses:
        pass  # Compose names the missing variable and starts nothing
    else:
        assert starts(bare, monkeypatch), (
            f"compose {service}: with nothing set on the host it would start without "
            "credentials outside dev mode, exit, and restart in a loop"
        )
    # Set as docker/README.md says, the service starts, still outside dev mode.
    filled = compose_env(service, EXAMPLE_CREDENTIALS)
    assert filled.get("CELERIAC_DEV_MODE") == "0", service
    assert starts(filled, monkeypatch), f"compose {service}: the documented variables do not do"
    raw = compose().get("services", {})[service]["environment"]
    for name in EXAMPLE_CREDENTIALS:
        if name in raw:
            assert raw[name] is None or "${" in str(raw[name]), (
                f"compose {service}: {name} is written in the file; take it from the host"
            )
    readme = (DOCKER / "README.md").read_text()
    assert all(name in readme for name in EXAMPLE_CREDENTIALS)


def _serve_protected(token: str) -> tuple[Any, int]:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, protected(app, token), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_port)


def assert_probe_sends_the_token(argv: list[str], env: dict[str, str], where: str) -> None:
    """Runs a health check or probe command against app.exporter's real bearer guard
    (on a free port instead of 9808): it passes with the container's token only."""
    assert argv[0] == "python", f"{where}: expected a python probe, got {argv!r}"
    assert "9808" in " ".join(argv), f"{where}: the probe does not reach port 9808"
    server, port = _serve_protected(EXAMPLE_TOKEN)
    try:
        command = [sys.executable, *(a.replace(":9808", f":{port}") for a in argv[1:])]
        base = {"PATH": os.environ.get("PATH", "")}

        def passes(extra: dict[str, str]) -> bool:
            result = subprocess.run(command, env={**base, **extra}, capture_output=True,
                                    timeout=60)
            return result.returncode == 0

        assert passes({**env, "CELERIAC_METRICS_TOKEN": EXAMPLE_TOKEN}), (
            f"{where}: the probe fails against /metrics with the container's token"
        )
        assert not passes({**env, "CELERIAC_METRICS_TOKEN": "wrong"}), (
            f"{where}: the probe passes without the right token: it checks nothing"
        )
    finally:
        server.shutdown()
        server.server_close()


def test_compose_exporter_healthcheck_sends_the_token() -> None:
    check = compose_services()["exporter"]["healthcheck"]
    assert not check.get("disable", False)
    test = check["test"]
    assert test[0] == "CMD", "exec form: the token stays out of a shell command line"
    env = compose_env("exporter", EXAMPLE_CREDENTIALS)
    assert env.get("CELERIAC_METRICS_TOKEN") == EXAMPLE_TOKEN, "the exporter gets no token"
    assert_probe_sends_the_token(list(test[1:]), {}, "compose exporter healthcheck")


@pytest.mark.parametrize("service", ["exporter", "flower"])
def test_prometheus_scrapes_with_the_metrics_token(service: str) -> None:
    """The exporter's and Flower's scrape jobs send a bearer token read from a file that
    Compose fills from the very variable the service's token comes from (outside dev
    mode config/flowerconfig.py guards Flower's /metrics with the exporter's token)."""
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    services = compose_services()
    # Flower's default port, when its command names none (the exporter's always does).
    port = parse_command(services[service]["command"]).options.get("--port", "5555")
    (job,) = [j for j in config["scrape_configs"]
              if any(f"{service}:{port}" in s["targets"] for s in j["static_configs"])]
    authorization = job.get("authorization")
    assert authorization, f"Prometheus would scrape {service} without its token: 401"
    assert authorization.get("type", "Bearer") == "Bearer"
    assert "credentials" not in authorization, "no token in prometheus.yml itself"
    path = PurePosixPath(authorization["credentials_file"])
    assert path.parent == PurePosixPath("/run/secrets"), path

    granted = {s if isinstance(s, str) else s["source"]: s
               for s in services["prometheus"].get("secrets", [])}
    assert path.name in granted, f"the prometheus service is not given secret {path.name}"
    entry = granted[path.name]
    assert isinstance(entry, str) or entry.get("target", path.name) == path.name
    source = compose()["secrets"][path.name]
    token_source = services[service]["environment"].get("CELERIAC_METRICS_TOKEN")
    assert token_source, f"compose {service}: no CELERIAC_METRICS_TOKEN, every scrape 401s"
    match = _INTERPOLATION.fullmatch(str(token_source))
    assert match, f"{service}'s token is not taken from a host variable: {token_source!r}"
    assert source.get("environment") == match.group(1), (
        f"secret {path.name} and {service}'s token come from different variables"
    )


def test_k8s_flower_takes_the_exporters_token() -> None:
    """Whatever scrapes both pods sends one token: Flower's comes from the same key."""

    def token_ref(process: str) -> dict[str, Any]:
        env = only_container(k8s_deployment(process)).get("env", [])
        refs = [e["valueFrom"]["secretKeyRef"] for e in env
                if e["name"] == "CELERIAC_METRICS_TOKEN" and "valueFrom" in e]
        assert refs, f"k8s {process}: no CELERIAC_METRICS_TOKEN from a Secret"
        return refs[0]  # type: ignore[no-any-return]

    flower, exporter = token_ref("flower"), token_ref("exporter")
    assert (flower["name"], flower["key"]) == (exporter["name"], exporter["key"])
    assert not flower.get("optional", False), "an optional token leaves /metrics 401"


def k8s_env(container: dict[str, Any], operator_value: str) -> dict[str, str]:
    """A container's environment as the manifests apply it. A key of a Secret the
    manifests do not declare, referenced without optional: true, gets
    ``operator_value``: Kubernetes starts no container until an operator creates it."""
    config_maps, secrets = k8s_objects("ConfigMap"), k8s_objects("Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]].get("data", {}))
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]].get("stringData", {}))
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        if ref["name"] in secrets:
            value = secrets[ref["name"]].get("stringData", {}).get(ref["key"])
            if value is not None:
                env[entry["name"]] = value
        elif not ref.get("optional", False):
            env[entry["name"]] = operator_value
    return env


@pytest.mark.parametrize("process", sorted(STARTS))
def test_k8s_never_starts_monitoring_without_credentials(
    process: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = only_container(k8s_deployment(process))
    env = k8s_env(container, operator_value="set-by-the-operator:pw")
    assert env.get("CELERIAC_DEV_MODE") == "0", process
    assert STARTS[process](env, monkeypatch), (
        f"k8s {process}: the manifests start it without credentials outside dev mode "
        "(an empty placeholder counts as none): it would exit and restart in a loop"
    )
    # A Secret the pods wait for is one the documentation tells how to create.
    config_text = (K8S / "config.yaml").read_text()
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] not in k8s_objects("Secret"):
            assert f"create secret generic {ref['name']}" in config_text, ref["name"]
            assert f"--from-literal={ref['key']}=" in config_text, ref["key"]


def test_k8s_exporter_probes_send_the_token() -> None:
    container = only_container(k8s_deployment("exporter"))
    env = k8s_env(container, operator_value=EXAMPLE_TOKEN)
    probes = {name: container[name] for name in ("readinessProbe", "livenessProbe",
                                                 "startupProbe") if name in container}
    assert "readinessProbe" in probes
    for name, probe in probes.items():
        # An httpGet probe cannot send a Secret's value: /metrics would answer 401.
        assert "httpGet" not in probe, f"k8s exporter {name}: httpGet gets a 401"
        if "exec" in probe:
            assert_probe_sends_the_token(probe["exec"]["command"], env, f"k8s exporter {name}")
    assert "exec" in probes["readinessProbe"], "readiness should scrape /metrics with the token"
