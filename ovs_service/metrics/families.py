"""Every metric ovs-service writes: name, type, help and labels (README, "Metrics").

All are gauges (each is a state, or the value of the last operation), named
by Prometheus' conventions: base units (`_seconds`), times as Unix
timestamps (`_timestamp_seconds`: an age is `time() - metric` in a query,
and stays right between writes). Labels are bounded: operation and step
names are fixed sets, bridges are the host's, reasons a fixed set.
"""

from __future__ import annotations

from ovs_service.metrics.exposition import Family

P = "ovs_service_"
OPERATION = ("operation",)

SUCCESS = Family(P + "last_transaction_success", "gauge",
                 "Whether the last run of the operation succeeded (1) or failed (0).", OPERATION)
TIMESTAMP = Family(P + "last_transaction_timestamp_seconds", "gauge",
                   "When the last run of the operation ended, as a Unix timestamp.", OPERATION)
DURATION = Family(P + "last_transaction_duration_seconds", "gauge",
                  "Wall time of the last run of the operation.", OPERATION)
STEP = Family(P + "step_duration_seconds", "gauge",
              "Time each step of the last run of the operation took.", ("operation", "step"))

KINDS = ("flows", "groups", "meters")
RESTORED = {k: Family(P + f"restored_{k}", "gauge",
                      f"OpenFlow {k} the last restore put back, per bridge restored.", ("bridge",))
            for k in KINDS}
SAVED = {k: Family(P + f"saved_{k}", "gauge",
                   f"OpenFlow {k} in the newest snapshot of the store, per bridge.", ("bridge",))
         for k in KINDS}

PENDING = Family(P + "restore_pending", "gauge",
                 "Whether a snapshot waits to be restored by the next start of ovs-vswitchd (1).")
PENDING_SINCE = Family(P + "restore_pending_since_timestamp_seconds", "gauge",
                       "Since when a snapshot is pending, as a Unix timestamp (only while one is).")
FAILED = Family(P + "restore_failed", "gauge",
                "Whether a restore failed and its snapshot is kept (1), per failed bridge "
                "and reason when known; 0 without labels otherwise.", ("bridge", "reason"))
FRW = Family(P + "flow_restore_wait", "gauge",
             "Whether other_config:flow-restore-wait is set (1): the switch does not forward "
             "with its flows.")
FRW_SINCE = Family(P + "flow_restore_wait_since_timestamp_seconds", "gauge",
                   "Since when flow-restore-wait is seen set, as a Unix timestamp "
                   "(only while it is).")
NEWEST = Family(P + "newest_snapshot_timestamp_seconds", "gauge",
                "When the newest snapshot in the store was taken, as a Unix timestamp.")
SNAPSHOTS = Family(P + "snapshots", "gauge", "Snapshots in the store.")

TRANSACTION = (SUCCESS, TIMESTAMP, DURATION, STEP)
STATE = (PENDING, PENDING_SINCE, FAILED, FRW, FRW_SINCE, NEWEST, SNAPSHOTS,
         *SAVED.values())
ALL = (*TRANSACTION, *RESTORED.values(), *STATE)
NAMES = frozenset(f.name for f in ALL)

# Why a bridge was not restored: a fixed set, so that a label stays bounded.
REASONS = ("refused", "bridge_missing", "not_served", "switch_gone", "snapshot_invalid",
           "error", "unknown")
