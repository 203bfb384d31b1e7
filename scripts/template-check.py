#!/usr/bin/env python3
"""Checks what cfn-lint does not see in template.yaml (called by scripts/lint-template.sh).

cfn-lint validates the SAM template against schemas, but it lets through a misspelt
property of an SQS event, a batching window on a FIFO event source, an alarm on a metric
nobody emits, and everything that ties the template to reseq itself. This script checks
those, each with a message naming what is wrong.

The template has parameters that switch resources on and off (a standard queue, your own
queues and table, an HTTP output, an SNS topic). So the checks run once per *scenario*:
the defaults, then parameter sets that flip every switch (see SCENARIOS). For each, the
template is evaluated as CloudFormation would (Conditions, Fn::If, AWS::NoValue, Ref,
Fn::Sub, Fn::Select, Fn::Split, Fn::FindInMap; a resource attribute stays a token such
as <<Table.Arn>>), and checked:

- the function: provided.al2023, handler `bootstrap`, built by cargo-lambda
  (`rust-cargolambda`, `Binary` = the reseq-lambda `bootstrap` bin) from the workspace
  root, one architecture, `Tracing: Active`;
- the SQS event source: only property names SAM knows, BatchSize <= 10,
  ReportBatchItemFailures, no MaximumBatchingWindowInSeconds, enabled, on the input queue
  (this template's or the one a parameter names);
- the queues: FIFO ones named .fifo, standard ones with no FIFO-only property; the input
  queue of the type QueueType says; a created input queue with visibility timeout >= 6 x
  the function timeout (for every timeout the template allows) and a redrive policy
  (maxReceiveCount >= 5) to the DLQ, of its own type; FIFO output queue and DLQ in
  high-throughput mode (DeduplicationScope messageGroup, FifoThroughputLimit
  perMessageGroupId);
- the environment: every variable set is one the Lambda reads (the `env = "RESEQ_..."`
  names of the settings structs it flattens, and the RESEQ_* names reseq-metrics reads);
  the required ones are set; a parameter left at its default leaves its variable unset or
  at reseq's own default (DELIBERATE_DEFAULTS lists the exceptions), and each setting's
  parameter reaches its variable; RESEQ_TABLE, RESEQ_OUTPUT (the OutputKind), RESEQ_DLQ_URL
  point at the right resource (a URL derived from an ARN parameter is checked against that
  ARN); RESEQ_LEASE_DURATION longer than the timeout and RESEQ_HTTP_TIMEOUT within a
  quarter of it, for every timeout; RESEQ_GAP_TIMEOUT shorter than RESEQ_RETENTION;
  RESEQ_SERVICE and RESEQ_METRICS (the dimension the alarms select, metrics on);
- the DynamoDB table: exactly reseq's layout (keys, the `due` and `attention` indexes and
  no other, TTL, on demand), which must still be what crates/reseq-dynamodb/src creates;
- a Schedule event (the timer sweep) that sends EventBridge's own payload;
- the role: every DynamoDB request the store makes on the table, Query on both indexes,
  SQS receive on the input queue and send on the output and the DLQ, logs, X-Ray; no
  wildcard action, Resource "*" only for X-Ray;
- the alarms: the eight of docs/RUNBOOK.md (DLQ not empty, oldest waiting age, blocked
  contexts, function errors and throttles, sweep errors, sweep not running, input queue
  age), each on the right queue, function or Service; every metric in reseq's namespace
  is one the code emits, with one of its dimension sets, a statistic that suits its kind
  and no other unit (the catalogue comes from `reseq metrics --json`, passed as
  --metrics FILE); with NotificationTopicArn set every alarm notifies it, without it none
  has an action;
- the dashboard: valid JSON, every metric reseq emits shown with each of its dimension
  sets, every alarm in its alarm widget, the queue, function and table metrics of this
  stack, the decision-log query on the function's log group;
- the Rules: the scenarios pass them, the broken parameter sets in BROKEN are refused;
- Outputs with the queue URLs and the table name.

With --transformed-out FILE it also runs the SAM transform (aws-sam-translator, offline,
the CodeUri replaced by a placeholder) and writes the resulting CloudFormation template
there, so that cfn-lint can check the generated event source mapping, rule and function.

Exit status 0 when every check passes (silent), 1 otherwise (one line per failure on
stderr, with the scenarios it failed in unless it failed in all), 2 when the template or
the catalogue cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# --- What reseq expects ------------------------------------------------------------

# The table layout, mirroring crates/reseq-dynamodb/src/codec.rs (the constants below) and
# create_table in crates/reseq-dynamodb/src/table.rs (attribute types, key types, KEYS_ONLY
# projections, PAY_PER_REQUEST). The check below also reads those Rust files, so a change
# there fails here until both agree again.
EXPECTED_CONSTANTS = {
    "PK": "pk",
    "SK": "sk",
    "DUE_SHARD": "due_shard",
    "DUE_AT": "due_at",
    "DUE_INDEX": "due",
    "ATT_SHARD": "att_shard",
    "ATT": "att",
    "ATTENTION_INDEX": "attention",
    "TTL": "ttl",
}
PK, SK = EXPECTED_CONSTANTS["PK"], EXPECTED_CONSTANTS["SK"]
DUE_SHARD, DUE_AT = EXPECTED_CONSTANTS["DUE_SHARD"], EXPECTED_CONSTANTS["DUE_AT"]
ATT_SHARD, ATT = EXPECTED_CONSTANTS["ATT_SHARD"], EXPECTED_CONSTANTS["ATT"]
DUE_INDEX, ATTENTION_INDEX = EXPECTED_CONSTANTS["DUE_INDEX"], EXPECTED_CONSTANTS["ATTENTION_INDEX"]
TTL = EXPECTED_CONSTANTS["TTL"]
EXPECTED_ATTRIBUTES = {PK: "S", SK: "N", DUE_SHARD: "N", DUE_AT: "N", ATT_SHARD: "N", ATT: "S"}
EXPECTED_TABLE_KEYS = [(PK, "HASH"), (SK, "RANGE")]
EXPECTED_INDEX_KEYS = [(DUE_SHARD, "HASH"), (DUE_AT, "RANGE")]
# Every global secondary index: name -> key schema (all KEYS_ONLY).
EXPECTED_INDEXES = {
    DUE_INDEX: EXPECTED_INDEX_KEYS,
    ATTENTION_INDEX: [(ATT_SHARD, "HASH"), (ATT, "RANGE")],
}

# The properties of a SAM `Type: SQS` event (samtranslator's SQSEventProperties).
KNOWN_SQS_EVENT_PROPERTIES = {
    "Queue",
    "BatchSize",
    "Enabled",
    "FilterCriteria",
    "FunctionResponseTypes",
    "KmsKeyArn",
    "MaximumBatchingWindowInSeconds",
    "MetricsConfig",
    "ProvisionedPollerConfig",
    "ScalingConfig",
}
FIFO_MAX_BATCH = 10
MIN_VISIBILITY_FACTOR = 6
MIN_MAX_RECEIVE_COUNT = 5
FIFO_ONLY_QUEUE_PROPERTIES = ("FifoQueue", "ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit")

# Environment variables reseq reads that are not RESEQ_* settings.
OTHER_ENV_READ = {"RUST_LOG"}
REQUIRED_ENV = [
    "RESEQ_TABLE",
    "RESEQ_OUTPUT",
    "RESEQ_DLQ_URL",
    "RESEQ_LEASE_DURATION",
    "RESEQ_SERVICE",
    "RESEQ_METRICS",
]
# Variables the template sets, by default, to something else than reseq's own default,
# and why. Any other variable is unset or at reseq's default when every parameter is.
DELIBERATE_DEFAULTS = {
    "RESEQ_TABLE": "the stack's table",
    "RESEQ_OUTPUT": "the stack's output queue",
    "RESEQ_DLQ_URL": "the stack's DLQ",
    "RESEQ_LEASE_DURATION": "function timeout + 30 s",
    "RESEQ_INVALID": "dlq: on a FIFO queue `redrive` blocks the message group for MaxReceiveCount x visibility",
    "RESEQ_SERVICE": "the NamePrefix, the alarms' Service dimension",
    "RESEQ_METRICS": "stdout",
}
# Metrics are only any use in the log when they are on.
METRICS_ON = {"stdout", "stderr"}

# DynamoDB requests made only by `reseq init` (create_table), never by the function.
ADMIN_DYNAMODB_CALLS = {"create_table", "describe_time_to_live", "update_time_to_live", "delete_table", "update_table"}
# SDK calls of the store, and the IAM action that authorizes each. TransactWriteItems has
# no action of its own: each Put/Delete/Update/ConditionCheck inside is authorized alone.
DYNAMODB_CALLS = {
    "get_item": "GetItem",
    "put_item": "PutItem",
    "delete_item": "DeleteItem",
    "update_item": "UpdateItem",
    "query": "Query",
    "scan": "Scan",
    "batch_write_item": "BatchWriteItem",
    "batch_get_item": "BatchGetItem",
    "describe_table": "DescribeTable",
    "transact_write_items": None,
    "transact_get_items": None,
}
TRANSACT_ITEMS = {
    "Put": "PutItem",
    "Delete": "DeleteItem",
    "Update": "UpdateItem",
    "ConditionCheck": "ConditionCheckItem",
}
XRAY_ACTIONS = ("xray:PutTraceSegments", "xray:PutTelemetryRecords")

# Statistics that mean something for each kind of metric reseq emits. A counter is emitted
# once per batch, invocation or sweep with the count of that record: only its Sum (or how
# many records, SampleCount) is a total. A gauge is a level: its Maximum, Minimum, Average.
STATISTICS = {
    "counter": {"Sum", "SampleCount"},
    "gauge": {"Maximum", "Minimum", "Average"},
    "histogram": {"Maximum", "Minimum", "Average", "SampleCount"},
}
PERCENTILE = re.compile(r"p\d{1,2}(\.\d+)?")

# --- Scenarios -----------------------------------------------------------------------

# Sample values (no AWS account: the pseudo parameters are fixed too).
PSEUDO = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "reseq-stack",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/reseq-stack/1",
}


def sqs_arn(name: str) -> str:
    return f"arn:aws:sqs:eu-west-1:210987654321:{name}"


TOPIC = "arn:aws:sns:us-east-1:123456789012:on-call"
# What each setting parameter is set to in the "every setting" scenario, and the variable
# it must then reach with that value.
SETTING_PARAMETERS = {
    "ContextAttribute": ("RESEQ_CONTEXT_ATTR", "orderId"),
    "SequenceAttribute": ("RESEQ_SEQ_ATTR", "seqNo"),
    "ContextPath": ("RESEQ_CONTEXT_PATH", "/order/id"),
    "SequencePath": ("RESEQ_SEQ_PATH", "/order/seq"),
    "ContextFrom": ("RESEQ_CONTEXT_FROM", "group-id"),
    "FinalAttribute": ("RESEQ_FINAL_ATTR", "last"),
    "FinalPath": ("RESEQ_FINAL_PATH", "/order/last"),
    "FirstSequence": ("RESEQ_FIRST_SEQ", 0),
    "GapTimeout": ("RESEQ_GAP_TIMEOUT", "30s"),
    "LatePolicy": ("RESEQ_LATE", "deliver"),
    "MaxStaged": ("RESEQ_MAX_STAGED", 500),
    "Retention": ("RESEQ_RETENTION", "7d"),
    "OnPoison": ("RESEQ_ON_POISON", "skip"),
    "MaxAttempts": ("RESEQ_MAX_ATTEMPTS", 3),
    "InvalidMessages": ("RESEQ_INVALID", "redrive"),
    "HttpTimeout": ("RESEQ_HTTP_TIMEOUT", "5s"),
    "OutputHttpUrl": ("RESEQ_OUTPUT", "https://orders.example.com/in"),
}
SCENARIOS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("QueueType=standard", {"QueueType": "standard"}),
    (
        "existing queues and table",
        {
            "ExistingInputQueueArn": sqs_arn("orders-in.fifo"),
            "ExistingDeadLetterQueueArn": sqs_arn("orders-dlq.fifo"),
            "ExistingOutputQueueArn": sqs_arn("orders-out.fifo"),
            "ExistingTableName": "orders-staging",
        },
    ),
    ("existing standard input queue", {"QueueType": "standard", "ExistingInputQueueArn": sqs_arn("events")}),
    ("existing DLQ", {"ExistingDeadLetterQueueArn": sqs_arn("orders-dlq.fifo")}),
    ("existing standard output queue", {"ExistingOutputQueueArn": sqs_arn("released")}),
    ("OutputKind=stdout", {"OutputKind": "stdout"}),
    (
        "every setting",
        {
            "OutputKind": "http",
            "NotificationTopicArn": TOPIC,
            "MaxConcurrency": 5,
            **{param: value for param, (_, value) in SETTING_PARAMETERS.items()},
        },
    ),
]
# Parameter sets the template's Rules must refuse.
BROKEN: list[tuple[str, dict[str, Any]]] = [
    ("OutputKind=http without OutputHttpUrl", {"OutputKind": "http"}),
    ("OutputHttpUrl with OutputKind=sqs", {"OutputHttpUrl": "https://orders.example.com/in"}),
    ("ExistingOutputQueueArn with OutputKind=stdout", {"OutputKind": "stdout", "ExistingOutputQueueArn": sqs_arn("x")}),
]


# --- Loading -------------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags: `!Ref X` -> {"Ref": "X"}, `!GetAtt A.B` ->
    {"Fn::GetAtt": ["A", "B"]}, `!Sub`, `!If`, ... -> {"Fn::<name>": ...}."""


def _construct_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        template = yaml.load(f, Loader=CfnLoader)
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise ValueError("no Resources mapping")
    return template


@dataclass
class Metric:
    name: str
    unit: str
    kind: str
    dimensions: list[tuple[str, ...]]


@dataclass
class Catalogue:
    """What `reseq metrics --json` prints: the namespace and every metric reseq emits."""

    namespace: str
    metrics: dict[str, Metric]


def load_catalogue(path: Path) -> Catalogue:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("namespace"), str) or not data["namespace"]:
        raise ValueError('no "namespace"')
    metrics: dict[str, Metric] = {}
    for m in data.get("metrics") or []:
        name, unit, kind, dims = m.get("name"), m.get("unit"), m.get("kind"), m.get("dimensions")
        if not isinstance(name, str) or not isinstance(unit, str) or kind not in STATISTICS:
            raise ValueError(f"a metric needs a name, a unit and a kind ({', '.join(STATISTICS)}): {m}")
        if not isinstance(dims, list) or not dims or not all(isinstance(d, list) and d for d in dims):
            raise ValueError(f"metric {name}: dimensions must be a non-empty list of dimension sets")
        metrics[name] = Metric(name, unit, kind, [tuple(d) for d in dims])
    if not metrics:
        raise ValueError('no "metrics"')
    return Catalogue(data["namespace"], metrics)


# --- Reading reseq's sources ---------------------------------------------------------


def read(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


def code_only(text: str) -> str:
    """Rust source without `//` comments and without the trailing `#[cfg(test)]` module."""
    text = text.split("#[cfg(test)]", 1)[0]
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def settings_env_names() -> tuple[set[str], str]:
    """The RESEQ_* names the Lambda reads: the `env = "..."` of the settings structs that
    `LambdaSettings` flattens (all of reseq-settings when that cannot be told)."""
    settings = read("crates/reseq-settings/src/lib.rs")
    per_struct: dict[str, set[str]] = {}
    for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\n\}", settings, re.S):
        per_struct[m.group(1)] = set(re.findall(r'env\s*=\s*"(RESEQ_[A-Z0-9_]+)"', m.group(2)))
    everything = set(re.findall(r'env\s*=\s*"(RESEQ_[A-Z0-9_]+)"', settings))
    try:
        lambda_lib = read("crates/reseq-lambda/src/lib.rs")
    except OSError:
        return everything, "crates/reseq-settings/src/lib.rs"
    body = re.search(r"pub struct LambdaSettings\s*\{(.*?)\n\}", lambda_lib, re.S)
    flattened = re.findall(r"pub \w+\s*:\s*(\w+)", body.group(1)) if body else []
    if not flattened or any(t not in per_struct for t in flattened):
        return everything, "crates/reseq-settings/src/lib.rs"
    names = set().union(*(per_struct[t] for t in flattened))
    return names, f"the settings LambdaSettings flattens ({', '.join(flattened)})"


def metrics_env_names() -> set[str]:
    """The RESEQ_* variables the metrics code reads itself (RESEQ_METRICS, RESEQ_SERVICE,
    RESEQ_METRICS_NAMESPACE): string literals in crates/reseq-metrics/src outside tests."""
    names: set[str] = set()
    for path in sorted((ROOT / "crates/reseq-metrics/src").rglob("*.rs")):
        names |= set(re.findall(r'"(RESEQ_[A-Z0-9_]+)"', code_only(path.read_text(encoding="utf-8"))))
    return names


def settings_defaults() -> dict[str, str]:
    """reseq's own default of each RESEQ_* setting that has one (`default_value = "..."`,
    `default_value_t = N` in crates/reseq-settings/src/lib.rs)."""
    settings = read("crates/reseq-settings/src/lib.rs")
    defaults = {}
    for m in re.finditer(r"#\[arg\((.*?)\)\]", settings, re.S):
        attr = m.group(1)
        env = re.search(r'env\s*=\s*"(RESEQ_[A-Z0-9_]+)"', attr)
        text = re.search(r'default_value\s*=\s*"([^"]*)"', attr)
        number = re.search(r"default_value_t\s*=\s*([0-9_]+)", attr)
        if env and text:
            defaults[env.group(1)] = text.group(1)
        elif env and number:
            defaults[env.group(1)] = number.group(1).replace("_", "")
    return defaults


def store_dynamodb_actions() -> dict[str, str]:
    """IAM action -> a file that makes the request, for every DynamoDB request in
    crates/reseq-dynamodb/src outside tests and `reseq init`'s table creation."""
    calls = "|".join(sorted(set(DYNAMODB_CALLS) | ADMIN_DYNAMODB_CALLS, key=len, reverse=True))
    actions: dict[str, str] = {}
    for path in sorted((ROOT / "crates/reseq-dynamodb/src").rglob("*.rs")):
        code = code_only(path.read_text(encoding="utf-8"))
        rel = str(path.relative_to(ROOT))
        for name in re.findall(rf"\.\s*({calls})\(\)", code):
            action = None if name in ADMIN_DYNAMODB_CALLS else DYNAMODB_CALLS[name]
            if action:
                actions.setdefault(action, rel)
        for item in re.findall(r"\b(Put|Delete|Update|ConditionCheck)::builder\(\)", code):
            actions.setdefault(TRANSACT_ITEMS[item], rel)
    if not actions:
        raise ValueError("found no DynamoDB request in crates/reseq-dynamodb/src: update store_dynamodb_actions")
    return actions


def rust_table_layout() -> list[str]:
    """Differences between EXPECTED_* above and what reseq-dynamodb's Rust code says."""
    problems = []
    codec = read("crates/reseq-dynamodb/src/codec.rs")
    for const, value in EXPECTED_CONSTANTS.items():
        m = re.search(rf'pub(?:\([a-z]+\))? const {const}: &str = "([^"]*)";', codec)
        if not m:
            problems.append(f"crates/reseq-dynamodb/src/codec.rs no longer defines `const {const}: &str`")
        elif m.group(1) != value:
            problems.append(
                f"crates/reseq-dynamodb/src/codec.rs has {const} = {m.group(1)!r}, the template check expects "
                f"{value!r}: change template.yaml and EXPECTED_CONSTANTS in scripts/template-check.py together"
            )
    table = code_only(read("crates/reseq-dynamodb/src/table.rs"))
    create = re.search(r"pub async fn create_table\b(.*?)\n\}", table, re.S)
    if not create:
        return problems + ["crates/reseq-dynamodb/src/table.rs has no `pub async fn create_table`"]
    body = create.group(1)
    name = lambda c: EXPECTED_CONSTANTS.get(c, c)  # noqa: E731
    attrs = {name(c): t for c, t in re.findall(r"attr\((\w+), ScalarAttributeType::(\w+)\)", body)}
    if attrs != EXPECTED_ATTRIBUTES:
        problems.append(f"create_table (table.rs) defines attributes {attrs}, the check expects {EXPECTED_ATTRIBUTES}")
    call = re.search(r"\.create_table\(\)(.*?)\.send\(\)", body, re.S)
    keys = [(name(c), k.upper()) for c, k in re.findall(r"key\((\w+), KeyType::(\w+)\)", call.group(1) if call else "")]
    if keys != EXPECTED_TABLE_KEYS:
        problems.append(f"create_table (table.rs) gives the table the keys {keys}, the check expects {EXPECTED_TABLE_KEYS}")
    # Every index built anywhere in table.rs: .index_name(X).key_schema(key(A, Hash)).key_schema(key(B, Range))
    # .projection(... ProjectionType::P ...).
    indexes = {}
    for m in re.finditer(
        r"\.index_name\((\w+)\)\s*\.key_schema\(key\((\w+), KeyType::Hash\)\?\)\s*"
        r"\.key_schema\(key\((\w+), KeyType::Range\)\?\)\s*\.projection\([^;]*?ProjectionType::(\w+)",
        table,
        re.S,
    ):
        indexes[name(m.group(1))] = ([(name(m.group(2)), "HASH"), (name(m.group(3)), "RANGE")], m.group(4))
    expected = {index: (keys, "KeysOnly") for index, keys in EXPECTED_INDEXES.items()}
    if indexes != expected:
        problems.append(f"table.rs builds the indexes {indexes}, the check expects {expected}")
    for needle, what in [("BillingMode::PayPerRequest", "PAY_PER_REQUEST billing")]:
        if needle not in body:
            problems.append(
                f"create_table (table.rs) no longer has {what} ({needle}): update the template and the check"
            )
    if ".attribute_name(TTL)" not in table:
        problems.append("table.rs no longer turns TTL on for the attribute TTL: update the template and the check")
    return problems


# --- Evaluating the template for one set of parameter values ---------------------------


class Unknown(Exception):
    pass


NO_VALUE = object()
TOKEN = re.compile(r"<<([A-Za-z0-9]+)(?:\.([A-Za-z0-9.]+))?>>")


def token(logical: str, attribute: str | None = None) -> str:
    """How a resource's Ref (`<<X>>`) or attribute (`<<X.Arn>>`) stands in evaluated values."""
    return f"<<{logical}.{attribute}>>" if attribute else f"<<{logical}>>"


class Evaluator:
    """The template as CloudFormation would see it with the given parameter values."""

    def __init__(self, template: dict, overrides: dict[str, Any]):
        self.t = template
        specs = template.get("Parameters") or {}
        self.params = {p: s.get("Default") for p, s in specs.items() if isinstance(s, dict)}
        self.params.update(overrides)
        missing = sorted(p for p, v in self.params.items() if v is None)
        if missing:
            raise Unknown(f"parameters without a value: {missing}")
        self.resources = template.get("Resources") or {}
        self._conditions: dict[str, bool] = {}
        self.dangling: set[str] = set()

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            spec = (self.t.get("Conditions") or {}).get(name)
            if spec is None:
                raise Unknown(f"no condition {name}")
            self._conditions[name] = self.truth(spec)
        return self._conditions[name]

    def truth(self, node: Any) -> bool:
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Equals":
                a, b = (self.value(x) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.truth(arg[0])
            if key == "Fn::And":
                return all(self.truth(x) for x in arg)
            if key == "Fn::Or":
                return any(self.truth(x) for x in arg)
            if key == "Fn::Contains":
                items, item = self.value(arg[0]), self.value(arg[1])
                return str(item) in [str(i) for i in items]
        raise Unknown(f"not a condition: {json.dumps(node)}")

    def present(self, logical: str) -> bool:
        r = self.resources.get(logical)
        return isinstance(r, dict) and (not r.get("Condition") or self.condition(r["Condition"]))

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.params:
            return self.params[name]
        if name in self.resources:
            if not self.present(name):
                self.dangling.add(name)
            return token(name)
        raise Unknown(f"Ref {name}")

    def getatt(self, logical: str, attribute: str) -> str:
        if logical not in self.resources:
            raise Unknown(f"GetAtt {logical}.{attribute}")
        if not self.present(logical):
            self.dangling.add(logical)
        return token(logical, attribute)

    def sub(self, text: str, variables: dict[str, Any]) -> str:
        def one(m: re.Match) -> str:
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                logical, attribute = name.split(".", 1)
                return self.getatt(logical, attribute)
            v = self.ref(name)
            return json.dumps(v) if isinstance(v, (list, dict)) else str(v)

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                parts = arg.split(".", 1) if isinstance(arg, str) else arg
                return self.getatt(str(parts[0]), str(parts[1]))
            if key == "Fn::If":
                return self.value(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg, {})
                return self.sub(arg[0], {k: self.value(v) for k, v in (arg[1] or {}).items()})
            if key == "Fn::Select":
                items = self.value(arg[1])
                index = int(self.value(arg[0]))
                if not isinstance(items, list) or not 0 <= index < len(items):
                    raise Unknown(f"Fn::Select {index} of {items!r}")
                return items[index]
            if key == "Fn::Split":
                return str(self.value(arg[1])).split(arg[0])
            if key == "Fn::Join":
                return arg[0].join(str(v) for v in self.value(arg[1]))
            if key == "Fn::FindInMap":
                name, first, second = (str(self.value(a)) for a in arg)
                try:
                    return self.t["Mappings"][name][first][second]
                except (KeyError, TypeError):
                    raise Unknown(f"FindInMap [{name}, {first}, {second}]: no such entry") from None
            if key.startswith("Fn::"):
                raise Unknown(f"{key} is not evaluated by template-check")
        out = {}
        for k, v in node.items():
            v = self.value(v)
            if v is not NO_VALUE:
                out[k] = v
        return out

    def resolve(self) -> dict:
        """The resources (and outputs) that exist, with every value evaluated. Metadata and
        Type are kept as written."""
        resolved: dict[str, dict] = {}
        for logical, r in self.resources.items():
            if not isinstance(r, dict) or not self.present(logical):
                continue
            out = {k: v for k, v in r.items() if k not in ("Properties", "Condition")}
            out["Properties"] = self.value(r.get("Properties") or {})
            resolved[logical] = out
        outputs = {}
        for name, o in (self.t.get("Outputs") or {}).items():
            if isinstance(o, dict) and (not o.get("Condition") or self.condition(o["Condition"])):
                outputs[name] = self.value(o.get("Value"))
        return {"Resources": resolved, "Outputs": outputs, "Globals": self.t.get("Globals") or {}}

    def rules(self) -> list[str]:
        """The assertions of the template's Rules these parameter values break."""
        broken = []
        for name, rule in (self.t.get("Rules") or {}).items():
            if "RuleCondition" in rule and not self.truth(rule["RuleCondition"]):
                continue
            for a in rule.get("Assertions") or []:
                if not self.truth(a.get("Assert")):
                    broken.append(f"{name}: {a.get('AssertDescription', '')}")
        return broken


def parse_duration_ms(text: Any) -> int:
    m = re.fullmatch(r"([0-9]+)(ms|s|m|h|d)", str(text))
    if not m:
        raise ValueError(f"{text!r} is no reseq duration (e.g. 500ms, 30s, 5m)")
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2)]


def token_of(value: Any, attribute: str | None = None) -> str | None:
    """The logical id in a token (`<<X.Arn>>` -> X when attribute is Arn or None)."""
    if not isinstance(value, str):
        return None
    m = TOKEN.fullmatch(value)
    if not m or (attribute is not None and m.group(2) != attribute):
        return None
    return m.group(1)


# --- Resources as the function sees them --------------------------------------------------


SQS_ARN = re.compile(r"arn:aws[a-z-]*:sqs:([a-z0-9-]+):([0-9]{12}):([A-Za-z0-9_.-]+)")


@dataclass
class Queue:
    """A queue the stack uses: created (`logical`) or given by its ARN."""

    logical: str | None
    arn: str
    urls: tuple[str, ...]
    name: str
    fifo: bool

    @property
    def label(self) -> str:
        return self.logical or self.arn

    @staticmethod
    def created(logical: str, props: dict) -> Queue:
        return Queue(
            logical,
            token(logical, "Arn"),
            (token(logical), token(logical, "QueueUrl")),
            token(logical, "QueueName"),
            props.get("FifoQueue") in (True, "true"),
        )

    @staticmethod
    def existing(arn: str) -> Queue:
        m = SQS_ARN.fullmatch(arn)
        assert m
        region, account, name = m.groups()
        url = f"https://sqs.{region}.{PSEUDO['AWS::URLSuffix']}/{account}/{name}"
        return Queue(None, arn, (url,), name, name.endswith(".fifo"))


@dataclass
class Table:
    logical: str | None
    name: str
    arn: str


# --- The checks ------------------------------------------------------------------------


class Checks:
    """Every check, for one scenario."""

    def __init__(self, template: dict, label: str, overrides: dict[str, Any], catalogue: Catalogue | None):
        self.t = template
        self.label = label
        self.overrides = overrides
        self.catalogue = catalogue
        self.failures: list[str] = []
        self.count = 0
        self.ev = Evaluator(template, overrides)
        self.r = self.ev.resolve()
        self.resources: dict[str, dict] = self.r["Resources"]
        self.params = self.ev.params
        self.input: Queue | None = None
        self.output: Queue | None = None
        self.dlq: Queue | None = None
        self.table_ref: Table | None = None
        self.variables: dict[str, Any] = {}

    def check(self, ok: bool, message: str) -> bool:
        self.count += 1
        if not ok:
            self.failures.append(message)
        return ok

    def of_type(self, type_: str) -> dict[str, dict]:
        return {k: v for k, v in self.resources.items() if isinstance(v, dict) and v.get("Type") == type_}

    def props(self, logical_id: str | None) -> dict:
        return (self.resources.get(logical_id or "") or {}).get("Properties") or {}

    def queues(self) -> list[Queue]:
        """Every queue this scenario uses: the ones it creates, the ones its parameters name."""
        found = [Queue.created(k, v.get("Properties") or {}) for k, v in self.of_type("AWS::SQS::Queue").items()]
        for value in self.params.values():
            if isinstance(value, str) and SQS_ARN.fullmatch(value):
                found.append(Queue.existing(value))
        return found

    def queue_by(self, what: str, value: Any) -> Queue | None:
        for q in self.queues():
            if (what == "arn" and value == q.arn) or (what == "url" and value in q.urls) or (
                what == "name" and value == q.name
            ):
                return q
        return None

    def run(self) -> None:
        self.check(
            not self.ev.dangling,
            f"{sorted(self.ev.dangling)} referenced but not created with these parameters (a Condition or an "
            "!If is wrong)",
        )
        functions = self.of_type("AWS::Serverless::Function")
        if not self.check(len(functions) == 1, f"expected one AWS::Serverless::Function, found {len(functions)}"):
            return
        ((self.fn_id, fn),) = functions.items()
        # SAM's Globals.Function applies to every function (shallow merge is enough here).
        globals_ = Evaluator(self.t, self.overrides).value((self.r["Globals"] or {}).get("Function") or {})
        self.fn = {**globals_, **(fn.get("Properties") or {})}
        self.variables = ((self.fn.get("Environment") or {}).get("Variables")) or {}
        self.function(fn)
        self.input = self.sqs_events()
        self.schedule_events()
        self.environment()
        self.queue_kinds()
        self.input_queue()
        self.timeouts()
        self.table()
        self.permissions()
        self.alarms()
        self.dashboard()
        self.outputs()

    # The function ----------------------------------------------------------------------

    def function(self, fn: dict) -> None:
        p = self.fn
        self.check(
            p.get("Runtime") == "provided.al2023",
            f"{self.fn_id}: Runtime must be provided.al2023, not {p.get('Runtime')!r}",
        )
        self.check(
            p.get("Handler") == "bootstrap", f"{self.fn_id}: Handler must be bootstrap, not {p.get('Handler')!r}"
        )
        meta = fn.get("Metadata") or {}
        self.check(
            meta.get("BuildMethod") == "rust-cargolambda",
            f"{self.fn_id}: Metadata.BuildMethod must be rust-cargolambda, not {meta.get('BuildMethod')!r}",
        )
        binary = (meta.get("BuildProperties") or {}).get("Binary")
        bins = re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', read("crates/reseq-lambda/Cargo.toml"))
        self.check(
            binary in bins,
            f"{self.fn_id}: Metadata.BuildProperties.Binary is {binary!r}, but crates/reseq-lambda builds {bins}",
        )
        code_uri = p.get("CodeUri")
        workspace = ROOT / str(code_uri) / "Cargo.toml" if isinstance(code_uri, str) else None
        self.check(
            workspace is not None and workspace.is_file() and "[workspace]" in workspace.read_text(encoding="utf-8"),
            f"{self.fn_id}: CodeUri {code_uri!r} must be the Cargo workspace root (sam build copies "
            "<CodeUri>/target/lambda/<Binary>/bootstrap)",
        )
        archs = p.get("Architectures") or ["x86_64"]
        self.check(
            len(archs) == 1 and archs[0] in ("arm64", "x86_64"),
            f"{self.fn_id}: Architectures must be [arm64] or [x86_64], not {archs}",
        )
        self.check(
            p.get("Tracing") == "Active",
            f"{self.fn_id}: Tracing must be Active (X-Ray traces of each invocation), not {p.get('Tracing')!r}",
        )

    def events(self, type_: str) -> dict[str, dict]:
        events = self.fn.get("Events") or {}
        return {k: v for k, v in events.items() if isinstance(v, dict) and v.get("Type") == type_}

    def sqs_events(self) -> Queue | None:
        events = self.events("SQS")
        if not self.check(len(events) == 1, f"{self.fn_id}: expected one SQS event, found {len(events)}"):
            return None
        ((name, event),) = events.items()
        where = f"{self.fn_id}.Events.{name}"
        p = event.get("Properties") or {}
        unknown = sorted(set(p) - KNOWN_SQS_EVENT_PROPERTIES)
        self.check(
            not unknown,
            f"{where}: unknown SQS event properties {unknown} (known: {sorted(KNOWN_SQS_EVENT_PROPERTIES)})",
        )
        batch = p.get("BatchSize")
        self.check(
            isinstance(batch, int) and 1 <= batch <= FIFO_MAX_BATCH,
            f"{where}: BatchSize must be set, 1 to {FIFO_MAX_BATCH} (a FIFO event source takes at most 10), not {batch!r}",
        )
        types = p.get("FunctionResponseTypes") or []
        self.check(
            isinstance(types, list) and "ReportBatchItemFailures" in types,
            f"{where}: FunctionResponseTypes must contain ReportBatchItemFailures (reseq answers with a partial batch "
            f"response), not {types!r}",
        )
        self.check(
            "MaximumBatchingWindowInSeconds" not in p,
            f"{where}: no MaximumBatchingWindowInSeconds (a FIFO event source has no batching window)",
        )
        self.check(p.get("Enabled", True) not in (False, "false"), f"{where}: Enabled is false")
        scaling = p.get("ScalingConfig")
        if scaling is not None:
            self.check(
                isinstance(scaling, dict) and 2 <= int(scaling.get("MaximumConcurrency", 0)) <= 1000,
                f"{where}: ScalingConfig.MaximumConcurrency must be 2 to 1000, not {scaling!r}",
            )
        queue = self.queue_by("arn", p.get("Queue"))
        self.check(
            queue is not None,
            f"{where}: Queue must be the ARN of a queue of this template or of an Existing*QueueArn parameter, "
            f"not {p.get('Queue')!r}",
        )
        return queue

    def schedule_events(self) -> None:
        events = self.events("Schedule")
        if not self.check(
            bool(events),
            f"{self.fn_id}: no Schedule event: the timer sweep (gap timeouts, retries, "
            "retention, dead invocations' leases, the gauges) would run only when a context gets traffic",
        ):
            return
        for name, event in events.items():
            where = f"{self.fn_id}.Events.{name}"
            p = event.get("Properties") or {}
            self.check(
                isinstance(p.get("Schedule"), str) and re.fullmatch(r"(rate|cron)\(.+\)", p["Schedule"]) is not None,
                f"{where}: Schedule must be rate(...) or cron(...), not {p.get('Schedule')!r}",
            )
            self.check(
                p.get("Enabled", True) not in (False, "false") and p.get("State", "ENABLED") == "ENABLED",
                f"{where}: the schedule is disabled",
            )
            self.check(
                not ({"Input", "InputPath", "InputTransformer"} & set(p)),
                f"{where}: no Input/InputPath: reseq recognizes the sweep by EventBridge's own payload "
                '("source": "aws.events")',
            )

    # The queues ----------------------------------------------------------------------------

    def queue_kinds(self) -> None:
        for logical, r in self.of_type("AWS::SQS::Queue").items():
            p = r.get("Properties") or {}
            fifo = p.get("FifoQueue") in (True, "true")
            name = p.get("QueueName")
            if isinstance(name, str):
                self.check(
                    name.endswith(".fifo") == fifo,
                    f"{logical}: QueueName {name!r} must end in .fifo exactly when FifoQueue is true",
                )
            if not fifo:
                extra = [k for k in FIFO_ONLY_QUEUE_PROPERTIES if k in p]
                self.check(not extra, f"{logical}: a standard queue takes no {extra} (make them conditional)")
        # High-throughput FIFO where reseq sends: every context is its own message group.
        for q in (self.output, self.dlq):
            if q and q.logical and q.fifo:
                p = self.props(q.logical)
                self.check(
                    p.get("DeduplicationScope") == "messageGroup" and p.get("FifoThroughputLimit") == "perMessageGroupId",
                    f"{q.logical}: a FIFO queue reseq sends to needs high throughput: DeduplicationScope messageGroup "
                    f"and FifoThroughputLimit perMessageGroupId, not {p.get('DeduplicationScope')!r}, "
                    f"{p.get('FifoThroughputLimit')!r}",
                )
        if self.input and "QueueType" in self.params:
            want = self.params["QueueType"] == "fifo"
            self.check(
                self.input.fifo == want,
                f"{self.input.label}: the input queue must be {'FIFO' if want else 'standard'} with "
                f"QueueType={self.params['QueueType']}",
            )
        if self.input and self.dlq and self.dlq.logical and self.input.logical is None:
            self.check(
                self.dlq.fifo == self.input.fifo,
                f"{self.dlq.logical}: the DLQ created beside an existing input queue must have its type",
            )

    def input_queue(self) -> None:
        q = self.input
        if not q or not q.logical:
            return  # an existing queue: its visibility and redrive are its owner's (infra/README.md)
        p = self.props(q.logical)
        redrive = p.get("RedrivePolicy")
        if not self.check(
            isinstance(redrive, dict), f"{q.logical}: no RedrivePolicy (a DLQ for messages that keep failing)"
        ):
            return
        raw = (self.t["Resources"][q.logical].get("Properties") or {}).get("RedrivePolicy", {}).get("maxReceiveCount")
        counts = [("", redrive.get("maxReceiveCount"))]
        if isinstance(raw, dict) and "Ref" in raw:
            spec = (self.t.get("Parameters") or {}).get(raw["Ref"], {})
            counts.append((f"parameter {raw['Ref']} MinValue", spec.get("MinValue")))
        for label, c in counts:
            try:
                ok = c is not None and int(c) >= MIN_MAX_RECEIVE_COUNT
            except (TypeError, ValueError):
                ok = False
            self.check(
                ok,
                f"{q.logical}: RedrivePolicy maxReceiveCount must be >= {MIN_MAX_RECEIVE_COUNT}, not {c!r}"
                + (f" ({label})" if label else ""),
            )
        target = self.queue_by("arn", redrive.get("deadLetterTargetArn"))
        if self.check(
            target is not None and target == self.dlq,
            f"{q.logical}: deadLetterTargetArn must be the DLQ (RESEQ_DLQ_URL), not {redrive.get('deadLetterTargetArn')!r}",
        ):
            self.check(target.fifo == q.fifo, f"{q.logical}: its dead-letter queue {target.label} must be of its type")

    def timeouts(self) -> None:
        """What depends on the function timeout, for every timeout the template allows."""
        timeout_node = (self.t["Resources"][self.fn_id].get("Properties") or {}).get("Timeout")
        param = timeout_node.get("Ref") if isinstance(timeout_node, dict) else None
        spec = (self.t.get("Parameters") or {}).get(param or "", {})
        values = (spec.get("AllowedValues") or [self.params.get(param)]) if param else [None]
        for value in values:
            overrides = {**self.overrides, param: value} if param else self.overrides
            try:
                ev = Evaluator(self.t, overrides)
                r = ev.resolve()["Resources"]
                fn = r[self.fn_id]["Properties"]
                timeout = int(fn.get("Timeout", 3))
                variables = (fn.get("Environment") or {}).get("Variables") or {}
                lease = parse_duration_ms(variables.get("RESEQ_LEASE_DURATION", "60s"))
                visibility = (
                    int((r[self.input.logical]["Properties"]).get("VisibilityTimeout", 30))
                    if self.input and self.input.logical
                    else None
                )
            except (Unknown, ValueError, KeyError) as e:
                self.check(False, f"{self.fn_id}: cannot evaluate the timeout, the lease or the visibility ({e})")
                continue
            self.check(
                lease > timeout * 1000,
                f"{self.fn_id}: RESEQ_LEASE_DURATION {lease / 1000:g} s must be longer than the function timeout "
                f"{timeout} s, or a lease can expire under a live invocation",
            )
            if "RESEQ_HTTP_TIMEOUT" in variables:
                http = parse_duration_ms(variables["RESEQ_HTTP_TIMEOUT"])
                self.check(
                    4 * http <= lease,
                    f"{self.fn_id}: RESEQ_HTTP_TIMEOUT {http / 1000:g} s is more than a quarter of the lease "
                    f"{lease / 1000:g} s (timeout {timeout} s): reseq refuses it at cold start",
                )
            if visibility is not None:
                self.check(
                    visibility >= MIN_VISIBILITY_FACTOR * timeout,
                    f"{self.input.logical}: VisibilityTimeout {visibility} s is less than {MIN_VISIBILITY_FACTOR} x "
                    f"the function timeout {timeout} s",
                )

    # The environment ------------------------------------------------------------------------

    def environment(self) -> None:
        variables = self.variables
        known, source = settings_env_names()
        metrics_names = metrics_env_names()
        self.check(bool(known), 'found no env = "RESEQ_..." names in crates/reseq-settings/src/lib.rs')
        for name in sorted(variables):
            self.check(
                name in known or name in metrics_names or name in OTHER_ENV_READ,
                f"{self.fn_id}: environment variable {name} is not one reseq's Lambda reads (from {source}: "
                f"{', '.join(sorted(known))}; and crates/reseq-metrics: {', '.join(sorted(metrics_names)) or 'none'})",
            )
        for name in REQUIRED_ENV:
            self.check(name in variables, f"{self.fn_id}: environment variable {name} is not set")

        table = variables.get("RESEQ_TABLE")
        tables = self.of_type("AWS::DynamoDB::Table")
        if token_of(table) in tables:
            self.table_ref = Table(token_of(table), table, token(token_of(table), "Arn"))
        elif isinstance(table, str) and table == self.params.get("ExistingTableName"):
            self.table_ref = Table(
                None, table, f"arn:aws:dynamodb:{PSEUDO['AWS::Region']}:{PSEUDO['AWS::AccountId']}:table/{table}"
            )
        self.check(
            self.table_ref is not None,
            f"{self.fn_id}: RESEQ_TABLE must be the table of this template or ExistingTableName, not {table!r}",
        )

        output = variables.get("RESEQ_OUTPUT")
        kind = self.params.get("OutputKind")
        if isinstance(output, str) and output.startswith("sqs:"):
            self.output = self.queue_by("url", output[4:])
            self.check(
                self.output is not None,
                f"{self.fn_id}: RESEQ_OUTPUT {output!r} is not sqs:<URL> of this template's output queue or of "
                "ExistingOutputQueueArn (a URL derived from the ARN must be https://sqs.<region>.<suffix>/<account>/<name>)",
            )
            self.check(kind in (None, "sqs"), f"{self.fn_id}: RESEQ_OUTPUT is an SQS queue with OutputKind={kind}")
        elif isinstance(output, str) and re.match(r"https?://", output):
            self.check(
                kind in (None, "http") and output == self.params.get("OutputHttpUrl", output),
                f"{self.fn_id}: RESEQ_OUTPUT {output!r} must be OutputHttpUrl, with OutputKind=http (is {kind})",
            )
        else:
            self.check(
                output == "stdout" and kind in (None, "stdout"),
                f"{self.fn_id}: RESEQ_OUTPUT must be sqs:<queue-url>, http(s)://... or stdout as OutputKind says "
                f"({kind}), not {output!r}",
            )

        self.dlq = self.queue_by("url", variables.get("RESEQ_DLQ_URL"))
        self.check(
            self.dlq is not None,
            f"{self.fn_id}: RESEQ_DLQ_URL must be the URL of this template's DLQ or of ExistingDeadLetterQueueArn, "
            f"not {variables.get('RESEQ_DLQ_URL')!r}",
        )
        if self.input:
            self.check(
                self.input not in (self.output, self.dlq),
                f"{self.fn_id}: RESEQ_OUTPUT and RESEQ_DLQ_URL must not be the input queue",
            )

        for name, value in variables.items():
            if name in ("RESEQ_GAP_TIMEOUT", "RESEQ_RETENTION", "RESEQ_HTTP_TIMEOUT", "RESEQ_LEASE_DURATION"):
                try:
                    parse_duration_ms(value)
                except ValueError as e:
                    self.check(False, f"{self.fn_id}: {name}: {e}")
        try:
            gap = variables.get("RESEQ_GAP_TIMEOUT")
            retention = variables.get("RESEQ_RETENTION", settings_defaults().get("RESEQ_RETENTION", "14d"))
            if gap is not None:
                self.check(
                    parse_duration_ms(gap) < parse_duration_ms(retention),
                    f"{self.fn_id}: RESEQ_GAP_TIMEOUT {gap} must be shorter than RESEQ_RETENTION {retention}",
                )
        except ValueError:
            pass  # reported above

        self.check(
            isinstance(variables.get("RESEQ_SERVICE"), str) and variables["RESEQ_SERVICE"] != "",
            f"{self.fn_id}: RESEQ_SERVICE must be set (the Service dimension the alarms select)",
        )
        self.check(
            variables.get("RESEQ_METRICS") in METRICS_ON,
            f"{self.fn_id}: RESEQ_METRICS must be one of {sorted(METRICS_ON)} (the alarms need the metrics), not "
            f"{variables.get('RESEQ_METRICS')!r}",
        )

        # Parameters at their defaults leave each variable unset or at reseq's default; each
        # setting parameter, when set, reaches its variable.
        defaults = settings_defaults()
        if not self.overrides:
            for name, value in variables.items():
                if name in DELIBERATE_DEFAULTS:
                    continue
                self.check(
                    name in defaults and str(value) == defaults[name],
                    f"{self.fn_id}: with every parameter at its default, {name} is {value!r}: it must be unset or "
                    f"reseq's default ({defaults.get(name, 'none: leave it unset')}), or be listed in "
                    "DELIBERATE_DEFAULTS with the reason",
                )
        for param, (variable, sample) in SETTING_PARAMETERS.items():
            if param in self.overrides and param in (self.t.get("Parameters") or {}):
                self.check(
                    str(variables.get(variable)) == str(sample),
                    f"{self.fn_id}: parameter {param}={sample!r} must set {variable}={sample!r}, "
                    f"it is {variables.get(variable)!r}",
                )

    # The table -----------------------------------------------------------------------------

    def table(self) -> None:
        for problem in rust_table_layout():
            self.check(False, problem)
        tid = self.table_ref.logical if self.table_ref else None
        if not tid:
            return  # an existing table: `reseq init --table NAME` gives it the layout
        p = self.props(tid)
        self.check(p.get("BillingMode") == "PAY_PER_REQUEST", f"{tid}: BillingMode must be PAY_PER_REQUEST")
        attrs = {a.get("AttributeName"): a.get("AttributeType") for a in p.get("AttributeDefinitions") or []}
        self.check(
            attrs == EXPECTED_ATTRIBUTES, f"{tid}: AttributeDefinitions must be {EXPECTED_ATTRIBUTES}, not {attrs}"
        )
        keys = [(k.get("AttributeName"), k.get("KeyType")) for k in p.get("KeySchema") or []]
        self.check(keys == EXPECTED_TABLE_KEYS, f"{tid}: KeySchema must be {EXPECTED_TABLE_KEYS}, not {keys}")
        indexes = {i.get("IndexName"): i for i in p.get("GlobalSecondaryIndexes") or []}
        self.check(
            set(indexes) == set(EXPECTED_INDEXES),
            f"{tid}: the global secondary indexes must be exactly {sorted(EXPECTED_INDEXES)}, not {sorted(indexes)}",
        )
        self.check(not p.get("LocalSecondaryIndexes"), f"{tid}: no local secondary index")
        for name, expected in EXPECTED_INDEXES.items():
            index = indexes.get(name)
            if not self.check(index is not None, f"{tid}: no global secondary index {name!r}"):
                continue
            keys = [(k.get("AttributeName"), k.get("KeyType")) for k in index.get("KeySchema") or []]
            self.check(keys == expected, f"{tid}: index {name} KeySchema must be {expected}, not {keys}")
            projection = index.get("Projection") or {}
            self.check(
                projection == {"ProjectionType": "KEYS_ONLY"},
                f"{tid}: index {name} projection must be KEYS_ONLY, not {projection}",
            )
        ttl = p.get("TimeToLiveSpecification") or {}
        self.check(
            ttl.get("AttributeName") == TTL and ttl.get("Enabled") in (True, "true"),
            f"{tid}: TimeToLiveSpecification must be enabled on {TTL!r} (reseq expires released messages by it), not {ttl}",
        )

    # The role ------------------------------------------------------------------------------

    def permissions(self) -> None:
        role = token_of(self.fn.get("Role"), "Arn")
        if not self.check(
            role in self.of_type("AWS::IAM::Role") and not self.fn.get("Policies"),
            f"{self.fn_id}: expected Role: !GetAtt <role>.Arn of an AWS::IAM::Role in this template with explicit "
            "statements (and no SAM Policies)",
        ):
            return
        statements = []
        for policy in self.props(role).get("Policies") or []:
            for s in (policy.get("PolicyDocument") or {}).get("Statement") or []:
                if s.get("Effect") == "Allow":
                    actions = s.get("Action")
                    resources = s.get("Resource")
                    actions = actions if isinstance(actions, list) else [actions]
                    resources = resources if isinstance(resources, list) else [resources]
                    statements.append(([str(a) for a in actions], [str(r) for r in resources]))
        self.check(not self.props(role).get("ManagedPolicyArns"), f"{role}: no managed policies (least privilege)")
        for actions, resources in statements:
            wild = [a for a in actions if "*" in a]
            self.check(not wild, f"{role}: wildcard actions {wild}")
            if "*" in resources:
                self.check(
                    set(actions) <= set(XRAY_ACTIONS),
                    f"{role}: Resource '*' is only for X-Ray's write actions, not {actions}",
                )

        def allowed(action: str, resource: str) -> bool:
            return any(action in acts and (resource in res or "*" in res) for acts, res in statements)

        def need(action: str, resource: str | None, what: str, why: str) -> None:
            if resource:
                self.check(allowed(action, resource), f"{role}: {action} is not allowed on {what} ({why})")

        try:
            dynamodb = store_dynamodb_actions()
        except ValueError as e:
            self.check(False, str(e))
            dynamodb = {}
        t = self.table_ref
        if t:
            for action, source in sorted(dynamodb.items()):
                need(f"dynamodb:{action}", t.arn, t.logical or t.name, f"the store calls it, {source}")
            if "Query" in dynamodb:
                for index in EXPECTED_INDEXES:
                    self.check(
                        allowed("dynamodb:Query", f"{t.arn}/index/{index}")
                        or allowed("dynamodb:Query", f"{t.arn}/index/*"),
                        f"{role}: dynamodb:Query is not allowed on {t.logical or t.name}'s index {index}",
                    )
        if self.input:
            for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
                need(action, self.input.arn, self.input.label, "the SQS event source")
        for queue in (self.output, self.dlq):
            if queue:
                need("sqs:SendMessage", queue.arn, queue.label, "released messages and dead letters")
                need("sqs:GetQueueAttributes", queue.arn, queue.label, "checked at cold start")
        log_group = token_of((self.fn.get("LoggingConfig") or {}).get("LogGroup"))
        for action in ("logs:CreateLogStream", "logs:PutLogEvents"):
            self.check(
                allowed(action, token(log_group, "Arn")) if log_group else any(action in a for a, _ in statements),
                f"{role}: {action} is not allowed on the function's log group: the function could not log "
                "(and its metrics go through the log)",
            )
        if self.fn.get("Tracing") == "Active":
            for action in XRAY_ACTIONS:
                self.check(allowed(action, "*"), f"{role}: {action} is not allowed (Tracing: Active)")

    # Alarms and dashboard ------------------------------------------------------------------

    def reseq_metric(self, where: str, name: str, dims: dict[str, Any], stat: str | None, unit: str | None) -> None:
        """A metric of reseq's namespace, as an alarm or a widget uses it."""
        if self.catalogue is None:
            return
        metric = self.catalogue.metrics.get(name)
        if not self.check(
            metric is not None,
            f"{where}: reseq emits no metric {name!r} (`reseq metrics --json` lists "
            f"{', '.join(sorted(self.catalogue.metrics))})",
        ):
            return
        self.check(
            tuple(sorted(dims)) in {tuple(sorted(d)) for d in metric.dimensions},
            f"{where}: {name} is emitted with the dimension sets {metric.dimensions}, not {sorted(dims)}",
        )
        service = self.variables.get("RESEQ_SERVICE")
        self.check(
            dims.get("Service") == service,
            f"{where}: {name}'s Service dimension must be RESEQ_SERVICE ({service!r}), not {dims.get('Service')!r}",
        )
        if stat is not None:
            ok = stat in STATISTICS[metric.kind] or (metric.kind == "histogram" and PERCENTILE.fullmatch(stat))
            self.check(ok, f"{where}: {name} is a {metric.kind}: statistic {stat!r} means nothing for it")
        if unit is not None:
            self.check(unit == metric.unit, f"{where}: {name} is emitted in {metric.unit}, the alarm asks {unit}")

    def namespace(self) -> str | None:
        configured = self.variables.get("RESEQ_METRICS_NAMESPACE")
        if self.catalogue is None:
            return configured
        return configured or self.catalogue.namespace

    def alarms(self) -> None:
        alarms = self.of_type("AWS::CloudWatch::Alarm")
        topic = self.params.get("NotificationTopicArn") or None
        namespace = self.namespace()
        watched = []  # (logical, namespace, metric, dims, props)
        for logical, r in alarms.items():
            p = r.get("Properties") or {}
            if topic:
                self.check(
                    p.get("AlarmActions") == [topic],
                    f"{logical}: with NotificationTopicArn set, AlarmActions must be [that topic], not "
                    f"{p.get('AlarmActions')!r}",
                )
                self.check(
                    p.get("OKActions") in (None, [topic]),
                    f"{logical}: OKActions must be the topic or nothing, not {p.get('OKActions')!r}",
                )
            else:
                acts = [k for k in ("AlarmActions", "OKActions", "InsufficientDataActions") if p.get(k)]
                self.check(not acts, f"{logical}: without NotificationTopicArn, no {acts}")
            self.check(
                p.get("TreatMissingData") in ("breaching", "notBreaching", "ignore", "missing"),
                f"{logical}: TreatMissingData must be said, not {p.get('TreatMissingData')!r}",
            )
            stats = []
            if "MetricName" in p:
                stats.append((p.get("Namespace"), p.get("MetricName"), p.get("Dimensions") or [], p.get("Statistic"), p.get("Unit")))
            for q in p.get("Metrics") or []:
                ms = q.get("MetricStat")
                if ms:
                    m = ms.get("Metric") or {}
                    stats.append((m.get("Namespace"), m.get("MetricName"), m.get("Dimensions") or [], ms.get("Stat"), ms.get("Unit")))
            for ns, name, dims, stat, unit in stats:
                dims = {d.get("Name"): d.get("Value") for d in dims}
                watched.append((logical, ns, name, dims, p))
                if ns == namespace or (self.catalogue and ns == self.catalogue.namespace):
                    self.check(ns == namespace, f"{logical}: namespace {ns} is not RESEQ_METRICS_NAMESPACE {namespace}")
                    self.reseq_metric(logical, name, dims, stat, unit)

        def find(ns: str, name: str, dim: str, value: Any, what: str) -> dict | None:
            hits = [p for _, n, m, d, p in watched if n == ns and m == name and d.get(dim) == value]
            self.check(bool(hits), f"no alarm on {ns} {name} of {what} ({dim}={value!r}) (docs/RUNBOOK.md lists it)")
            return hits[0] if hits else None

        def above(p: dict | None, threshold: Any, what: str) -> None:
            if p is not None:
                self.check(
                    p.get("ComparisonOperator") == "GreaterThanThreshold" and str(p.get("Threshold")) == str(threshold),
                    f"the alarm on {what} must fire above {threshold}, not {p.get('ComparisonOperator')} "
                    f"{p.get('Threshold')}",
                )

        service = self.variables.get("RESEQ_SERVICE")
        if self.dlq:
            above(find("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", self.dlq.name, "the DLQ"), 0, "the DLQ")
        if self.input:
            p = find("AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", self.input.name, "the input queue")
            above(p, self.params.get("MaxInputQueueAgeSeconds", p and p.get("Threshold")), "the input queue's age")
        function = token(self.fn_id)
        for name in ("Errors", "Throttles"):
            above(find("AWS/Lambda", name, "FunctionName", function, "the function"), 0, f"function {name}")
        if namespace:
            p = find(namespace, "OldestWaitingAge", "Service", service, "reseq")
            above(p, self.params.get("MaxWaitingAgeSeconds", p and p.get("Threshold")), "OldestWaitingAge")
            above(find(namespace, "BlockedContexts", "Service", service, "reseq"), 0, "BlockedContexts")
            above(find(namespace, "SweepErrors", "Service", service, "reseq"), 0, "SweepErrors")
            p = find(namespace, "Sweeps", "Service", service, "reseq")
            if p is not None:
                self.check(
                    p.get("ComparisonOperator") == "LessThanThreshold"
                    and str(p.get("Threshold")) == "1"
                    and p.get("Statistic") == "Sum"
                    and p.get("TreatMissingData") == "breaching"
                    and int(p.get("Period", 0)) * int(p.get("EvaluationPeriods", 0)) <= 600,
                    "the alarm on Sweeps must fire when fewer than 1 ran (Sum < 1) within at most 10 minutes, "
                    "missing data breaching (no sweep emits nothing)",
                )

    def dashboard(self) -> None:
        dashboards = self.of_type("AWS::CloudWatch::Dashboard")
        if not self.check(len(dashboards) == 1, f"expected one AWS::CloudWatch::Dashboard, found {len(dashboards)}"):
            return
        ((logical, r),) = dashboards.items()
        body = (r.get("Properties") or {}).get("DashboardBody")
        try:
            board = json.loads(body)
        except (TypeError, ValueError) as e:
            self.check(False, f"{logical}: DashboardBody is not JSON once substituted ({e})")
            return
        namespace = self.namespace()
        shown: set[tuple[str, tuple[str, ...]]] = set()
        alarms_shown: set[str] = set()
        queues = {q.name for q in (self.input, self.output, self.dlq) if q}
        for i, widget in enumerate(board.get("widgets") or []):
            where = f"{logical} widget {i} ({(widget.get('properties') or {}).get('title', widget.get('type'))})"
            x, w = int(widget.get("x", 0)), int(widget.get("width", 6))
            self.check(0 <= x and x + w <= 24, f"{where}: x + width must be at most 24")
            props = widget.get("properties") or {}
            if widget.get("type") == "alarm":
                alarms_shown |= set(props.get("alarms") or [])
            if widget.get("type") == "log":
                group = token_of((self.fn.get("LoggingConfig") or {}).get("LogGroup"))
                self.check(
                    group is not None and f"SOURCE '{token(group)}'" in props.get("query", ""),
                    f"{where}: the query must read the function's log group",
                )
            if widget.get("type") != "metric":
                continue
            previous: list = []
            for row in props.get("metrics") or []:
                if row and isinstance(row[0], dict):
                    expression = row[0].get("expression", "")
                    for m in re.finditer(r"SEARCH\('\{([^}]*)\}\s*([^']*)'", expression):
                        schema = [s.strip() for s in m.group(1).split(",")]
                        terms = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                        ns, dims = schema[0], {d: terms.get(d) for d in schema[1:] if d}
                        if ns == namespace:
                            name = terms.get("MetricName", "")
                            self.reseq_metric(where, name, dims, None, None)
                            shown.add((name, tuple(sorted(dims))))
                    continue
                options = row[-1] if row and isinstance(row[-1], dict) else {}
                fields = row[:-1] if options else row
                fields = [previous[j] if f == "." and j < len(previous) else f for j, f in enumerate(fields)]
                previous = fields
                if len(fields) < 2 or len(fields) % 2:
                    self.check(False, f"{where}: metric row {row} is not [namespace, name, dim, value, ...]")
                    continue
                ns, name = fields[0], fields[1]
                dims = dict(zip(fields[2::2], fields[3::2]))
                stat = options.get("stat") or props.get("stat")
                if ns == namespace:
                    self.reseq_metric(where, name, dims, stat, None)
                    shown.add((name, tuple(sorted(dims))))
                elif ns == "AWS/SQS":
                    self.check(
                        dims.get("QueueName") in queues or dims.get("QueueName") == "(no output queue)",
                        f"{where}: {name} of queue {dims.get('QueueName')!r}, not one of this stack's",
                    )
                elif ns == "AWS/Lambda":
                    self.check(dims.get("FunctionName") == token(self.fn_id), f"{where}: {name} of another function")
                elif ns == "AWS/DynamoDB":
                    self.check(
                        self.table_ref is not None and dims.get("TableName") == self.table_ref.name,
                        f"{where}: {name} of another table ({dims.get('TableName')!r})",
                    )
        if self.catalogue is not None and namespace == self.catalogue.namespace:
            for metric in self.catalogue.metrics.values():
                for dims in metric.dimensions:
                    self.check(
                        (metric.name, tuple(sorted(dims))) in shown,
                        f"{logical}: the dashboard does not show {metric.name} by {list(dims)} (every metric reseq "
                        "emits, with each of its dimension sets)",
                    )
        for alarm in self.of_type("AWS::CloudWatch::Alarm"):
            self.check(token(alarm, "Arn") in alarms_shown, f"{logical}: alarm {alarm} is not in the alarm widget")

    def outputs(self) -> None:
        values = set(v for v in self.r["Outputs"].values() if isinstance(v, str))
        for what, queue in (("input", self.input), ("output", self.output), ("DLQ", self.dlq)):
            if queue:
                self.check(bool(values & set(queue.urls)), f"Outputs: nothing gives the {what} queue's URL")
        if self.table_ref:
            self.check(self.table_ref.name in values, "Outputs: nothing gives the table's name")


# --- The SAM transform ---------------------------------------------------------------


def transform(template: dict, name: str, out: Path) -> str | None:
    """Runs the SAM transform offline and writes the result; returns an error or None."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        from samtranslator.model.exceptions import InvalidDocumentException
        from samtranslator.translator.transform import transform as sam_transform
    except ImportError as e:
        return f"aws-sam-translator is not installed ({e}): run scripts/lint-template.sh"

    class NoManagedPolicies:
        def load(self) -> dict:
            return {}

    copy = json.loads(json.dumps(template))
    for resource in copy["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource.setdefault("Properties", {})["CodeUri"] = "s3://placeholder-bucket/bootstrap.zip"
    try:
        result = sam_transform(copy, {}, NoManagedPolicies())
    except InvalidDocumentException as e:
        causes = "; ".join(str(c) for c in getattr(e, "causes", [])) or str(e)
        return f"the SAM transform rejects {name}: {causes}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True), encoding="utf-8")
    return None


def run_scenarios(template: dict, catalogue: Catalogue | None) -> tuple[int, list[str]]:
    """Every check in every scenario; each failure once, with the scenarios it failed in
    unless it failed in all of them."""
    parameters = template.get("Parameters") or {}
    scenarios = []
    for label, overrides in SCENARIOS:
        if all(p in parameters for p in overrides):
            scenarios.append((label, overrides))
    count = 0
    seen: dict[str, list[str]] = {}
    order: list[str] = []

    def fail(message: str, label: str) -> None:
        if message not in seen:
            seen[message] = []
            order.append(message)
        if label not in seen[message]:
            seen[message].append(label)

    for label, overrides in scenarios:
        try:
            checks = Checks(template, label, overrides, catalogue)
            broken = checks.ev.rules()
        except Unknown as e:
            count += 1
            fail(f"cannot evaluate the template ({e})", label)
            continue
        count += 1
        if broken:
            fail(f"scenario {label!r} breaks the template's Rules: {broken} (fix SCENARIOS or the Rules)", label)
        try:
            checks.run()
        except Unknown as e:
            checks.check(False, f"cannot evaluate the template ({e})")
        count += checks.count
        for message in checks.failures:
            fail(message, label)
    for label, overrides in BROKEN:
        if all(p in parameters for p in overrides) and template.get("Rules"):
            count += 1
            try:
                refused = bool(Evaluator(template, overrides).rules())
            except Unknown as e:
                fail(f"cannot evaluate the Rules ({e})", label)
                continue
            if not refused:
                fail(f"the template's Rules accept {label}", label)
    labels = [label for label, _ in scenarios]
    failures = []
    for message in order:
        where = seen[message]
        failures.append(message if len(where) == len(labels) else f"{message} [with: {'; '.join(where)}]")
    return count, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template", nargs="?", default=str(ROOT / "template.yaml"))
    parser.add_argument(
        "--transformed-out", metavar="FILE", help="also run the SAM transform and write the result here"
    )
    parser.add_argument(
        "--metrics",
        metavar="FILE",
        help="the output of `reseq metrics --json`: alarms and dashboard are checked against it "
        "(without it, metric names in reseq's namespace are not checked, and a line says so)",
    )
    parser.add_argument("--summary", action="store_true", help="print the number of checks on success")
    args = parser.parse_args()

    try:
        template = load_template(Path(args.template))
    except (OSError, yaml.YAMLError, ValueError) as e:
        print(f"template-check: cannot read {args.template}: {e}", file=sys.stderr)
        return 2
    catalogue = None
    if args.metrics:
        try:
            catalogue = load_catalogue(Path(args.metrics))
        except (OSError, ValueError) as e:
            print(f"template-check: cannot read the metrics catalogue {args.metrics}: {e}", file=sys.stderr)
            return 2
    else:
        print("template-check: no --metrics: reseq's metric names are not checked", file=sys.stderr)
    count, failures = run_scenarios(template, catalogue)
    if args.transformed_out:
        count += 1
        error = transform(template, Path(args.template).name, Path(args.transformed_out))
        if error:
            failures.append(error)
    for failure in failures:
        print(f"template-check: {failure}", file=sys.stderr)
    if failures:
        print(f"template-check: {len(failures)} of {count} checks failed", file=sys.stderr)
        return 1
    if args.summary:
        scenarios = sum(1 for _, o in SCENARIOS if all(p in (template.get("Parameters") or {}) for p in o))
        print(f"{count} content checks over {scenarios} parameter scenarios")
    return 0


if __name__ == "__main__":
    sys.exit(main())
