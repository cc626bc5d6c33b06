"""Security: the status server binds loopback unless told otherwise; no credential reaches a log, a config dump,
the journal or a CLI output; a model reaches onnxruntime only after its sha256 is checked; the documented IAM
policies grant only the actions the code calls.

Covered elsewhere, not repeated here: the container runs as a non-root numeric UID
(tests/test_shipping.py::test_dockerfile_final_stage_runs_as_non_root_numeric_uid and
test_values_security_defaults); docs/aws.md's policy equals the actions used
(tests/test_backend_ec2.py::test_docs_iam_policy_grants_exactly_the_actions_used). The dependency audit
(pip-audit) needs the network for its vulnerability database: its procedure is in docs/reliability.md.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from prometheus_client import CollectorRegistry

from fleetpilot.controller import lease
from fleetpilot.controller.backends import ec2_asg
from fleetpilot.controller.config import DaemonConfig
from fleetpilot.controller.server import StatusServer
from fleetpilot.controller.sources import cloudwatch
from tests.real_servers import MotoAws, now_minute
from tests.test_reliability_faults import LOAD_QUERY

REPO = Path(__file__).resolve().parents[1]
FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEETPILOT_")}
    env.update(extra)
    return env


# -- the status server --------------------------------------------------------------------------------------
def test_status_server_binds_loopback_by_default(tmp_path):
    """`fleetpilot run` with no `server.host`: every listening socket of the process is on 127.0.0.1."""
    assert DaemonConfig.model_fields["server"].default_factory().host == "127.0.0.1"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "interval_seconds": 0.05,
                "journal_path": "j.sqlite",
                "server": {"port": 0},
                "groups": [
                    {
                        "name": "web",
                        "policy": "target-tracking",
                        "source": {"kind": "simulator"},
                        "backend": {"kind": "simulated"},
                    }
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [FLEETPILOT, "run", "--config", str(cfg), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        port = None
        for line in proc.stderr:
            rec = json.loads(line)
            if rec["msg"].startswith("serving /metrics"):
                port = rec["port"]
                assert rec["host"] == "127.0.0.1"
                break
        assert port, "the daemon never served"
        listening = [c for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", port)]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_status_server_binds_what_is_configured(host):
    server = StatusServer(host, 0, CollectorRegistry(), lambda: (True, {}), lambda: (True, {}))
    try:
        assert server.httpd.socket.getsockname()[0] == host
    finally:
        server.httpd.server_close()


# -- no credentials in outputs ------------------------------------------------------------------------------
PROM_PASSWORD = "pr0m-Pa55-w0rd-7f3a"
AWS_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFLEETPILOTTEST42",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiFLEETPILOTKEY",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEFLEETPILOTSESSIONTOKENxyz",
}


def test_no_credentials_in_logs_config_dumps_journal_or_cli(
    tmp_path, prometheus_server, aws: MotoAws, unused_url, monkeypatch
):
    """A Prometheus URL with user:password (one reachable, one refusing connections: its errors quote the
    URL) and AWS credentials in the environment (CloudWatch and Auto Scaling on moto); the daemon runs at
    DEBUG. No secret, and not the basic-auth header, appears in any output or file."""
    for k, v in AWS_SECRETS.items():
        monkeypatch.setenv(k, v)
    name = aws.create_group(min_size=1, max_size=20, desired=2)
    with_auth = lambda url: url.replace("http://", f"http://alice:{PROM_PASSWORD}@")  # noqa: E731
    now = now_minute()
    dims = {"Service": f"security-{now}"}
    for m in range(now - 10, now):
        aws.put_load("Fleetpilot/Security", "Transactions", dims, m, [3000.0])
    groups = [
        {
            "name": "prom",
            "policy": "target-tracking",
            "source": {
                "kind": "prometheus",
                "url": with_auth(prometheus_server.url) + "/?token=" + PROM_PASSWORD,
                "query": LOAD_QUERY,
            },
            "backend": {"kind": "simulated"},
        },
        {
            "name": "prom-down",
            "policy": "target-tracking",
            "source": {"kind": "prometheus", "url": with_auth(unused_url), "query": LOAD_QUERY, "timeout_seconds": 1},
            "backend": {"kind": "simulated"},
        },
        {
            "name": "aws",
            "policy": "target-tracking",
            "source": {
                "kind": "cloudwatch",
                "namespace": "Fleetpilot/Security",
                "metric_name": "Transactions",
                "dimensions": dims,
                "region": aws.region,
                "endpoint_url": aws.endpoint_url,
            },
            "backend": {"kind": "ec2-asg", "group_name": name, "region": aws.region, "endpoint_url": aws.endpoint_url},
        },
    ]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"interval_seconds": 60, "journal_path": "journal.sqlite", "log_level": "DEBUG", "groups": groups}
        )
    )
    env = clean_env()
    outputs = []
    for args in (
        ["config", "check", str(cfg)],
        ["run", "--config", str(cfg), "--once"],
        ["decisions", "--config", str(cfg), "--json"],
    ):
        p = subprocess.run([FLEETPILOT, *args], capture_output=True, text=True, timeout=60, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        outputs.append(p.stdout + p.stderr)
    run_log = outputs[1]
    assert "***@" in run_log and "alice" not in run_log and '"msg":"config"' in run_log  # the masked config was logged
    assert "cannot reach the server" in run_log  # and the failing source's error, which quotes its URL
    files = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.name.startswith("journal.sqlite"))
    assert len(files) > 0
    basic = base64.b64encode(f"alice:{PROM_PASSWORD}".encode()).decode()
    for secret in [PROM_PASSWORD, basic, *AWS_SECRETS.values()]:
        for i, out in enumerate(outputs):
            assert secret not in out, f"{secret!r} in the output of command {i}"
        assert secret.encode() not in files, f"{secret!r} in the journal"
    assert aws.group(name)["DesiredCapacity"] > 2  # the AWS credentials were used: the group was written


# -- models: sha256 before onnxruntime ----------------------------------------------------------------------
def test_a_model_reaches_onnxruntime_only_after_its_sha256_is_checked(tmp_path, monkeypatch):
    import onnxruntime

    from fleetpilot.policies.onnx_policy import ModelError
    from fleetpilot.policies.registry import make_policy
    from tests.test_reliability_model import write_model

    seen: list[bytes] = []
    real = onnxruntime.InferenceSession

    def spy(model, *args, **kwargs):
        seen.append(model if isinstance(model, bytes) else Path(model).read_bytes())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    d = write_model(tmp_path / "m")
    good = (d / "policy.onnx").read_bytes()
    make_policy(str(d))
    assert seen == [good]  # a verified model is loaded, from the bytes that were hashed
    (d / "policy.onnx").write_bytes(good[:-1] + bytes([good[-1] ^ 0x20]))  # tampered after export
    with pytest.raises(ModelError, match="sha256"):
        make_policy(str(d))
    assert seen == [good]  # the tampered bytes never reached onnxruntime


# -- IAM policies in the docs -------------------------------------------------------------------------------
def test_every_documented_iam_permissions_policy_grants_only_actions_the_code_calls():
    used = set(ec2_asg.AWS_ACTIONS) | set(cloudwatch.AWS_ACTIONS) | set(lease.AWS_ACTIONS)
    found = 0
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        if not doc.is_file():
            continue
        for block in re.findall(r"```json\n(.*?)```", doc.read_text(), flags=re.S):
            if '"Statement"' not in block:
                continue
            policy = json.loads(block)
            statements = policy["Statement"] if isinstance(policy["Statement"], list) else [policy["Statement"]]
            if any("Principal" in s for s in statements):  # a trust policy (who may assume the role)
                continue
            found += 1
            granted = set()
            for s in statements:
                assert s["Effect"] == "Allow" and "NotAction" not in s, (doc.name, s)
                granted |= {s["Action"]} if isinstance(s["Action"], str) else set(s["Action"])
                if "autoscaling:SetDesiredCapacity" in granted and s["Action"] in (
                    "autoscaling:SetDesiredCapacity",
                    ["autoscaling:SetDesiredCapacity"],
                ):
                    assert s["Resource"] != "*" and "autoScalingGroupName/" in s["Resource"], (doc.name, s)
            assert granted <= used and not any("*" in a for a in granted), (doc.name, granted - used)
            assert set(ec2_asg.AWS_ACTIONS) <= granted, (doc.name, "the backend's actions are missing")
    assert found >= 2  # docs/aws.md and docs/deploy.md
