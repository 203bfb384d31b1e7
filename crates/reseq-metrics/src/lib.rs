//! # reseq-metrics
//!
//! What reseq tells CloudWatch: the [`CATALOGUE`] of metric names (the contract the SAM
//! template's and the CDK construct's alarms are checked against, printed by `reseq
//! metrics --json`), and [`Telemetry`], which writes one CloudWatch Embedded Metric Format
//! (EMF) record per batch, invocation and sweep — never one per message — to stdout or
//! stderr, where CloudWatch Logs extracts the metrics (Lambda does so by itself; on ECS the
//! log router must send the lines with the EMF header).
//!
//! Counting stays in the engine (`reseq_core::Stats`, atomics, no I/O). [`Telemetry`]
//! turns the difference between two snapshots into counters of the `metrics` facade, and
//! `metrics_cloudwatch_embedded` writes them out. That pair was chosen over `metrique`
//! for build time (3 crates against about 30) and because reseq already has its own
//! unit of work (the engine's stats): it needs an EMF writer, not a metrics framework.
//!
//! Dimensions never explode: every record carries `Service` (one value per deployment);
//! dead letters and invalid messages are counted a second time with `Reason` (the SPEC §7
//! reason names, a closed set). Never a context id.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;
use std::str::FromStr;
use std::sync::Mutex;

use metrics::Unit;
use reseq_core::engine::ReleaseLatencies;
use reseq_core::{AttentionList, Millis, Reason, Stats, StoreUsage};
use serde::Serialize;

/// The namespace metrics go to unless `RESEQ_METRICS_NAMESPACE` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "Reseq";
/// The dimension every record carries.
pub const SERVICE: &str = "Service";
/// The second dimension of the by-reason counters.
pub const REASON: &str = "Reason";

/// How a metric aggregates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A count since the previous record (CloudWatch: use `Sum`).
    Counter,
    /// A level at the time of the record (CloudWatch: use `Maximum`).
    Gauge,
    /// Individual values (CloudWatch: percentiles, `Average`, `Maximum`).
    Histogram,
}

/// One metric reseq emits.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Metric {
    /// The CloudWatch metric name.
    pub name: &'static str,
    /// The CloudWatch unit (`Count`, `Milliseconds`, `Seconds`).
    pub unit: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Also emitted with the `Reason` dimension.
    #[serde(skip)]
    pub by_reason: bool,
    /// What it counts or measures.
    pub description: &'static str,
}

const fn counter(name: &'static str, description: &'static str) -> Metric {
    Metric {
        name,
        unit: "Count",
        kind: Kind::Counter,
        by_reason: false,
        description,
    }
}

/// `Received`: messages received from the source.
pub const RECEIVED: Metric = counter("Received", "messages received from the source");
/// `Released`: messages handed to the handler successfully.
pub const RELEASED: Metric = counter("Released", "messages handed to the handler successfully");
/// `Staged`: messages written to the staging table to wait.
pub const STAGED: Metric = counter("Staged", "messages written to the staging table to wait");
/// `Duplicates`: copies of a position already staged or released.
pub const DUPLICATES: Metric = counter("Duplicates", "copies of a position already staged or released");
/// `Late`: messages whose position was skipped or came after the final one.
pub const LATE: Metric = counter(
    "Late",
    "messages whose position was skipped or came after the final one",
);
/// `Invalid`: messages without a usable context id or position.
pub const INVALID: Metric = Metric {
    by_reason: true,
    ..counter("Invalid", "messages without a usable context id or position")
};
/// `DeadLettered`: messages sent to the dead-letter queue.
pub const DEAD_LETTERED: Metric = Metric {
    by_reason: true,
    ..counter("DeadLettered", "messages sent to the dead-letter queue")
};
/// `Conflicts`: copies of a position with another body (the first copy wins).
pub const CONFLICTS: Metric = counter(
    "Conflicts",
    "copies of a position with another body (the first copy wins)",
);
/// `GapsSkipped`: gaps given up after --gap-timeout.
pub const GAPS_SKIPPED: Metric = counter("GapsSkipped", "gaps given up after --gap-timeout");
/// `PositionsSkipped`: positions inside the skipped gaps.
pub const POSITIONS_SKIPPED: Metric = counter("PositionsSkipped", "positions inside the skipped gaps");
/// `HandlerErrors`: handler calls that failed.
pub const HANDLER_ERRORS: Metric = counter("HandlerErrors", "handler calls that failed");
/// `Poison`: messages the handler failed on for good.
pub const POISON: Metric = counter("Poison", "messages the handler failed on for good");
/// `Blocked`: contexts newly blocked by a poison message.
pub const BLOCKED: Metric = counter("Blocked", "contexts newly blocked by a poison message");
/// `Expired`: waiting messages dead-lettered after the retention.
pub const EXPIRED: Metric = counter("Expired", "waiting messages dead-lettered after the retention");
/// `HeldCapacity`: messages held back by --max-staged (redelivered).
pub const HELD_CAPACITY: Metric = counter("HeldCapacity", "messages held back by --max-staged (redelivered)");
/// `HeldBusy`: messages held because another writer changed the context.
pub const HELD_BUSY: Metric = counter("HeldBusy", "messages held because another writer changed the context");
/// `HeldFailed`: messages held because the store, handler or DLQ failed.
pub const HELD_FAILED: Metric = counter("HeldFailed", "messages held because the store, handler or DLQ failed");
/// `LeaseConflicts`: releases left to the worker holding the lease.
pub const LEASE_CONFLICTS: Metric = counter("LeaseConflicts", "releases left to the worker holding the lease");
/// `LeasesTakenOver`: leases taken from a worker that died or stalled.
pub const LEASES_TAKEN_OVER: Metric = counter("LeasesTakenOver", "leases taken from a worker that died or stalled");
/// `Sweeps`: timer sweeps run.
pub const SWEEPS: Metric = counter("Sweeps", "timer sweeps run");
/// `SweepErrors`: timer sweeps that failed.
pub const SWEEP_ERRORS: Metric = counter("SweepErrors", "timer sweeps that failed");
/// `ContextsSwept`: contexts a sweep looked at.
pub const CONTEXTS_SWEPT: Metric = counter("ContextsSwept", "contexts a sweep looked at");
/// `DynamoDBReadUnits`: DynamoDB read capacity units consumed.
pub const READ_UNITS: Metric = counter("DynamoDBReadUnits", "DynamoDB read capacity units consumed");
/// `DynamoDBWriteUnits`: DynamoDB write capacity units consumed.
pub const WRITE_UNITS: Metric = counter("DynamoDBWriteUnits", "DynamoDB write capacity units consumed");
/// `ReleaseLatency`: arrival to release, per released message (at most 100 values per record, plus the maximum).
pub const RELEASE_LATENCY: Metric = Metric {
    name: "ReleaseLatency",
    unit: "Milliseconds",
    kind: Kind::Histogram,
    by_reason: false,
    description: "arrival to release, per released message (at most 100 values per record, plus the maximum)",
};
/// `BatchDuration`: one batch (or invocation, or sweep) from start to end.
pub const BATCH_DURATION: Metric = Metric {
    name: "BatchDuration",
    unit: "Milliseconds",
    kind: Kind::Histogram,
    by_reason: false,
    description: "one batch (or invocation, or sweep) from start to end",
};
/// `OldestWaitingAge`: age of the oldest message waiting for a missing position, over all contexts (from the sweep).
pub const OLDEST_WAITING_AGE: Metric = Metric {
    name: "OldestWaitingAge",
    unit: "Seconds",
    kind: Kind::Gauge,
    by_reason: false,
    description: "age of the oldest message waiting for a missing position, over all contexts (from the sweep)",
};
/// `BlockedContexts`: contexts stopped at a poison message, waiting for an operator (from the sweep; at most 1000).
pub const BLOCKED_CONTEXTS: Metric = Metric {
    name: "BlockedContexts",
    unit: "Count",
    kind: Kind::Gauge,
    by_reason: false,
    description: "contexts stopped at a poison message, waiting for an operator (from the sweep; at most 1000)",
};

/// Every metric reseq emits.
pub const CATALOGUE: [Metric; 28] = [
    RECEIVED,
    RELEASED,
    STAGED,
    DUPLICATES,
    LATE,
    INVALID,
    DEAD_LETTERED,
    CONFLICTS,
    GAPS_SKIPPED,
    POSITIONS_SKIPPED,
    HANDLER_ERRORS,
    POISON,
    BLOCKED,
    EXPIRED,
    HELD_CAPACITY,
    HELD_BUSY,
    HELD_FAILED,
    LEASE_CONFLICTS,
    LEASES_TAKEN_OVER,
    SWEEPS,
    SWEEP_ERRORS,
    CONTEXTS_SWEPT,
    READ_UNITS,
    WRITE_UNITS,
    RELEASE_LATENCY,
    BATCH_DURATION,
    OLDEST_WAITING_AGE,
    BLOCKED_CONTEXTS,
];

/// The catalogue as `reseq metrics --json` prints it: what the templates' checks read.
pub fn catalogue_json(namespace: &str) -> serde_json::Value {
    let metrics: Vec<serde_json::Value> = CATALOGUE
        .iter()
        .map(|m| {
            let mut dimensions = vec![vec![SERVICE]];
            if m.by_reason {
                dimensions.push(vec![SERVICE, REASON]);
            }
            serde_json::json!({
                "name": m.name,
                "unit": m.unit,
                "kind": m.kind,
                "dimensions": dimensions,
                "description": m.description,
            })
        })
        .collect();
    serde_json::json!({
        "namespace": namespace,
        "dimensions": [[SERVICE], [SERVICE, REASON]],
        "metrics": metrics,
    })
}

/// Where records go (`--metrics`, `RESEQ_METRICS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// No records.
    Off,
    /// Standard output (Lambda turns it into metrics).
    Stdout,
    /// Standard error (the worker's default; e.g. FireLens on ECS).
    Stderr,
}

impl FromStr for Sink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Sink::Off),
            "stdout" => Ok(Sink::Stdout),
            "stderr" => Ok(Sink::Stderr),
            _ => Err(format!("{s:?} is not a metrics destination: use stdout, stderr or off")),
        }
    }
}

/// What one record reports: counters as totals since start (the difference from the
/// previous record is emitted), gauges and histogram values as they are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// Counter totals since start, by metric name.
    pub totals: BTreeMap<&'static str, u64>,
    /// By-reason counter totals since start: (metric name, reason) → total.
    pub by_reason: BTreeMap<(&'static str, String), u64>,
    /// DynamoDB read capacity consumed since start.
    pub read_units: f64,
    /// DynamoDB write capacity consumed since start.
    pub write_units: f64,
    /// Release latencies since the previous record ([`RELEASE_LATENCY`]).
    pub release_latencies_ms: Vec<u64>,
    /// How long the batch, invocation or sweep took ([`BATCH_DURATION`]).
    pub batch_duration_ms: Option<u64>,
    /// Set by sweeps that read the attention index.
    pub oldest_waiting_age_s: Option<f64>,
    /// Set by sweeps that read the attention index ([`BLOCKED_CONTEXTS`]).
    pub blocked_contexts: Option<u64>,
}

/// How many blocked contexts the sweep counts at most for [`BLOCKED_CONTEXTS`].
pub const BLOCKED_GAUGE_LIMIT: usize = 1000;

impl Observation {
    /// The counters of an engine and its adapter: `stats` from the engine, `invalid` the
    /// messages rejected before it (by reason) and those of them that went to the DLQ.
    pub fn of(
        stats: &Stats,
        invalid: &BTreeMap<Reason, u64>,
        invalid_dead_lettered: &BTreeMap<Reason, u64>,
        usage: StoreUsage,
    ) -> Self {
        let invalid_total: u64 = invalid.values().sum();
        let invalid_dead_lettered_total: u64 = invalid_dead_lettered.values().sum();
        let totals = BTreeMap::from([
            (RECEIVED.name, stats.received + invalid_total),
            (RELEASED.name, stats.released),
            (STAGED.name, stats.staged),
            (DUPLICATES.name, stats.duplicates),
            (LATE.name, stats.late),
            (INVALID.name, invalid_total),
            (DEAD_LETTERED.name, stats.dead_lettered + invalid_dead_lettered_total),
            (CONFLICTS.name, stats.conflicts),
            (GAPS_SKIPPED.name, stats.gaps_skipped),
            (POSITIONS_SKIPPED.name, stats.positions_skipped),
            (HANDLER_ERRORS.name, stats.handler_errors),
            (POISON.name, stats.poison),
            (BLOCKED.name, stats.blocked),
            (EXPIRED.name, stats.expired),
            (HELD_CAPACITY.name, stats.held_capacity),
            (HELD_BUSY.name, stats.held_busy),
            (HELD_FAILED.name, stats.held_failed),
            (LEASE_CONFLICTS.name, stats.lease_conflicts),
            (LEASES_TAKEN_OVER.name, stats.leases_taken_over),
        ]);
        let mut by_reason = BTreeMap::new();
        for (reason, n) in stats.dead_lettered_by_reason.iter().chain(invalid_dead_lettered) {
            *by_reason.entry((DEAD_LETTERED.name, reason.to_string())).or_default() += *n;
        }
        for (reason, n) in invalid {
            by_reason.insert((INVALID.name, reason.to_string()), *n);
        }
        Observation {
            totals,
            by_reason,
            read_units: usage.read_units,
            write_units: usage.write_units,
            ..Observation::default()
        }
    }

    /// Adds the sweep's own counters (totals since start).
    pub fn with_sweeps(mut self, sweeps: u64, errors: u64, contexts: u64) -> Self {
        self.totals.insert(SWEEPS.name, sweeps);
        self.totals.insert(SWEEP_ERRORS.name, errors);
        self.totals.insert(CONTEXTS_SWEPT.name, contexts);
        self
    }

    /// Adds the release latencies since the previous record: the sample, and the maximum
    /// once more when the sample left values out, so that `Maximum` stays true.
    pub fn with_latencies(mut self, latencies: ReleaseLatencies) -> Self {
        let sampled_max = latencies.sample_ms.iter().copied().max().unwrap_or(0);
        self.release_latencies_ms = latencies.sample_ms;
        if latencies.count as usize > self.release_latencies_ms.len() && latencies.max_ms > sampled_max {
            self.release_latencies_ms.push(latencies.max_ms);
        }
        self
    }

    /// Adds the gauges, from the attention index, at `now`.
    pub fn with_gauges(mut self, attention: &AttentionList, now: Millis) -> Self {
        self.oldest_waiting_age_s = Some(
            attention
                .waiting
                .first()
                .map_or(0.0, |(_, since)| now.since(*since).0 as f64 / 1000.0),
        );
        self.blocked_contexts = Some(attention.blocked.len() as u64);
        self
    }
}

/// The EMF writer of one process. The `metrics` recorder is process-global, so there is
/// one `Telemetry` per process ([`Telemetry::install`]); concurrent batches share it, and
/// each record carries what changed since the previous one, whoever wrote that.
pub struct Telemetry {
    collector: Option<&'static metrics_cloudwatch_embedded::Collector>,
    sink: Sink,
    /// Totals as of the previous record: counters are emitted as differences.
    last: Mutex<Observation>,
}

/// Why [`Telemetry::install`] failed.
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(String);

impl Telemetry {
    /// A telemetry that writes nothing (`--metrics off`, tests).
    pub fn off() -> Telemetry {
        Telemetry {
            collector: None,
            sink: Sink::Off,
            last: Mutex::new(Observation::default()),
        }
    }

    /// Installs the process-wide EMF recorder: records go to `sink`, in `namespace`, with
    /// `Service = service`. Fails if a recorder is installed already.
    pub fn install(sink: Sink, namespace: &str, service: &str) -> Result<Telemetry, MetricsError> {
        if sink == Sink::Off {
            return Ok(Telemetry::off());
        }
        let collector = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(namespace.to_string())
            .with_dimension(SERVICE, service.to_string())
            .init()
            .map_err(|e| MetricsError(e.to_string()))?;
        for m in CATALOGUE {
            let unit = Unit::from_string(unit_name(m.unit));
            match m.kind {
                Kind::Counter => metrics::describe_counter!(m.name, unit.unwrap_or(Unit::Count), m.description),
                Kind::Gauge => metrics::describe_gauge!(m.name, unit.unwrap_or(Unit::Count), m.description),
                Kind::Histogram => metrics::describe_histogram!(m.name, unit.unwrap_or(Unit::Count), m.description),
            }
        }
        Ok(Telemetry {
            collector: Some(collector),
            sink,
            last: Mutex::new(Observation::default()),
        })
    }

    /// Adds a property (not a dimension) to every record, e.g. the input queue's name.
    pub fn set_property(&self, name: &'static str, value: &str) {
        if let Some(collector) = self.collector {
            collector.set_property(name, value.to_string());
        }
    }

    /// Emits one record: the counters' growth since the previous record, and the gauges and
    /// values of `now`.
    pub fn record(&self, now: Observation) {
        let Some(collector) = self.collector else {
            return;
        };
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            for (name, total) in &now.totals {
                let grew = total.saturating_sub(last.totals.get(name).copied().unwrap_or(0));
                if grew > 0 {
                    metrics::counter!(*name).increment(grew);
                }
            }
            for ((name, reason), total) in &now.by_reason {
                let before = last.by_reason.get(&(*name, reason.clone())).copied().unwrap_or(0);
                let grew = total.saturating_sub(before);
                if grew > 0 {
                    metrics::counter!(*name, REASON => reason.clone()).increment(grew);
                }
            }
            let units = |now: f64, before: f64| (now - before).max(0.0).round() as u64;
            let read = units(now.read_units, last.read_units);
            let write = units(now.write_units, last.write_units);
            if read > 0 {
                metrics::counter!(READ_UNITS.name).increment(read);
            }
            if write > 0 {
                metrics::counter!(WRITE_UNITS.name).increment(write);
            }
            // Units are emitted whole: keep the remainder for the next record.
            let mut kept = now.clone();
            kept.read_units = last.read_units + read as f64;
            kept.write_units = last.write_units + write as f64;
            kept.release_latencies_ms.clear();
            *last = kept;
        }
        for ms in &now.release_latencies_ms {
            metrics::histogram!(RELEASE_LATENCY.name).record(*ms as f64);
        }
        if let Some(ms) = now.batch_duration_ms {
            metrics::histogram!(BATCH_DURATION.name).record(ms as f64);
        }
        if let Some(age) = now.oldest_waiting_age_s {
            metrics::gauge!(OLDEST_WAITING_AGE.name).set(age);
        }
        if let Some(blocked) = now.blocked_contexts {
            metrics::gauge!(BLOCKED_CONTEXTS.name).set(blocked as f64);
        }
        let written = match self.sink {
            Sink::Off => Ok(()),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                collector.flush(&mut out).and_then(|()| out.flush())
            }
            Sink::Stderr => {
                let mut out = std::io::stderr().lock();
                collector.flush(&mut out).and_then(|()| out.flush())
            }
        };
        if let Err(err) = written {
            tracing::warn!(error = %err, "could not write a metrics record");
        }
    }
}

/// The `metrics` crate's spelling of a CloudWatch unit name.
fn unit_name(cloudwatch: &str) -> &'static str {
    match cloudwatch {
        "Milliseconds" => "milliseconds",
        "Seconds" => "seconds",
        _ => "count",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_unique_names_and_every_constant() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        let json = catalogue_json("Reseq");
        let listed = json["metrics"].as_array().unwrap();
        assert_eq!(listed.len(), CATALOGUE.len());
        let dead = listed.iter().find(|m| m["name"] == "DeadLettered").unwrap();
        assert_eq!(
            dead["dimensions"],
            serde_json::json!([["Service"], ["Service", "Reason"]])
        );
    }

    #[test]
    fn sinks_parse_their_three_names() {
        assert_eq!("stdout".parse(), Ok(Sink::Stdout));
        assert_eq!("stderr".parse(), Ok(Sink::Stderr));
        assert_eq!("off".parse(), Ok(Sink::Off));
        assert!("file".parse::<Sink>().unwrap_err().contains("stdout, stderr or off"));
    }
}
