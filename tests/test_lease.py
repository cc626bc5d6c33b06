"""Leader election on a DynamoDB lease (controller.lease) against moto in server mode, in process: the lease's
rules with controlled clocks, the table command, bad input, the journal's lease columns and their migration,
a standby's tick, and a daemon without `leader_election` unchanged. The two-process failover and partition
tests are in test_lease_failover.py."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from fleetpilot.controller.cli import main
from fleetpilot.controller.config import ConfigError, DaemonConfig, LeaderElectionConfig, load_config, summary
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.journal import SCHEMA_VERSION, Journal, JournalRow, read_decisions
from fleetpilot.controller.lease import Lease, LeaseError
from tests.real_servers import MotoAws

FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")


class ManualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def lease_block(aws: MotoAws, table: str, **kw) -> dict:
    d = {
        "table": table,
        "lease_name": f"lease-{uuid.uuid4().hex[:6]}",
        "region": aws.region,
        "endpoint_url": aws.endpoint_url,
        "lease_seconds": 3,
        "renew_seconds": 1,
    }
    d.update(kw)
    return d


def sim_group(name: str = "sim") -> dict:
    return {
        "name": name,
        "policy": "target-tracking",
        "warmup_minutes": 0,
        "source": {"kind": "simulator", "seed": 1},
        "backend": {"kind": "simulated", "seed": 1, "initial_machines": 20},
    }


def write_config(tmp_path: Path, name: str, **over) -> Path:
    d = {"interval_seconds": 1, "journal_path": f"{name}.sqlite", "groups": [sim_group()]}
    d.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.fixture
def table(aws: MotoAws, tmp_path: Path) -> str:
    """A lease table made by `fleetpilot lease create-table`."""
    name = f"fleetpilot-lease-{uuid.uuid4().hex[:8]}"
    cfg = write_config(tmp_path, "mk", leader_election=lease_block(aws, name))
    assert main(["lease", "create-table", "--config", str(cfg)]) == 0
    assert main(["lease", "create-table", "--config", str(cfg)]) == 0  # again: it exists, fine
    return name


def item(aws: MotoAws, table: str, lease_name: str) -> dict:
    got = aws.client("dynamodb").get_item(TableName=table, Key={"name": {"S": lease_name}}, ConsistentRead=True)
    return got["Item"]


def test_lease_rules_with_two_clocks(aws: MotoAws, table: str):
    block = lease_block(aws, table)
    ca, cb = ManualClock(), ManualClock()
    a = Lease(LeaderElectionConfig(**block, holder_id="a"), CollectorRegistry(), clock=ca)
    b = Lease(LeaderElectionConfig(**block, holder_id="b"), CollectorRegistry(), clock=cb)
    a.check_table()
    a.step()  # the first daemon creates the item: token 1
    assert a.fence() == ("a", 1) and a.may_write()
    assert item(aws, table, block["lease_name"])["holder"]["S"] == "a"
    b.step()
    assert b.fence() is None
    # the holder renews: the standby sees the item change and starts counting again
    for _ in range(5):
        ca.t += 1.0
        cb.t += 1.0
        a.step()
        b.step()
        assert a.may_write() and not b.may_write()
    # the holder stops renewing (a partition): it stops writing at its deadline (send + 3 - 0.75)...
    ca.t += 2.24
    assert a.may_write()
    ca.t += 0.02
    assert not a.may_write() and a.fence() is None
    # ...before the standby may take over: 3 s of the standby's own time with the item unchanged
    cb.t += 2.9
    b.step()
    assert b.fence() is None
    cb.t += 0.2
    b.step()
    assert b.fence() == ("b", 2)  # a new holder, a larger token
    assert b.metrics.token._value.get() == 2 and b.metrics.leader._value.get() == 1
    # the old holder comes back: its renewal fails on the token, it stands by and never writes again
    a.step()
    assert a.fence() is None and not a.may_write(1)
    assert a.metrics.leader._value.get() == 0
    # a clean stop releases the lease: the standby takes it over on its next read, without waiting
    b.release()
    assert item(aws, table, block["lease_name"])["holder"]["S"] == ""
    a.step()
    assert a.fence() == ("a", 3)


def test_takeover_race_has_one_winner(aws: MotoAws, table: str):
    """Two standbys see the same expired lease and both try to take it: the conditional write lets one win."""
    block = lease_block(aws, table)
    clocks = [ManualClock() for _ in range(3)]
    h, s1, s2 = (
        Lease(LeaderElectionConfig(**block, holder_id=n), CollectorRegistry(), clock=c)
        for n, c in zip("hxy", clocks, strict=True)
    )
    h.step()
    s1.step()
    s2.step()
    for c in clocks[1:]:
        c.t += 3.0
    s1.step()
    s2.step()
    winners = [x.fence() for x in (s1, s2) if x.fence() is not None]
    assert winners == [("x", 2)]


def test_renew_errors_are_counted_and_the_holder_stops_at_its_deadline(aws: MotoAws, table: str, fault_proxy):
    from tests.real_servers import Fault

    proxy = fault_proxy(Fault("UpdateItem", "InternalServerError", times=-1, status=500))
    clock = ManualClock()
    lease = Lease(
        LeaderElectionConfig(**lease_block(aws, table, endpoint_url=proxy.url), holder_id="h"),
        CollectorRegistry(),
        clock=clock,
    )
    lease.step()  # PutItem: acquired
    assert lease.may_write()
    for _ in range(3):
        clock.t += 1.0
        lease.step()
    assert lease.metrics.errors.labels("renew")._value.get() == 3
    assert not lease.may_write()  # 3 s after the last good renewal, beyond 3 - 0.75


def test_config_validation_one_line(tmp_path: Path, aws: MotoAws):
    p = write_config(tmp_path, "bad", leader_election=lease_block(aws, "t-x", lease_seconds=3, renew_seconds=1.5))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "leader_election" in str(e.value) and "renew_seconds (1.5)" in str(e.value)
    assert "\n" not in str(e.value)
    ok = load_config(write_config(tmp_path, "ok", leader_election={"table": "t-ok"}))
    assert ok.leader_election is not None and ok.leader_election.lease_seconds == 30
    assert summary(ok).endswith("; leader election on DynamoDB table t-ok (us-east-1)")
    assert load_config(write_config(tmp_path, "none")).leader_election is None


def test_missing_table_is_one_line_exit_2(tmp_path: Path, aws: MotoAws):
    cfg = write_config(tmp_path, "missing", leader_election=lease_block(aws, "no-such-table"))
    r = subprocess.run([FLEETPILOT, "run", "--config", str(cfg), "--quiet"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fleetpilot run: error: leader_election.table:"), last
    assert "'no-such-table' does not exist" in last and "fleetpilot lease create-table --config FILE" in last
    assert "Traceback" not in r.stderr
    # the command that creates it wants a leader_election block
    r = subprocess.run(
        [FLEETPILOT, "lease", "create-table", "--config", str(write_config(tmp_path, "plain"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.strip().endswith("the config has no leader_election block"), r.stderr


def test_lease_error_in_process(aws: MotoAws):
    lease = Lease(LeaderElectionConfig(**lease_block(aws, "absent-table")), CollectorRegistry())
    with pytest.raises(LeaseError, match="absent-table"):
        lease.check_table()


def _daemon(tmp_path: Path, name: str, lease: Lease | None) -> Daemon:
    cfg = DaemonConfig(interval_seconds=1, journal_path=tmp_path / f"{name}.sqlite", groups=[sim_group()])
    return Daemon(cfg, CollectorRegistry(), lease=lease)


def test_holder_decides_as_a_daemon_without_lease_and_a_standby_only_keeps_history(
    aws: MotoAws, table: str, tmp_path, capsys
):
    block = lease_block(aws, table)
    plain = _daemon(tmp_path, "plain", None)
    assert plain.lease is None
    holder = _daemon(tmp_path, "holder", Lease(LeaderElectionConfig(**block, holder_id="h"), CollectorRegistry()))
    standby = _daemon(tmp_path, "standby", Lease(LeaderElectionConfig(**block, holder_id="s"), CollectorRegistry()))
    assert holder.lease is not None and standby.lease is not None
    holder.lease.step()
    standby.lease.step()
    for d in (plain, holder, standby):
        d.backfill()
        for _ in range(30):
            assert d.run_tick() == "ok"
            if d is holder:
                holder.lease.step()
        d.close()
    p = read_decisions(tmp_path / "plain.sqlite", None, 100)
    h = read_decisions(tmp_path / "holder.sqlite", None, 100)
    assert len(p) == len(h) == 30
    keys = ("minute", "action", "load_tpm", "active", "desired_before", "final", "outcome", "guards")
    assert [[r[k] for k in keys] for r in p] == [[r[k] for k in keys] for r in h]
    assert any(r["outcome"] == "written" for r in p)
    assert {(r["lease_holder"], r["lease_token"]) for r in p} == {(None, None)}
    assert {(r["lease_holder"], r["lease_token"]) for r in h} == {("h", 1)}
    assert read_decisions(tmp_path / "standby.sqlite", None, 100) == []  # decided nothing
    assert main(["decisions", "--journal", str(tmp_path / "holder.sqlite"), "--last", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-2:] == ["holder", "token"] and out[-1].split()[-2:] == ["h", "1"]
    assert main(["decisions", "--journal", str(tmp_path / "plain.sqlite"), "--last", "2"]) == 0
    assert "token" not in capsys.readouterr().out  # no lease, no lease columns
    warm = int(standby.batches[0].builder.count[0])  # but its history is as warm as the holder's
    assert warm >= 29 and warm == int(holder.batches[0].builder.count[0])


def test_no_leader_election_creates_no_lease_and_no_lease_metrics(tmp_path: Path):
    d = _daemon(tmp_path, "plain", None)
    d.backfill()
    d.run_tick()
    d.close()
    assert d.lease is None and d.registry.get_sample_value("fleetpilot_leader") is None


OLD_SCHEMA = """
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, wall_time TEXT NOT NULL, tick INTEGER NOT NULL, minute INTEGER NOT NULL,
    group_name TEXT NOT NULL, policy TEXT NOT NULL, action TEXT NOT NULL, data_status TEXT NOT NULL, load_tpm REAL,
    load_minute INTEGER, active INTEGER, warming INTEGER, desired_before INTEGER, raw_action INTEGER,
    policy_desired INTEGER, fallback_desired INTEGER, recommendation INTEGER, guards TEXT NOT NULL, final INTEGER,
    outcome TEXT NOT NULL
);
CREATE INDEX decisions_group ON decisions (group_name, id);
PRAGMA user_version = 1;
INSERT INTO decisions (wall_time, tick, minute, group_name, policy, action, data_status, guards, final, outcome)
VALUES ('2026-01-01T00:00:00+00:00', 0, 100, 'web', 'default', 'policy', 'ok', '[]', 3, 'written');
"""


def test_journal_of_schema_1_is_read_and_migrated(tmp_path: Path):
    p = tmp_path / "old.sqlite"
    db = sqlite3.connect(p)
    db.executescript(OLD_SCHEMA)
    db.close()
    (old,) = read_decisions(p)  # readable as it is
    assert old["final"] == 3 and "lease_token" not in old
    j = Journal(p)
    row = dict(old)
    del row["id"]
    j.add(JournalRow(**{**row, "minute": 101, "lease_holder": "h:1", "lease_token": 7}))
    j.commit()
    j.close()
    rows = read_decisions(p)
    assert [(r["minute"], r["lease_holder"], r["lease_token"]) for r in rows] == [(100, None, None), (101, "h:1", 7)]
    db = sqlite3.connect(p)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()
    Journal(p).close()  # opening a migrated journal again changes nothing
    assert len(read_decisions(p)) == 2


def test_only_the_documented_dynamodb_actions_are_called(aws: MotoAws, table: str):
    import json
    import re

    from fleetpilot.controller import lease as lease_mod

    block = lease_block(aws, table)
    ca, cb = ManualClock(), ManualClock()
    a = Lease(LeaderElectionConfig(**block, holder_id="a"), CollectorRegistry(), clock=ca)
    b = Lease(LeaderElectionConfig(**block, holder_id="b"), CollectorRegistry(), clock=cb)
    called: list[str] = []
    for x in (a, b):
        x.client.meta.events.register("before-call.*.*", lambda model, **_: called.append(f"dynamodb:{model.name}"))
    a.check_table()
    a.step()  # PutItem
    a.step()  # UpdateItem (renew)
    b.step()  # GetItem
    cb.t += 3.0
    b.step()  # UpdateItem (take over)
    b.release()
    assert b.fence() is None
    assert set(called) == set(lease_mod.AWS_ACTIONS)
    # docs/aws.md grants them on the table's ARN only
    text = (Path(__file__).parent.parent / "docs" / "aws.md").read_text()
    (policy,) = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, flags=re.S) if '"Statement"' in b]
    (st,) = [s for s in policy["Statement"] if any(a.startswith("dynamodb:") for a in s["Action"])]
    assert set(st["Action"]) == set(lease_mod.AWS_ACTIONS)
    assert re.fullmatch(r"arn:aws:dynamodb:[a-z0-9-]+:\d{12}:table/[A-Za-z0-9_.-]+", st["Resource"])
