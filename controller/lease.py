"""Leader election on a lease in DynamoDB: several daemons run, only the lease holder reads the groups, decides
and writes; the others are standbys that keep their load history warm and take over when the lease expires.

The lease is one item of a DynamoDB table (key `name` = `leader_election.lease_name`):

    name     the lease's name
    holder   who holds it (`holder_id`, by default host:pid); "" once released
    token    the fencing token: 1 for the first holder, +1 for every new holder; never reused
    seq      +1 at every renewal (a standby watches it change)
    lease_seconds, renewed_at   the holder's lease length and wall time of its last renewal (informative)

Every change is a conditional write, so two daemons can never both win:

- acquire (no item yet):     PutItem    if attribute_not_exists(name)         -> token 1
- renew (the holder):        UpdateItem if holder = me AND token = mine       -> seq + 1
- take over (a standby):     UpdateItem if token = old AND seq = old          -> holder = me, token + 1
- take over a released one:  UpdateItem if token = old AND holder = ""        -> holder = me, token + 1
- release (clean shutdown):  UpdateItem if holder = me AND token = mine       -> holder = ""

Time is measured on each side's own monotonic clock; the wall clocks of two hosts are never compared:

- the holder may write until `renew_deadline = (send time of its last successful renewal) + lease_seconds -
  margin` (margin = lease_seconds / 4). A holder cut off from DynamoDB stops writing at that deadline, without
  hearing from anyone;
- a standby takes over only after it has seen the item unchanged (same holder, token and seq) for
  `lease_seconds` of its own time, counted from its first sight of that value. That value was written after
  the holder sent it, so the standby's takeover comes at least `lease_seconds` after the send, later than the
  holder's deadline by the margin (which covers a write in flight and any difference in clock rates).

The fencing token goes into every journal row. The Auto Scaling API takes no condition, so the token cannot
fence the write itself: the holder checks its deadline (and that its token is unchanged) just before each
write, and never writes past it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from fleetpilot.controller.config import LeaderElectionConfig
from fleetpilot.controller.runtime import NO_HISTORY, Batch, History, Reading
from fleetpilot.policies.errors import UserError

log = logging.getLogger("fleetpilot.lease")

ERROR_KINDS = ("read", "acquire", "renew", "release")
#: Every AWS action the daemon's side of the lease calls (docs/aws.md's IAM policy; a test records the calls).
#: `fleetpilot lease create-table` also needs dynamodb:CreateTable and DescribeTable, once, as an operator.
AWS_ACTIONS: tuple[str, ...] = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")
#: Fraction of lease_seconds the holder stops writing before its lease could expire elsewhere.
MARGIN_FRACTION = 0.25
#: A standby reads the lease this many times per lease_seconds (at most every renew_seconds).
STANDBY_READS_PER_LEASE = 12
CREATE_TABLE_HINT = "fleetpilot lease create-table --config FILE"


class LeaseError(UserError):
    """The lease cannot be used at all (its table does not exist, access denied): one line, exit 2."""


def default_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def dynamodb_client(cfg: LeaderElectionConfig) -> Any:
    """A DynamoDB client with short timeouts and no retries: a renewal that fails is retried by the next one,
    and a hung request must never hold the lease thread past the holder's deadline."""
    from fleetpilot.controller.aws_session import client

    timeout = max(0.2, min(2.0, cfg.lease_seconds * MARGIN_FRACTION))
    retries = {"max_attempts": 1, "mode": "standard"}
    return client(
        "dynamodb", cfg.region, cfg.endpoint_url, connect_timeout=timeout, read_timeout=timeout, retries=retries
    )


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""


def _missing_table(cfg: LeaderElectionConfig) -> LeaseError:
    return LeaseError(
        f"leader_election.table: DynamoDB table {cfg.table!r} does not exist in {cfg.region}"
        f"{' at ' + cfg.endpoint_url if cfg.endpoint_url else ''}; create it with `{CREATE_TABLE_HINT}`"
    )


class LeaseMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.leader = Gauge(
            "fleetpilot_leader", "1 while this daemon holds the lease and may write, else 0", registry=registry
        )
        self.token = Gauge(
            "fleetpilot_lease_token", "Fencing token of the lease this daemon holds or last held", registry=registry
        )
        self.errors = Counter(
            "fleetpilot_lease_errors",
            "Failed lease requests to DynamoDB by kind: read, acquire, renew, release",
            ["kind"],
            registry=registry,
        )
        for kind in ERROR_KINDS:
            self.errors.labels(kind)


class Lease:
    """This daemon's side of the lease. `step()` is one round (renew as the holder, else watch and maybe take
    over); `start()` runs rounds in a thread. `may_write()` is what the daemon asks before deciding and writing.
    `on_acquired` is called (in the lease thread) when this daemon wins the lease."""

    def __init__(
        self,
        cfg: LeaderElectionConfig,
        registry: CollectorRegistry,
        *,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg = cfg
        self.holder = cfg.holder_id or default_holder_id()
        self.lease_seconds = float(cfg.lease_seconds)
        self.margin = self.lease_seconds * MARGIN_FRACTION
        self.metrics = LeaseMetrics(registry)
        self.on_acquired: Callable[[], None] | None = None
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._token: int | None = None  #: mine while I hold the lease
        self._deadline = 0.0  #: monotonic time until which I may write
        self._seen: tuple[str, int, int] | None = None  #: (holder, token, seq) last read, as a standby
        self._seen_since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = dynamodb_client(self.cfg)
        return self._client

    # --- what the daemon asks ----------------------------------------------------------------------------
    def may_write(self, token: int | None = None) -> bool:
        """True while this daemon holds the lease and its renew deadline has not passed (and, given `token`,
        still holds it under that token)."""
        with self._lock:
            ok = self._token is not None and self._clock() < self._deadline
            return ok and (token is None or token == self._token)

    def fence(self) -> tuple[str, int] | None:
        """(holder, token) when this daemon may write now, else None."""
        with self._lock:
            if self._token is not None and self._clock() < self._deadline:
                return self.holder, self._token
            return None

    @property
    def period(self) -> float:
        """Seconds between two rounds: renew_seconds as the holder; a standby reads more often, so that it
        sees the last renewal soon after it was written."""
        if self._token is not None:
            return float(self.cfg.renew_seconds)
        return min(float(self.cfg.renew_seconds), self.lease_seconds / STANDBY_READS_PER_LEASE)

    # --- requests -----------------------------------------------------------------------------------------
    def _key(self) -> dict[str, Any]:
        return {"name": {"S": self.cfg.lease_name}}

    def check_table(self) -> None:
        """Read the lease once at start: a table that does not exist (or access denied) is a LeaseError; any
        other failure is logged and left to the rounds (DynamoDB may come back)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.get_item(TableName=self.cfg.table, Key=self._key(), ConsistentRead=True)
        except ClientError as exc:
            code = _code(exc)
            if code == "ResourceNotFoundException":
                raise _missing_table(self.cfg) from None
            if code in ("AccessDeniedException", "UnrecognizedClientException"):
                raise LeaseError(f"leader_election.table: {self.cfg.table}: {code}: {exc}") from None
            self._error("read", exc)
        except BotoCoreError as exc:
            self._error("read", exc)

    def _error(self, kind: str, exc: BaseException) -> None:
        self.metrics.errors.labels(kind).inc()
        log.warning("lease request failed", extra={"kind": kind, "error": f"{type(exc).__name__}: {exc}"})

    def step(self) -> None:
        """One round: renew the lease as its holder, else read it and take it over when it has expired."""
        if self._token is not None:
            self._renew()
        else:
            self._watch()
        self._publish()

    def _publish(self) -> None:
        self.metrics.leader.set(1 if self.may_write() else 0)
        if self._token is not None:
            self.metrics.token.set(self._token)

    def _renew(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        sent = self._clock()
        try:
            self.client.update_item(
                TableName=self.cfg.table,
                Key=self._key(),
                UpdateExpression="SET seq = seq + :one, renewed_at = :now, lease_seconds = :lease",
                ConditionExpression="holder = :me AND #t = :tok",
                ExpressionAttributeNames={"#t": "token"},
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":now": {"S": datetime.now(UTC).isoformat(timespec="milliseconds")},
                    ":lease": {"N": repr(self.lease_seconds)},
                    ":me": {"S": self.holder},
                    ":tok": {"N": str(self._token)},
                },
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                with self._lock:
                    lost, self._token, self._deadline = self._token, None, 0.0
                self._seen = None
                log.warning("lease lost: another daemon holds it; standing by", extra={"token": lost})
                return
            self._error("renew", exc)
            return
        except BotoCoreError as exc:
            self._error("renew", exc)
            return
        with self._lock:
            self._deadline = sent + self.lease_seconds - self.margin

    def _watch(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            got = self.client.get_item(TableName=self.cfg.table, Key=self._key(), ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            self._error("read", exc)
            return
        now = self._clock()
        item = got.get("Item")
        if item is None:
            self._acquire(None)
            return
        holder = item.get("holder", {}).get("S", "")
        token = int(item.get("token", {}).get("N", "0"))
        seq = int(item.get("seq", {}).get("N", "0"))
        held_for = float(item.get("lease_seconds", {}).get("N", "0"))
        if holder == "":
            self._acquire((token, None))  # released by a daemon that stopped cleanly
            return
        value = (holder, token, seq)
        if value != self._seen:
            self._seen, self._seen_since = value, now
            return
        if now - self._seen_since >= max(self.lease_seconds, held_for):
            self._acquire((token, seq))

    def _acquire(self, old: tuple[int, int | None] | None) -> None:
        """Take the lease: a new item (old None), or the expired/released one with token old[0] (and seq old[1],
        or holder "" when None)."""
        from botocore.exceptions import BotoCoreError, ClientError

        token = 1 if old is None else old[0] + 1
        now_wall = {"S": datetime.now(UTC).isoformat(timespec="milliseconds")}
        sent = self._clock()
        try:
            if old is None:
                self.client.put_item(
                    TableName=self.cfg.table,
                    Item={
                        **self._key(),
                        "holder": {"S": self.holder},
                        "token": {"N": "1"},
                        "seq": {"N": "0"},
                        "lease_seconds": {"N": repr(self.lease_seconds)},
                        "renewed_at": now_wall,
                    },
                    ConditionExpression="attribute_not_exists(#n)",
                    ExpressionAttributeNames={"#n": "name"},
                )
            else:
                values: dict[str, Any] = {
                    ":me": {"S": self.holder},
                    ":new": {"N": str(token)},
                    ":old": {"N": str(old[0])},
                    ":zero": {"N": "0"},
                    ":lease": {"N": repr(self.lease_seconds)},
                    ":now": now_wall,
                }
                if old[1] is None:
                    cond = "#t = :old AND holder = :nobody"
                    values[":nobody"] = {"S": ""}
                else:
                    cond = "#t = :old AND seq = :seq"
                    values[":seq"] = {"N": str(old[1])}
                self.client.update_item(
                    TableName=self.cfg.table,
                    Key=self._key(),
                    UpdateExpression="SET holder = :me, #t = :new, seq = :zero, lease_seconds = :lease, "
                    "renewed_at = :now",
                    ConditionExpression=cond,
                    ExpressionAttributeNames={"#t": "token"},
                    ExpressionAttributeValues=values,
                )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":  # someone else was faster, or the holder renewed
                self._seen = None
                log.info("lease taken or renewed by another daemon first; standing by")
                return
            self._error("acquire", exc)
            return
        except BotoCoreError as exc:
            self._error("acquire", exc)
            return
        with self._lock:
            self._token, self._deadline = token, sent + self.lease_seconds - self.margin
        self._seen = None
        log.warning("lease acquired: this daemon now decides and writes", extra={"holder": self.holder, "token": token})
        self._publish()
        if self.on_acquired is not None:
            try:
                self.on_acquired()
            except Exception:  # a failing callback must not kill the lease thread
                log.exception("lease on_acquired callback failed")

    def release(self) -> None:
        """Give the lease up (clean shutdown, after the last write): a standby takes it over at once."""
        from botocore.exceptions import BotoCoreError, ClientError

        with self._lock:
            token, self._token, self._deadline = self._token, None, 0.0
        self._publish()
        if token is None:
            return
        try:
            self.client.update_item(
                TableName=self.cfg.table,
                Key=self._key(),
                UpdateExpression="SET holder = :nobody, seq = seq + :one",
                ConditionExpression="holder = :me AND #t = :tok",
                ExpressionAttributeNames={"#t": "token"},
                ExpressionAttributeValues={
                    ":nobody": {"S": ""},
                    ":one": {"N": "1"},
                    ":me": {"S": self.holder},
                    ":tok": {"N": str(token)},
                },
            )
            log.info("lease released", extra={"token": token})
        except (ClientError, BotoCoreError) as exc:  # it expires by itself
            self._error("release", exc)

    # --- the thread ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """One round now (so a lone daemon decides from its first tick), then rounds in a thread."""
        self.step()
        self._thread = threading.Thread(target=self._run, name="fleetpilot-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.step()
            except Exception:  # never let the lease thread die: the deadline then stops the writes
                log.exception("lease round failed")
                self.metrics.errors.labels("read").inc()

    def close(self, release: bool = True) -> None:
        """Stop the rounds; release the lease when held (`release`). A renewal still in flight cannot undo the
        release (its condition names this holder, which the release clears)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if release:
            self.release()


# --- a standby's tick -----------------------------------------------------------------------------------------
def keep_warm(batches: list[Batch], readings: list[Reading]) -> None:
    """A standby's tick: the good readings go into each batch's history (as the holder's tick would add them),
    so that the tick after winning the lease decides on the same observations as a daemon that always led."""
    for b in batches:
        series = []
        for g in b.groups:
            r = readings[g.index]
            if r.ok and r.sample is not None:
                series.append(History.one(r.sample.minute, r.sample.load_tpm))
            else:
                series.append(NO_HISTORY)
        b.feed_history(series)


# --- fleetpilot lease create-table ---------------------------------------------------------------------------
def add_commands(sub) -> None:
    p = sub.add_parser("lease", help="leader election tools")
    lsub = p.add_subparsers(dest="lease_command", required=True, parser_class=sub._parser_class)
    c = lsub.add_parser("create-table", help="create the DynamoDB table of the config's leader_election lease")
    c.add_argument("--config", required=True, help="YAML config file with a leader_election block")
    c.set_defaults(func=cmd_create_table)


def cmd_create_table(args) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from fleetpilot.controller.config import ConfigError, load_config

    cfg = load_config(args.config).leader_election
    if cfg is None:
        raise ConfigError(f"{args.config}: leader_election: the config has no leader_election block")
    client = dynamodb_client(cfg)
    try:
        client.create_table(
            TableName=cfg.table,
            AttributeDefinitions=[{"AttributeName": "name", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "name", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        client.get_waiter("table_exists").wait(TableName=cfg.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    except ClientError as exc:
        if _code(exc) == "ResourceInUseException":
            print(f"OK table {cfg.table} already exists in {cfg.region}")
            return 0
        raise LeaseError(f"cannot create DynamoDB table {cfg.table!r} in {cfg.region}: {exc}") from None
    except BotoCoreError as exc:
        raise LeaseError(f"cannot create DynamoDB table {cfg.table!r} in {cfg.region}: {exc}") from None
    print(f"OK created table {cfg.table} in {cfg.region} (key: name, on-demand billing)")
    return 0
