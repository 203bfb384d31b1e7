#!/usr/bin/env python3
"""Checks what cfn-lint does not see in template.yaml (called by scripts/lint-template.sh).

cfn-lint validates the SAM template against schemas, but it lets through a misspelt
property of an SQS event, a batching window on a FIFO event source, and everything that
ties the template to reseq itself. This script checks those, each with a message naming
what is wrong:

- the function: provided.al2023, handler `bootstrap`, built by cargo-lambda
  (`rust-cargolambda`, `Binary` = the reseq-lambda `bootstrap` bin) from the workspace root;
- the SQS event source: only property names SAM knows, BatchSize <= 10,
  ReportBatchItemFailures, no MaximumBatchingWindowInSeconds, enabled;
- the input queue: FIFO, visibility timeout >= 6 x the function timeout (for every
  timeout the template allows), a redrive policy with maxReceiveCount >= 5 to a FIFO DLQ;
- RESEQ_LEASE_DURATION longer than the function timeout (for every allowed timeout);
- the DynamoDB table: exactly reseq's layout (keys, the `due` index, TTL, on demand),
  which must still be what crates/reseq-dynamodb/src creates;
- every environment variable set on the function is one the Lambda reads (the `env =
  "RESEQ_..."` names of the settings structs it flattens), and the required ones are set;
- a Schedule event (the timer sweep) that sends EventBridge's own payload;
- the role: every DynamoDB request the store makes, and SQS send/receive on the right
  queues, allowed on the right resources, no wildcard actions;
- Outputs with the queue URLs and the table name.

With --transformed-out FILE it also runs the SAM transform (aws-sam-translator, offline,
the CodeUri replaced by a placeholder) and writes the resulting CloudFormation template
there, so that cfn-lint can check the generated event source mapping, rule and function.

Exit status 0 when every check passes (silent), 1 otherwise (one line per failure on
stderr), 2 when the template cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# --- What reseq expects ------------------------------------------------------------

# The table layout, mirroring crates/reseq-dynamodb/src/codec.rs (the constants PK, SK,
# DUE_SHARD, DUE_AT, DUE_INDEX, TTL) and create_table in crates/reseq-dynamodb/src/table.rs
# (attribute types, key types, KEYS_ONLY projection, PAY_PER_REQUEST). The check below
# also reads those Rust files, so a change there fails here until both agree again.
EXPECTED_CONSTANTS = {
    "PK": "pk",
    "SK": "sk",
    "DUE_SHARD": "due_shard",
    "DUE_AT": "due_at",
    "DUE_INDEX": "due",
    "TTL": "ttl",
}
PK, SK = EXPECTED_CONSTANTS["PK"], EXPECTED_CONSTANTS["SK"]
DUE_SHARD, DUE_AT = EXPECTED_CONSTANTS["DUE_SHARD"], EXPECTED_CONSTANTS["DUE_AT"]
DUE_INDEX, TTL = EXPECTED_CONSTANTS["DUE_INDEX"], EXPECTED_CONSTANTS["TTL"]
EXPECTED_ATTRIBUTES = {PK: "S", SK: "N", DUE_SHARD: "N", DUE_AT: "N"}
EXPECTED_TABLE_KEYS = [(PK, "HASH"), (SK, "RANGE")]
EXPECTED_INDEX_KEYS = [(DUE_SHARD, "HASH"), (DUE_AT, "RANGE")]

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

# Environment variables reseq reads that are not RESEQ_* settings.
OTHER_ENV_READ = {"RUST_LOG"}
REQUIRED_ENV = ["RESEQ_TABLE", "RESEQ_OUTPUT", "RESEQ_DLQ_URL", "RESEQ_LEASE_DURATION"]

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
    attrs = {EXPECTED_CONSTANTS.get(c, c): t for c, t in re.findall(r"attr\((\w+), ScalarAttributeType::(\w+)\)", body)}
    keys = [(EXPECTED_CONSTANTS.get(c, c), k.upper()) for c, k in re.findall(r"key\((\w+), KeyType::(\w+)\)", body)]
    if attrs != EXPECTED_ATTRIBUTES:
        problems.append(f"create_table (table.rs) defines attributes {attrs}, the check expects {EXPECTED_ATTRIBUTES}")
    if sorted(keys) != sorted(EXPECTED_TABLE_KEYS + EXPECTED_INDEX_KEYS):
        problems.append(
            f"create_table (table.rs) uses keys {keys}, the check expects table {EXPECTED_TABLE_KEYS} and index "
            f"{EXPECTED_INDEX_KEYS}"
        )
    for needle, what in [
        ("ProjectionType::KeysOnly", "the index projection KEYS_ONLY"),
        ("BillingMode::PayPerRequest", "PAY_PER_REQUEST billing"),
        (".index_name(DUE_INDEX)", "the index named DUE_INDEX"),
    ]:
        if needle not in body:
            problems.append(
                f"create_table (table.rs) no longer has {what} ({needle}): update the template and the check"
            )
    if ".attribute_name(TTL)" not in table:
        problems.append("table.rs no longer turns TTL on for the attribute TTL: update the template and the check")
    return problems


# --- Evaluating template values ------------------------------------------------------


class Unknown(Exception):
    pass


def evaluate(node: Any, template: dict, params: dict[str, Any]) -> Any:
    """The value of a node for the given parameter values: literals, Ref to a parameter,
    Fn::FindInMap. Anything else (resource attributes) raises Unknown."""
    if isinstance(node, (str, int, float, bool)):
        return node
    if isinstance(node, dict) and len(node) == 1:
        ((key, arg),) = node.items()
        if key == "Ref" and isinstance(arg, str):
            if arg in params:
                return params[arg]
            raise Unknown(f"Ref {arg}")
        if key == "Fn::FindInMap" and isinstance(arg, list) and len(arg) == 3:
            name, first, second = (str(evaluate(a, template, params)) for a in arg)
            try:
                return template["Mappings"][name][first][second]
            except (KeyError, TypeError):
                raise Unknown(f"FindInMap [{name}, {first}, {second}]: no such entry") from None
    raise Unknown(json.dumps(node))


def parameter_scenarios(template: dict, name: str | None) -> list[dict[str, Any]]:
    """Parameter values to evaluate with: the defaults, and each allowed value of `name`."""
    parameters = template.get("Parameters") or {}
    defaults = {
        p: spec.get("Default") for p, spec in parameters.items() if isinstance(spec, dict) and "Default" in spec
    }
    if not name or name not in parameters:
        return [defaults]
    allowed = parameters[name].get("AllowedValues") or [parameters[name].get("Default")]
    return [{**defaults, name: v} for v in allowed if v is not None]


def parse_duration_ms(text: str) -> int:
    m = re.fullmatch(r"([0-9]+)(ms|s|m|h|d)", str(text))
    if not m:
        raise ValueError(f"{text!r} is no reseq duration (e.g. 500ms, 30s, 5m)")
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2)]


def ref_target(node: Any) -> str | None:
    """The logical id a Ref / GetAtt / Sub points at (`X`, `X.Arn`, `${X.QueueUrl}`)."""
    if isinstance(node, dict) and len(node) == 1:
        ((key, arg),) = node.items()
        if key == "Ref" and isinstance(arg, str):
            return arg
        if key == "Fn::GetAtt" and isinstance(arg, list) and arg:
            return str(arg[0])
        if key == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            m = re.search(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z]+)?\}", text)
            return m.group(1) if m else None
    return None


def resource_names(node: Any) -> str:
    """A policy Resource entry, written as text: `Table.Arn`, `${Table.Arn}/index/due`, `*`."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and len(node) == 1:
        ((key, arg),) = node.items()
        if key == "Fn::GetAtt" and isinstance(arg, list):
            return ".".join(str(a) for a in arg)
        if key == "Fn::Sub":
            return arg if isinstance(arg, str) else arg[0]
        if key == "Ref":
            return f"Ref:{arg}"
    return json.dumps(node)


# --- The checks ------------------------------------------------------------------------


class Checks:
    def __init__(self, template: dict):
        self.t = template
        self.resources: dict[str, dict] = template["Resources"]
        self.failures: list[str] = []
        self.count = 0
        self.input_id: str | None = None
        self.output_id: str | None = None
        self.dlq_id: str | None = None
        self.table_id: str | None = None

    def check(self, ok: bool, message: str) -> bool:
        self.count += 1
        if not ok:
            self.failures.append(message)
        return ok

    def of_type(self, type_: str) -> dict[str, dict]:
        return {k: v for k, v in self.resources.items() if isinstance(v, dict) and v.get("Type") == type_}

    def props(self, logical_id: str) -> dict:
        return (self.resources.get(logical_id) or {}).get("Properties") or {}

    def is_fifo_queue(self, logical_id: str | None) -> bool:
        r = self.resources.get(logical_id or "") or {}
        return r.get("Type") == "AWS::SQS::Queue" and (r.get("Properties") or {}).get("FifoQueue") in (True, "true")

    def run(self) -> None:
        functions = self.of_type("AWS::Serverless::Function")
        if not self.check(len(functions) == 1, f"expected one AWS::Serverless::Function, found {len(functions)}"):
            return
        ((self.fn_id, fn),) = functions.items()
        # SAM's Globals.Function applies to every function (shallow merge is enough here).
        globals_ = (self.t.get("Globals") or {}).get("Function") or {}
        self.fn = {**globals_, **(fn.get("Properties") or {})}
        self.function(fn)
        timeout_param = self.fn.get("Timeout", {}).get("Ref") if isinstance(self.fn.get("Timeout"), dict) else None
        self.scenarios = parameter_scenarios(self.t, timeout_param)
        self.input_id = self.sqs_events()
        self.schedule_events()
        self.input_queue()
        self.environment()
        self.table()
        self.permissions()
        self.outputs()

    def timeout(self, params: dict) -> int:
        return int(evaluate(self.fn.get("Timeout", 3), self.t, params))

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
        for scenario in parameter_scenarios(self.t, None):
            try:
                archs = [evaluate(a, self.t, scenario) for a in p.get("Architectures") or ["x86_64"]]
            except Unknown as e:
                self.check(False, f"{self.fn_id}: cannot evaluate Architectures ({e})")
                continue
            self.check(
                len(archs) == 1 and archs[0] in ("arm64", "x86_64"),
                f"{self.fn_id}: Architectures must be [arm64] or [x86_64], not {archs}",
            )

    def events(self, type_: str) -> dict[str, dict]:
        events = self.fn.get("Events") or {}
        return {k: v for k, v in events.items() if isinstance(v, dict) and v.get("Type") == type_}

    def sqs_events(self) -> str | None:
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
        queue = ref_target(p.get("Queue"))
        self.check(
            queue in self.of_type("AWS::SQS::Queue"),
            f"{where}: Queue must be !GetAtt <queue>.Arn of a queue in this template, not {p.get('Queue')!r}",
        )
        return queue

    def schedule_events(self) -> None:
        events = self.events("Schedule")
        if not self.check(
            bool(events),
            f"{self.fn_id}: no Schedule event: the timer sweep (gap timeouts, retries, "
            "retention, dead invocations' leases) would run only when a context gets traffic",
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

    def input_queue(self) -> None:
        q = self.input_id
        if not q:
            return
        self.check(self.is_fifo_queue(q), f"{q}: the input queue must be FIFO (FifoQueue: true)")
        p = self.props(q)
        for scenario in self.scenarios:
            try:
                timeout = self.timeout(scenario)
                visibility = int(evaluate(p.get("VisibilityTimeout", 30), self.t, scenario))
            except (Unknown, ValueError) as e:
                self.check(False, f"{q}: cannot evaluate VisibilityTimeout or the function Timeout ({e})")
                continue
            self.check(
                visibility >= MIN_VISIBILITY_FACTOR * timeout,
                f"{q}: VisibilityTimeout {visibility} s is less than {MIN_VISIBILITY_FACTOR} x the function timeout "
                f"{timeout} s",
            )
        redrive = p.get("RedrivePolicy")
        if not self.check(isinstance(redrive, dict), f"{q}: no RedrivePolicy (a DLQ for messages that keep failing)"):
            return
        count = redrive.get("maxReceiveCount")
        counts = []
        if isinstance(count, dict) and "Ref" in count:
            spec = (self.t.get("Parameters") or {}).get(count["Ref"], {})
            counts = [
                (f"parameter {count['Ref']} Default", spec.get("Default")),
                (f"parameter {count['Ref']} MinValue", spec.get("MinValue")),
            ]
            self.check(
                spec.get("MinValue") is not None,
                f"{q}: maxReceiveCount comes from parameter {count['Ref']}, which needs MinValue >= {MIN_MAX_RECEIVE_COUNT}",
            )
        else:
            counts = [("", count)]
        for label, c in counts:
            try:
                ok = c is not None and int(c) >= MIN_MAX_RECEIVE_COUNT
            except (TypeError, ValueError):
                ok = False
            self.check(
                ok,
                f"{q}: RedrivePolicy maxReceiveCount must be >= {MIN_MAX_RECEIVE_COUNT}, not {c!r}"
                + (f" ({label})" if label else ""),
            )
        dlq = ref_target(redrive.get("deadLetterTargetArn"))
        if self.check(
            dlq in self.of_type("AWS::SQS::Queue"), f"{q}: deadLetterTargetArn must be a queue of this template"
        ):
            self.check(
                self.is_fifo_queue(dlq) == self.is_fifo_queue(q),
                f"{q}: its dead-letter queue {dlq} must be FIFO like the queue itself",
            )

    def environment(self) -> None:
        variables = ((self.fn.get("Environment") or {}).get("Variables")) or {}
        known, source = settings_env_names()
        self.check(bool(known), 'found no env = "RESEQ_..." names in crates/reseq-settings/src/lib.rs')
        for name in sorted(variables):
            self.check(
                name in known or name in OTHER_ENV_READ,
                f"{self.fn_id}: environment variable {name} is not one reseq's Lambda reads (from {source}: "
                f"{', '.join(sorted(known))})",
            )
        for name in REQUIRED_ENV:
            self.check(name in variables, f"{self.fn_id}: environment variable {name} is not set")
        table = ref_target(variables.get("RESEQ_TABLE"))
        self.check(
            table in self.of_type("AWS::DynamoDB::Table"),
            f"{self.fn_id}: RESEQ_TABLE must be !Ref of the table in this template, not {variables.get('RESEQ_TABLE')!r}",
        )
        self.table_id = table
        output = variables.get("RESEQ_OUTPUT")
        sub = output.get("Fn::Sub") if isinstance(output, dict) else None
        self.output_id = ref_target(output)
        self.check(
            isinstance(sub, str) and sub.startswith("sqs:") and self.output_id in self.of_type("AWS::SQS::Queue"),
            f'{self.fn_id}: RESEQ_OUTPUT must be !Sub "sqs:${{<queue>.QueueUrl}}" of a queue in this template, '
            f"not {output!r}",
        )
        self.dlq_id = ref_target(variables.get("RESEQ_DLQ_URL"))
        self.check(
            self.dlq_id in self.of_type("AWS::SQS::Queue"),
            f"{self.fn_id}: RESEQ_DLQ_URL must be the URL of a queue in this template, not {variables.get('RESEQ_DLQ_URL')!r}",
        )
        if self.input_id:
            self.check(
                self.output_id != self.input_id and self.dlq_id != self.input_id,
                f"{self.fn_id}: RESEQ_OUTPUT and RESEQ_DLQ_URL must not be the input queue",
            )
        for scenario in self.scenarios:
            try:
                timeout = self.timeout(scenario)
                lease = parse_duration_ms(evaluate(variables.get("RESEQ_LEASE_DURATION", "60s"), self.t, scenario))
            except (Unknown, ValueError) as e:
                self.check(False, f"{self.fn_id}: cannot evaluate RESEQ_LEASE_DURATION ({e})")
                continue
            self.check(
                lease > timeout * 1000,
                f"{self.fn_id}: RESEQ_LEASE_DURATION {lease / 1000:g} s must be longer than the function timeout "
                f"{timeout} s, or a lease can expire under a live invocation",
            )
        for name, value in variables.items():
            if name in ("RESEQ_GAP_TIMEOUT", "RESEQ_RETENTION", "RESEQ_HTTP_TIMEOUT") and isinstance(value, str):
                try:
                    parse_duration_ms(value)
                except ValueError as e:
                    self.check(False, f"{self.fn_id}: {name}: {e}")

    def table(self) -> None:
        for problem in rust_table_layout():
            self.check(False, problem)
        tid = self.table_id
        if not tid or tid not in self.resources:
            return
        p = self.props(tid)
        self.check(p.get("BillingMode") == "PAY_PER_REQUEST", f"{tid}: BillingMode must be PAY_PER_REQUEST")
        attrs = {a.get("AttributeName"): a.get("AttributeType") for a in p.get("AttributeDefinitions") or []}
        self.check(
            attrs == EXPECTED_ATTRIBUTES, f"{tid}: AttributeDefinitions must be {EXPECTED_ATTRIBUTES}, not {attrs}"
        )
        keys = [(k.get("AttributeName"), k.get("KeyType")) for k in p.get("KeySchema") or []]
        self.check(keys == EXPECTED_TABLE_KEYS, f"{tid}: KeySchema must be {EXPECTED_TABLE_KEYS}, not {keys}")
        indexes = {i.get("IndexName"): i for i in p.get("GlobalSecondaryIndexes") or []}
        due = indexes.get(DUE_INDEX)
        if self.check(due is not None, f"{tid}: no global secondary index {DUE_INDEX!r} (the timer sweep queries it)"):
            keys = [(k.get("AttributeName"), k.get("KeyType")) for k in due.get("KeySchema") or []]
            self.check(
                keys == EXPECTED_INDEX_KEYS,
                f"{tid}: index {DUE_INDEX} KeySchema must be {EXPECTED_INDEX_KEYS}, not {keys}",
            )
            projection = (due.get("Projection") or {}).get("ProjectionType")
            self.check(
                projection == "KEYS_ONLY", f"{tid}: index {DUE_INDEX} projection must be KEYS_ONLY, not {projection!r}"
            )
        ttl = p.get("TimeToLiveSpecification") or {}
        self.check(
            ttl.get("AttributeName") == TTL and ttl.get("Enabled") in (True, "true"),
            f"{tid}: TimeToLiveSpecification must be enabled on {TTL!r} (reseq expires released messages by it), not {ttl}",
        )

    def permissions(self) -> None:
        role = ref_target(self.fn.get("Role"))
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
                    statements.append(([str(a) for a in actions], [resource_names(r) for r in resources]))
        self.check(not self.props(role).get("ManagedPolicyArns"), f"{role}: no managed policies (least privilege)")
        for actions, _ in statements:
            wild = [a for a in actions if "*" in a]
            self.check(not wild, f"{role}: wildcard actions {wild}")

        def allowed(action: str, resource: str) -> bool:
            return any(action in acts and (resource in res or "*" in res) for acts, res in statements)

        def need(action: str, logical: str | None, why: str) -> None:
            if logical:
                self.check(allowed(action, f"{logical}.Arn"), f"{role}: {action} is not allowed on {logical} ({why})")

        try:
            dynamodb = store_dynamodb_actions()
        except ValueError as e:
            self.check(False, str(e))
            dynamodb = {}
        for action, source in sorted(dynamodb.items()):
            need(f"dynamodb:{action}", self.table_id, f"the store calls it, {source}")
        if "Query" in dynamodb and self.table_id:
            index = [f"${{{self.table_id}.Arn}}/index/{DUE_INDEX}", f"${{{self.table_id}.Arn}}/index/*"]
            self.check(
                any(allowed("dynamodb:Query", r) for r in index),
                f"{role}: dynamodb:Query is not allowed on {self.table_id}'s index {DUE_INDEX} "
                f'(Resource: !Sub "${{{self.table_id}.Arn}}/index/{DUE_INDEX}")',
            )
        for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
            need(action, self.input_id, "the SQS event source")
        for queue in {self.output_id, self.dlq_id} - {None}:
            need("sqs:SendMessage", queue, "released messages and dead letters")
            need("sqs:GetQueueAttributes", queue, "checked at cold start")
        self.check(
            any("logs:PutLogEvents" in acts for acts, _ in statements)
            and any("logs:CreateLogStream" in acts for acts, _ in statements),
            f"{role}: logs:CreateLogStream and logs:PutLogEvents are not allowed: the function could not log",
        )

    def outputs(self) -> None:
        outputs = self.t.get("Outputs") or {}
        referenced = {ref_target(o.get("Value")) for o in outputs.values() if isinstance(o, dict)}
        for logical in (
            self.input_id,
            self.output_id,
            self.dlq_id,
            self.table_id,
        ):
            if logical:
                self.check(logical in referenced, f"Outputs: nothing gives {logical} (its URL or name)")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template", nargs="?", default=str(ROOT / "template.yaml"))
    parser.add_argument(
        "--transformed-out", metavar="FILE", help="also run the SAM transform and write the result here"
    )
    parser.add_argument("--summary", action="store_true", help="print the number of checks on success")
    args = parser.parse_args()

    try:
        template = load_template(Path(args.template))
    except (OSError, yaml.YAMLError, ValueError) as e:
        print(f"template-check: cannot read {args.template}: {e}", file=sys.stderr)
        return 2
    checks = Checks(template)
    checks.run()
    if args.transformed_out:
        error = transform(template, Path(args.template).name, Path(args.transformed_out))
        checks.check(error is None, error or "")
    for failure in checks.failures:
        print(f"template-check: {failure}", file=sys.stderr)
    if checks.failures:
        print(f"template-check: {len(checks.failures)} of {checks.count} checks failed", file=sys.stderr)
        return 1
    if args.summary:
        print(f"{checks.count} content checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
