"""Alert rules evaluated beside ingest, never in its way.

Ingest hands over each batch's telemetry after the batch is committed and acknowledged; a thread
with its own database connection judges it against the rules (``alert_rules.advance``), keeps each
rule's state per device in ``alert_state`` (row locks: replicas of ingest may judge the same device),
fires and resolves ``alerts``, sweeps silence rules, and exports the firing alerts by rule. A slow
or absent database delays alerts, never storage: what waits is bounded, and what does not fit is
dropped and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

import psycopg
from prometheus_client import Counter, Gauge

from iotenant_workloads.alert_rules import FIRING, SILENCE, THRESHOLD, AlertRule, Observation, PairState, advance
from iotenant_workloads.datagram import Telemetry

log = logging.getLogger("iotenant.alerts")

ALERTS_FIRING = Gauge("iotenant_ingest_alerts_firing", "Alerts firing, by rule id", ["rule"])
TRANSITIONS = Counter("iotenant_ingest_alert_transitions_total", "Alerts fired and resolved", ["state"])
DROPPED = Counter("iotenant_ingest_alert_observations_dropped_total", "Measurements not judged: the evaluation fell behind")
FAILURES = Counter("iotenant_ingest_alert_evaluation_failures_total", "Evaluation rounds the database did not complete")

RULES_SECONDS = 2.0  # how soon a rule created or deleted through the API takes effect
SILENCE_SECONDS = 2.0
MAX_PENDING = 100_000

RULES = """
SELECT id, name, kind, device_id, type, operator, threshold, for_seconds, silence_seconds
FROM alert_rules WHERE deleted_at IS NULL ORDER BY id
"""

PAIRS = """
INSERT INTO alert_state (rule_id, device_id)
SELECT * FROM unnest(%s::bigint[], %s::text[]) ON CONFLICT DO NOTHING
"""

LOCK_PAIRS = """
SELECT s.rule_id, s.device_id, s.holding_since, s.last_ts, s.firing_alert
FROM alert_state s JOIN unnest(%s::bigint[], %s::text[]) AS p (rule_id, device_id)
  ON s.rule_id = p.rule_id AND s.device_id = p.device_id
ORDER BY s.rule_id, s.device_id
FOR UPDATE OF s
"""

SAVE_PAIR = "UPDATE alert_state SET holding_since = %s, last_ts = %s, firing_alert = %s WHERE rule_id = %s AND device_id = %s"

# FOR SHARE waits for an API transaction deleting the rule, then sees it deleted: no alert outlives its rule.
FIRE = """
INSERT INTO alerts (rule_id, device_id, state, value, fired_at)
SELECT id, %s, 'firing', %s, %s FROM (SELECT id FROM alert_rules WHERE id = %s AND deleted_at IS NULL FOR SHARE) live
ON CONFLICT (rule_id, device_id) WHERE state = 'firing' DO NOTHING
RETURNING id
"""

FIRING_ALERT = "SELECT id FROM alerts WHERE rule_id = %s AND device_id = %s AND state = 'firing'"

RESOLVE = "UPDATE alerts SET state = 'resolved', resolved_at = %s, resolved_value = %s WHERE id = %s AND state = 'firing'"

SILENCE_FIRE = """
INSERT INTO alerts (rule_id, device_id, state, value, fired_at)
SELECT r.id, d.device_id, 'firing', extract(epoch FROM now() - d.last_telemetry_at), now()
FROM (SELECT * FROM alert_rules WHERE kind = 'silence' AND deleted_at IS NULL FOR SHARE) r
JOIN devices d ON (r.device_id IS NULL OR r.device_id = d.device_id)
WHERE d.last_telemetry_at < now() - make_interval(secs => r.silence_seconds)
ON CONFLICT (rule_id, device_id) WHERE state = 'firing' DO NOTHING
"""

SILENCE_RESOLVE = """
UPDATE alerts a SET state = 'resolved', resolved_at = now(), resolved_value = 0
FROM alert_rules r, devices d
WHERE a.state = 'firing' AND a.rule_id = r.id AND r.kind = 'silence' AND d.device_id = a.device_id
  AND d.last_telemetry_at >= now() - make_interval(secs => r.silence_seconds)
"""

FIRING_BY_RULE = "SELECT rule_id, count(*) FROM alerts WHERE state = 'firing' GROUP BY rule_id"


class AlertEvaluator:
    def __init__(self, database_url: str, licensed: Callable[[], bool], stopping: threading.Event) -> None:
        self.database_url = database_url
        self.licensed = licensed
        self.stopping = stopping
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, str], list[Observation]] = defaultdict(list)
        self._pending_count = 0
        self._rules: dict[int, AlertRule] = {}
        self._by_type: dict[str, list[AlertRule]] = {}
        self._has_silence = False
        self._shown_rules: set[str] = set()
        self.thread = threading.Thread(target=self._run, name="alerts", daemon=True)

    def start(self) -> None:
        self.thread.start()

    # ------------------------------------------------------------ ingest's side (cheap, never blocks on I/O)

    def observe(self, telemetry: list[Telemetry]) -> None:
        """Measurements of a committed batch that some rule watches, queued for the evaluation thread."""
        by_type = self._by_type
        if not by_type:
            return
        found: list[Observation] = []
        for message in telemetry:
            for measurement in message.measurements:
                for rule in by_type.get(measurement.type, ()):
                    if rule.device_id is None or rule.device_id == message.device_id:
                        found.append(Observation(rule.id, message.device_id, measurement.ts, measurement.val))
        if not found:
            return
        with self._lock:
            room = MAX_PENDING - self._pending_count
            if room < len(found):
                DROPPED.inc(len(found) - max(0, room))
                found = found[:max(0, room)]
            for observation in found:
                self._pending[(observation.rule_id, observation.device_id)].append(observation)
            self._pending_count += len(found)
        self.wake.set()

    # ------------------------------------------------------------ the evaluation thread

    def _take_pending(self) -> dict[tuple[int, str], list[Observation]]:
        with self._lock:
            pending, self._pending, self._pending_count = self._pending, defaultdict(list), 0
        return pending

    def _load_rules(self, connection: psycopg.Connection) -> None:
        with connection.transaction():
            rows = connection.execute(RULES).fetchall()
        rules = {row[0]: AlertRule(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8]) for row in rows}
        by_type: dict[str, list[AlertRule]] = defaultdict(list)
        for rule in rules.values():
            if rule.kind == THRESHOLD and rule.type is not None:
                by_type[rule.type].append(rule)
        self._rules, self._by_type = rules, dict(by_type)  # swapped whole: ingest's thread reads them without a lock
        self._has_silence = any(rule.kind == SILENCE for rule in rules.values())

    def evaluate(self, connection: psycopg.Connection, pending: dict[tuple[int, str], list[Observation]]) -> None:
        """Judge ``pending`` against the rules' stored state, in one transaction."""
        pairs = sorted(key for key in pending if key[0] in self._rules)
        if not pairs:
            return
        with connection.transaction():
            rule_ids, device_ids = [p[0] for p in pairs], [p[1] for p in pairs]
            connection.execute(PAIRS, (rule_ids, device_ids))
            for rule_id, device_id, holding_since, last_ts, firing_alert in connection.execute(LOCK_PAIRS, (rule_ids, device_ids)).fetchall():
                rule = self._rules[rule_id]
                state, transitions = advance(rule, PairState(holding_since, last_ts, firing_alert is not None), pending[(rule_id, device_id)])
                for transition in transitions:
                    firing_alert = self._record(connection, rule, device_id, firing_alert, transition.state, transition.at, transition.value)
                connection.execute(SAVE_PAIR, (state.holding_since, state.last_ts, firing_alert if state.firing else None, rule_id, device_id))

    def _record(self, connection: psycopg.Connection, rule: AlertRule, device_id: str, firing_alert: int | None,
                state: str, at: datetime, value: float) -> int | None:
        if state == FIRING:
            row = connection.execute(FIRE, (device_id, value, at, rule.id)).fetchone()
            if row is None:  # firing already (state written by an older version), or the rule was just deleted
                row = connection.execute(FIRING_ALERT, (rule.id, device_id)).fetchone()
                return row[0] if row is not None else None
            TRANSITIONS.labels(FIRING).inc()
            log.info("alert %d fired: rule %d (%s) on %s, value %g", row[0], rule.id, rule.name, device_id, value)
            return int(row[0])
        if firing_alert is not None and connection.execute(RESOLVE, (at, value, firing_alert)).rowcount:
            TRANSITIONS.labels(state).inc()
            log.info("alert %d resolved: rule %d (%s) on %s, value %g", firing_alert, rule.id, rule.name, device_id, value)
        return None

    def sweep_silence(self, connection: psycopg.Connection) -> None:
        with connection.transaction():
            fired = connection.execute(SILENCE_FIRE).rowcount
            resolved = connection.execute(SILENCE_RESOLVE).rowcount
        TRANSITIONS.labels(FIRING).inc(max(0, fired))
        TRANSITIONS.labels("resolved").inc(max(0, resolved))

    def _show_firing(self, connection: psycopg.Connection) -> None:
        with connection.transaction():
            counts = {str(rule_id): n for rule_id, n in connection.execute(FIRING_BY_RULE).fetchall()}
        shown = {str(rule_id) for rule_id in self._rules} | set(counts)
        for rule in self._shown_rules - shown:
            ALERTS_FIRING.remove(rule)
        for rule in shown:
            ALERTS_FIRING.labels(rule).set(counts.get(rule, 0))
        self._shown_rules = shown

    def _round(self, connection: psycopg.Connection, last: dict[str, float]) -> None:
        now = time.monotonic()
        if now - last["rules"] >= RULES_SECONDS:
            self._load_rules(connection)
            last["rules"] = now
        pending = self._take_pending()
        if pending:
            try:
                self.evaluate(connection, pending)
            except psycopg.Error:
                self._restore(pending)
                raise
        if now - last["silence"] >= SILENCE_SECONDS:
            if self._has_silence:
                self.sweep_silence(connection)
            self._show_firing(connection)
            last["silence"] = now

    def _restore(self, pending: dict[tuple[int, str], list[Observation]]) -> None:
        """Observations of a round the database did not complete wait for the next one (within the bound)."""
        with self._lock:
            for key, observations in pending.items():
                room = MAX_PENDING - self._pending_count
                kept = observations[:max(0, room)]
                DROPPED.inc(len(observations) - len(kept))
                self._pending[key][:0] = kept
                self._pending_count += len(kept)

    def _run(self) -> None:
        connection: psycopg.Connection | None = None
        last = {"rules": 0.0, "silence": 0.0}
        delay = 0.5
        while not self.stopping.is_set():
            self.wake.wait(0.5)
            self.wake.clear()
            if not self.licensed():
                self._take_pending()
                self._by_type, self._rules, self._has_silence = {}, {}, False
                last["rules"] = 0.0
                continue
            try:
                if connection is None or connection.closed:
                    connection = psycopg.connect(self.database_url, connect_timeout=5)
                self._round(connection, last)
                delay = 0.5
            except psycopg.Error as error:
                FAILURES.inc()
                log.warning("alert evaluation postponed: %s", str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__)
                if connection is not None and (isinstance(error, psycopg.OperationalError) or connection.broken):
                    connection.close()
                    connection = None
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)
            except Exception:  # a defect here must cost alerts, never ingest
                FAILURES.inc()
                log.exception("alert evaluation failed")
                self.stopping.wait(delay)
        if connection is not None:
            connection.close()
