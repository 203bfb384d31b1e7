#!/usr/bin/env python3
"""Content checks of the CDK app's synthesized templates (called by scripts/cdk-check.sh).

The same checks template.yaml gets from scripts/template-check.py, applied to the
CloudFormation the CDK synthesizes (plain resources, not SAM's), and tied to the same
sources of truth: template.yaml itself (which scripts/lint-template.sh checks against the
Rust code) and the Rust code, read through template-check.py's own helpers (imported
read-only: `load_template`, `settings_env_names`, `store_dynamodb_actions`).

For every template given (the flavour is told by its resources):
- the staging table: exactly template.yaml's layout (keys, attribute types, every global
  index with its keys and projection, TTL, on demand, point-in-time recovery), retained;
- the queues: a FIFO input queue with a redrive (maxReceiveCount >= 5) to a FIFO DLQ that
  is retained, a FIFO output queue;
- the role the code runs with: every DynamoDB request the store makes (found in
  crates/reseq-dynamodb/src) on the table and Query on each of its indexes; the SQS calls
  (ReceiveMessage/DeleteMessage/GetQueueAttributes on the input, plus
  ChangeMessageVisibility for the worker; SendMessage/GetQueueAttributes on the output and
  the DLQ); no wildcard action anywhere in the template; `*` resources only for X-Ray and
  ECR's GetAuthorizationToken;
- the environment: every RESEQ_* variable set is one the binary reads (the settings
  structs for the Lambda as template-check.py finds them; the worker's flags for ECS),
  the required ones are set, and RESEQ_SERVICE is the Service dimension of the alarms;
- the alarms: one for each of template.yaml's (same namespace, metric, statistic, period,
  comparison, missing-data treatment; the Lambda ones only for the Lambda flavour); with
  --metrics (the output of `reseq metrics --json`), every metric of reseq's namespace an
  alarm or the dashboard uses is one reseq emits, with a dimension set and a statistic it
  emits, and the dashboard shows every metric with each of its dimension sets;
- Lambda: provided.al2023, handler bootstrap, active tracing, the SQS event source
  (BatchSize <= 10, ReportBatchItemFailures, no batching window, from the input queue),
  visibility >= 6 x timeout, RESEQ_LEASE_DURATION > timeout, a rate(1 minute) rule that
  invokes the function;
- ECS: the worker container not root, stop timeout above the lease and at most 120 s,
  RESEQ_METRICS=stderr through a FireLens router (cloudwatch_logs, json/emf), the task
  role as above, a target-tracking policy on the input queue's backlog, at least 1 task.

Exit status 0 when every check passes (one summary line), 1 otherwise (one line per
failure on stderr), 2 when a template or template-check.py cannot be read.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What template.yaml's function sets whatever its parameters say, and the worker needs too;
# every other setting keeps reseq's default unless the construct's `settings` sets it.
REQUIRED_ENV = [
    "RESEQ_TABLE",
    "RESEQ_OUTPUT",
    "RESEQ_DLQ_URL",
    "RESEQ_INVALID",
    "RESEQ_LEASE_DURATION",
    "RESEQ_SERVICE",
    "RESEQ_METRICS",
]
OTHER_ENV = {"AWS_REGION", "RUST_LOG"}
STAR_RESOURCE_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "ecr:GetAuthorizationToken"}
FARGATE_MAX_STOP_TIMEOUT = 120


def load_template_check():
    path = ROOT / "scripts" / "template-check.py"
    spec = importlib.util.spec_from_file_location("template_check", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode = True  # no scripts/__pycache__ in the work tree
    sys.modules["template_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    for name in ("load_template", "settings_env_names", "store_dynamodb_actions", "parse_duration_ms", "FIFO_MAX_BATCH", "MIN_MAX_RECEIVE_COUNT"):
        if not hasattr(module, name):
            raise ImportError(f"scripts/template-check.py has no `{name}` any more: update scripts/cdk-template-check.py")
    return module


def as_list(x: Any) -> list:
    return x if isinstance(x, list) else [x]


def env_names_in(paths: list[Path]) -> set[str]:
    """RESEQ_* names a set of Rust sources reads: clap's `env = "..."` and string literals."""
    names: set[str] = set()
    for p in paths:
        text = p.read_text(encoding="utf-8").split("#[cfg(test)]", 1)[0]
        names |= set(re.findall(r'"(RESEQ_[A-Z0-9_]+)"', text))
    return names


def rust_files(*rels: str) -> list[Path]:
    out: list[Path] = []
    for rel in rels:
        p = ROOT / rel
        if p.is_dir():
            out += sorted(p.rglob("*.rs"))
        elif p.exists():
            out.append(p)
    return out


def sqs_calls() -> set[str]:
    """SQS SDK calls of the worker and the Lambda (crates/reseq-sqs, the worker command)."""
    calls: set[str] = set()
    for p in rust_files("crates/reseq-sqs/src", "crates/reseq-cli/src/worker.rs", "crates/reseq-lambda/src"):
        text = p.read_text(encoding="utf-8").split("#[cfg(test)]", 1)[0]
        calls |= set(re.findall(r"\.\s*(receive_message|delete_message(?:_batch)?|change_message_visibility(?:_batch)?|send_message(?:_batch)?|get_queue_attributes)\(\)", text))
    return calls


class Check:
    def __init__(self, name: str, tc, expected_table: dict, expected_alarms: list[dict], sam_env: set[str], catalogue=None):
        self.name = name
        self.tc = tc
        self.catalogue = catalogue
        self.failures: list[str] = []
        self.count = 0
        self.expected_table = expected_table
        self.expected_alarms = expected_alarms
        self.sam_env = sam_env

    def check(self, ok: bool, message: str) -> bool:
        self.count += 1
        if not ok:
            self.failures.append(f"{self.name}: {message}")
        return ok

    # --- helpers over the synthesized template ------------------------------------------
    def load(self, path: Path) -> None:
        self.t = json.loads(path.read_text(encoding="utf-8"))
        self.r: dict[str, dict] = self.t.get("Resources") or {}

    def of_type(self, type_: str) -> dict[str, dict]:
        return {k: v for k, v in self.r.items() if v.get("Type") == type_}

    @staticmethod
    def ref(node: Any) -> str | None:
        if isinstance(node, dict):
            if "Ref" in node:
                return node["Ref"]
            if "Fn::GetAtt" in node:
                return node["Fn::GetAtt"][0]
        return None

    def statements(self, role_id: str) -> list[dict]:
        out = []
        role = self.r.get(role_id, {}).get("Properties", {})
        for p in role.get("Policies") or []:
            out += p["PolicyDocument"]["Statement"]
        for p in self.of_type("AWS::IAM::Policy").values():
            if any(self.ref(x) == role_id for x in p["Properties"].get("Roles") or []):
                out += p["Properties"]["PolicyDocument"]["Statement"]
        return [s for s in out if s.get("Effect") == "Allow"]

    # --- checks ---------------------------------------------------------------------------
    def run(self, path: Path) -> None:
        self.load(path)
        fns = {k: v for k, v in self.of_type("AWS::Lambda::Function").items() if v["Properties"].get("Runtime") == "provided.al2023"}
        tds = self.of_type("AWS::ECS::TaskDefinition")
        if not self.check(len(fns) + len(tds) == 1, "expected one reseq function or one task definition"):
            return
        self.flavour = "lambda" if fns else "ecs"
        self.queues()
        self.table()
        self.wildcards()
        if self.flavour == "lambda":
            fn_id, fn = next(iter(fns.items()))
            self.lambda_function(fn_id, fn["Properties"])
        else:
            td = next(iter(tds.values()))["Properties"]
            self.ecs_task(td)
        self.alarms()

    def queues(self) -> None:
        queues = self.of_type("AWS::SQS::Queue")
        inputs = [k for k, v in queues.items() if v["Properties"].get("RedrivePolicy")]
        if not self.check(len(inputs) == 1, f"expected one queue with a RedrivePolicy (the input), found {inputs}"):
            return
        self.input_id = inputs[0]
        p = queues[self.input_id]["Properties"]
        redrive = p["RedrivePolicy"]
        self.dlq_id = self.ref(redrive.get("deadLetterTargetArn"))
        self.check(p.get("FifoQueue") is True, "the input queue must be FIFO")
        self.check(int(redrive.get("maxReceiveCount", 0)) >= self.tc.MIN_MAX_RECEIVE_COUNT, "the input queue's maxReceiveCount must be >= 5")
        dlq = queues.get(self.dlq_id or "", {})
        self.check(dlq.get("Properties", {}).get("FifoQueue") is True, "the DLQ of a FIFO queue must be FIFO")
        self.check(dlq.get("DeletionPolicy") == "Retain", "the DLQ must be retained (DeletionPolicy Retain), as in template.yaml")
        others = [k for k in queues if k not in (self.input_id, self.dlq_id)]
        self.check(len(others) == 1, f"expected one output queue besides the input and the DLQ, found {others}")
        self.output_id = others[0] if others else None
        if self.output_id:
            self.check(queues[self.output_id]["Properties"].get("FifoQueue") is True, "the output queue must be FIFO")

    def table(self) -> None:
        tables = self.of_type("AWS::DynamoDB::Table")
        if not self.check(len(tables) == 1, f"expected one DynamoDB table, found {len(tables)}"):
            self.table_id = None
            return
        self.table_id, t = next(iter(tables.items()))
        self.check(t.get("DeletionPolicy") == "Retain", "the table must be retained (DeletionPolicy Retain)")
        got, want = layout(t["Properties"]), self.expected_table
        for key in want:
            self.check(got.get(key) == want[key], f"table {key} is {got.get(key)}, template.yaml's is {want[key]}")

    def wildcards(self) -> None:
        for pid, p in {**self.of_type("AWS::IAM::Policy"), **self.of_type("AWS::IAM::Role")}.items():
            docs = [p["Properties"]["PolicyDocument"]] if "PolicyDocument" in p["Properties"] else [
                x["PolicyDocument"] for x in p["Properties"].get("Policies") or []
            ]
            for doc in docs:
                for s in doc["Statement"]:
                    actions = [str(a) for a in as_list(s.get("Action", []))]
                    self.check(not any("*" in a for a in actions), f"{pid}: wildcard action in {actions}")
                    if "*" in as_list(s.get("Resource", [])):
                        extra = set(actions) - STAR_RESOURCE_ACTIONS
                        self.check(not extra, f"{pid}: {sorted(extra)} on every resource (*)")

    def permissions(self, role_id: str | None, worker: bool) -> None:
        if not self.check(role_id in self.of_type("AWS::IAM::Role"), "the code's role is not a role of this template"):
            return
        st = self.statements(role_id)
        self.check(not self.r[role_id]["Properties"].get("ManagedPolicyArns"), f"{role_id}: managed policies (least privilege: none)")

        def allowed(action: str, pred) -> bool:
            return any(action in as_list(s.get("Action")) and any(pred(r) for r in as_list(s.get("Resource"))) for s in st)

        def arn_of(logical: str | None):
            return lambda r: logical is not None and r == {"Fn::GetAtt": [logical, "Arn"]}

        for action, source in sorted(self.tc.store_dynamodb_actions().items()):
            self.check(allowed(f"dynamodb:{action}", arn_of(self.table_id)), f"dynamodb:{action} is not allowed on the table (the store calls it, {source})")
        indexes = [g["IndexName"] for g in self.r[self.table_id]["Properties"].get("GlobalSecondaryIndexes") or []] if self.table_id else []
        for index in indexes:
            want = {"Fn::Join": ["", [{"Fn::GetAtt": [self.table_id, "Arn"]}, f"/index/{index}"]]}
            self.check(allowed("dynamodb:Query", lambda r, w=want: r == w), f"dynamodb:Query is not allowed on the index {index}")
        calls = sqs_calls()
        input_actions = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
        if worker or any(c.startswith("change_message_visibility") for c in calls if worker):
            input_actions.add("sqs:ChangeMessageVisibility")
        for action in sorted(input_actions):
            self.check(allowed(action, arn_of(self.input_id)), f"{action} is not allowed on the input queue")
        if worker:
            for call, action in [("receive_message", "sqs:ReceiveMessage"), ("delete_message", "sqs:DeleteMessage"), ("change_message_visibility", "sqs:ChangeMessageVisibility")]:
                if any(c.startswith(call) for c in calls):
                    self.check(action in input_actions, f"the worker calls {call} but {action} is not granted")
        for q in (self.output_id, self.dlq_id):
            for action in ("sqs:SendMessage", "sqs:GetQueueAttributes"):
                self.check(allowed(action, arn_of(q)), f"{action} is not allowed on {q}")
        # Nothing on other queues or tables.
        for s in st:
            for r in as_list(s.get("Resource")):
                ref = self.ref(r) if isinstance(r, dict) and "Fn::GetAtt" in r else None
                if ref and self.r.get(ref, {}).get("Type") in ("AWS::SQS::Queue", "AWS::DynamoDB::Table"):
                    self.check(ref in (self.input_id, self.output_id, self.dlq_id, self.table_id), f"{role_id}: access to {ref}")

    def environment(self, env: dict, read: set[str], source: str) -> None:
        names = set(env)
        unknown = sorted(n for n in names if n not in read and n not in OTHER_ENV)
        self.check(not unknown, f"sets {unknown}, which reseq does not read ({source})")
        missing = [n for n in REQUIRED_ENV if n not in names]
        self.check(not missing, f"does not set {missing}")
        self.service = env.get("RESEQ_SERVICE")
        self.check(env.get("RESEQ_TABLE") == {"Ref": self.table_id}, "RESEQ_TABLE is not the table")
        self.check(env.get("RESEQ_DLQ_URL") == {"Ref": self.dlq_id}, "RESEQ_DLQ_URL is not the DLQ")
        self.check(
            env.get("RESEQ_OUTPUT") == {"Fn::Join": ["", ["sqs:", {"Ref": self.output_id}]]},
            "RESEQ_OUTPUT is not sqs:<the output queue's URL>",
        )

    def lambda_function(self, fn_id: str, p: dict) -> None:
        self.check(p.get("Handler") == "bootstrap", "Handler must be bootstrap")
        self.check((p.get("TracingConfig") or {}).get("Mode") == "Active", "TracingConfig Mode must be Active")
        timeout = int(p.get("Timeout", 3))
        env = (p.get("Environment") or {}).get("Variables") or {}
        read, source = self.tc.settings_env_names()
        read = set(read) | env_names_in(rust_files("crates/reseq-lambda/src", "crates/reseq-metrics/src"))
        self.environment(env, read, f"{source}, crates/reseq-lambda, crates/reseq-metrics")
        missing_sam = sorted(n for n in REQUIRED_ENV if n in self.sam_env and n not in env)
        self.check(not missing_sam, f"does not set {missing_sam}, which template.yaml's function sets")
        lease = self.tc.parse_duration_ms(env.get("RESEQ_LEASE_DURATION", "0s")) / 1000
        self.check(lease > timeout, f"RESEQ_LEASE_DURATION ({lease} s) must be longer than the timeout ({timeout} s)")
        vis = int(self.r[self.input_id]["Properties"].get("VisibilityTimeout", 30))
        self.check(vis >= 6 * timeout, f"the input queue's visibility ({vis} s) must be >= 6 x the timeout ({timeout} s)")
        maps = [m["Properties"] for m in self.of_type("AWS::Lambda::EventSourceMapping").values()]
        if self.check(len(maps) == 1, f"expected one event source mapping, found {len(maps)}"):
            m = maps[0]
            self.check(self.ref(m.get("EventSourceArn")) == self.input_id, "the event source is not the input queue")
            self.check(self.ref(m.get("FunctionName")) == fn_id, "the event source does not invoke the function")
            self.check(int(m.get("BatchSize", 10)) <= self.tc.FIFO_MAX_BATCH, "BatchSize must be <= 10 on a FIFO queue")
            self.check("ReportBatchItemFailures" in (m.get("FunctionResponseTypes") or []), "FunctionResponseTypes must hold ReportBatchItemFailures")
            self.check("MaximumBatchingWindowInSeconds" not in m, "no MaximumBatchingWindowInSeconds on a FIFO event source")
        rules = [
            r["Properties"] for r in self.of_type("AWS::Events::Rule").values()
            if r["Properties"].get("ScheduleExpression") == "rate(1 minute)"
            and any(self.ref(t.get("Arn")) == fn_id for t in r["Properties"].get("Targets") or [])
        ]
        self.check(len(rules) == 1, "no rate(1 minute) rule invokes the function (the timer sweep)")
        perms = [
            q["Properties"] for q in self.of_type("AWS::Lambda::Permission").values()
            if q["Properties"].get("Principal") == "events.amazonaws.com" and self.ref(q["Properties"].get("FunctionName")) == fn_id
        ]
        self.check(len(perms) >= 1, "EventBridge may not invoke the function (no AWS::Lambda::Permission)")
        self.permissions(self.ref(p.get("Role")), worker=False)

    def ecs_task(self, td: dict) -> None:
        containers = td.get("ContainerDefinitions") or []
        routers = [c for c in containers if c.get("FirelensConfiguration")]
        workers = [c for c in containers if any(e.get("Name") == "RESEQ_QUEUE_URL" for e in c.get("Environment") or [])]
        if not self.check(len(workers) == 1, "expected one container with RESEQ_QUEUE_URL (the worker)"):
            return
        w = workers[0]
        env = {e["Name"]: e["Value"] for e in w.get("Environment") or []}
        read = env_names_in(rust_files("crates/reseq-settings/src", "crates/reseq-cli/src/worker.rs", "crates/reseq-cli/src/main.rs", "crates/reseq-metrics/src"))
        self.environment(env, read, "crates/reseq-settings, crates/reseq-cli/src/worker.rs, crates/reseq-metrics")
        self.check(env.get("RESEQ_QUEUE_URL") == {"Ref": self.input_id}, "RESEQ_QUEUE_URL is not the input queue")
        self.check("Command" not in w, "the worker container overrides the image's command (ENTRYPOINT reseq worker)")
        user = str(w.get("User", ""))
        self.check(user != "" and not re.match(r"^(0|root)(:|$)", user), f"the worker must run as a non-root user, not {user!r}")
        self.check(w.get("ReadonlyRootFilesystem") is True, "the worker's root filesystem should be read-only")
        lease = self.tc.parse_duration_ms(env.get("RESEQ_LEASE_DURATION", "60s")) / 1000
        stop = int(w.get("StopTimeout", 30))
        self.check(lease < stop <= FARGATE_MAX_STOP_TIMEOUT, f"StopTimeout ({stop} s) must exceed the lease ({lease} s) and be <= 120 s")
        self.check(env.get("RESEQ_METRICS") == "stderr", "RESEQ_METRICS must be stderr (EMF through FireLens)")
        log = w.get("LogConfiguration") or {}
        opts = log.get("Options") or {}
        self.check(
            log.get("LogDriver") == "awsfirelens" and opts.get("Name") == "cloudwatch_logs" and opts.get("log_format") == "json/emf",
            "the worker's logs must go through FireLens to cloudwatch_logs with log_format json/emf (else no EMF metrics)",
        )
        self.check(len(routers) == 1 and routers[0]["FirelensConfiguration"].get("Type") == "fluentbit", "no Fluent Bit FireLens router")
        self.permissions(self.ref(td.get("TaskRoleArn")), worker=True)
        targets = [t["Properties"] for t in self.of_type("AWS::ApplicationAutoScaling::ScalableTarget").values()]
        if self.check(len(targets) == 1, "expected one scalable target"):
            self.check(int(targets[0].get("MinCapacity", 0)) >= 1, "MinCapacity must be >= 1 (the workers run the sweep)")
        policies = [p["Properties"] for p in self.of_type("AWS::ApplicationAutoScaling::ScalingPolicy").values()]
        backlog = [
            p for p in policies
            if p.get("PolicyType") == "TargetTrackingScaling"
            and any(
                (m.get("MetricStat") or {}).get("Metric", {}).get("MetricName") == "ApproximateNumberOfMessagesVisible"
                and any(self.ref(d.get("Value")) == self.input_id for d in (m.get("MetricStat") or {}).get("Metric", {}).get("Dimensions") or [])
                for m in (p["TargetTrackingScalingPolicyConfiguration"].get("CustomizedMetricSpecification") or {}).get("Metrics") or []
            )
        ]
        self.check(len(backlog) == 1, "no target-tracking policy on the input queue's backlog")

    def reseq_metric(self, where: str, name: str, dims: dict, stat: str | None) -> None:
        """A metric of reseq's namespace as an alarm or a widget uses it, against `reseq metrics --json`."""
        metric = self.catalogue.metrics.get(name)
        if not self.check(metric is not None, f"{where}: reseq emits no metric {name!r} (reseq metrics --json)"):
            return
        self.check(
            tuple(sorted(dims)) in {tuple(sorted(d)) for d in metric.dimensions},
            f"{where}: {name} is emitted with the dimension sets {metric.dimensions}, not {sorted(dims)}",
        )
        self.check(dims.get("Service") == self.service, f"{where}: {name}'s Service must be RESEQ_SERVICE ({self.service!r})")
        if stat is not None:
            percentile = getattr(self.tc, "PERCENTILE", re.compile(r"p\d+(\.\d+)?"))
            ok = stat in self.tc.STATISTICS[metric.kind] or (metric.kind == "histogram" and percentile.fullmatch(stat))
            self.check(bool(ok), f"{where}: {name} is a {metric.kind}: statistic {stat!r} means nothing for it")

    def dashboard(self) -> None:
        boards = self.of_type("AWS::CloudWatch::Dashboard")
        if not self.check(len(boards) == 1, f"expected one dashboard, found {len(boards)}"):
            return
        body = next(iter(boards.values()))["Properties"]["DashboardBody"]
        if isinstance(body, dict) and "Fn::Join" in body:
            sep, parts = body["Fn::Join"]
            body = sep.join(p if isinstance(p, str) else "TOKEN" for p in parts)
        board = json.loads(body)
        namespace = self.catalogue.namespace
        shown: set[tuple[str, tuple[str, ...]]] = set()
        for i, widget in enumerate(board.get("widgets") or []):
            props = widget.get("properties") or {}
            where = f"dashboard widget {i} ({props.get('title', widget.get('type'))})"
            if widget.get("type") != "metric":
                continue
            for row in props.get("metrics") or []:
                if row and isinstance(row[0], dict):
                    for m in re.finditer(r"SEARCH\('\{([^}]*)\}\s*([^']*)'", row[0].get("expression", "")):
                        schema = [x.strip() for x in m.group(1).split(",")]
                        terms = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                        dims = {d: terms.get(d) for d in schema[1:] if d}
                        if schema[0] == namespace:
                            self.reseq_metric(where, terms.get("MetricName", ""), dims, None)
                            shown.add((terms.get("MetricName", ""), tuple(sorted(dims))))
                    continue
                options = row[-1] if row and isinstance(row[-1], dict) else {}
                fields = row[:-1] if options else row
                if len(fields) >= 2 and fields[0] == namespace:
                    dims = dict(zip(fields[2::2], fields[3::2]))
                    self.reseq_metric(where, fields[1], dims, options.get("stat") or props.get("stat"))
                    shown.add((fields[1], tuple(sorted(dims))))
        for metric in self.catalogue.metrics.values():
            for dims in metric.dimensions:
                self.check(
                    (metric.name, tuple(sorted(dims))) in shown,
                    f"the dashboard does not show {metric.name} by {list(dims)} (every metric reseq emits, each dimension set)",
                )

    def alarms(self) -> None:
        got = [a["Properties"] for a in self.of_type("AWS::CloudWatch::Alarm").values()]
        if self.catalogue is not None:
            for a in got:
                if a.get("Namespace") == self.catalogue.namespace:
                    dims = {d["Name"]: d["Value"] for d in a.get("Dimensions") or []}
                    self.reseq_metric(f"alarm on {a.get('MetricName')}", a.get("MetricName"), dims, a.get("Statistic"))
            self.dashboard()
        for a in got:
            if a.get("Namespace") == "Reseq":
                dims = {d["Name"]: d["Value"] for d in a.get("Dimensions") or []}
                self.check(dims == {"Service": self.service}, f"alarm on Reseq/{a.get('MetricName')}: dimensions {dims}, not Service = RESEQ_SERVICE ({self.service})")
        for want in self.expected_alarms:
            if want["Namespace"] == "AWS/Lambda" and self.flavour != "lambda":
                continue
            match = [a for a in got if all(a.get(k) == v for k, v in want.items())]
            self.check(bool(match), f"no alarm like template.yaml's {want}")


ALARM_KEYS = ("Namespace", "MetricName", "Statistic", "Period", "ComparisonOperator", "TreatMissingData")


def layout(p: dict) -> dict:
    return {
        "AttributeDefinitions": sorted((a["AttributeName"], a["AttributeType"]) for a in p.get("AttributeDefinitions") or []),
        "KeySchema": [(k["AttributeName"], k["KeyType"]) for k in p.get("KeySchema") or []],
        "GlobalSecondaryIndexes": sorted(
            (g["IndexName"], tuple((k["AttributeName"], k["KeyType"]) for k in g["KeySchema"]), g["Projection"]["ProjectionType"])
            for g in p.get("GlobalSecondaryIndexes") or []
        ),
        "BillingMode": p.get("BillingMode"),
        "TimeToLiveSpecification": (
            (p.get("TimeToLiveSpecification") or {}).get("AttributeName"),
            str((p.get("TimeToLiveSpecification") or {}).get("Enabled")).lower(),
        ),
        "PointInTimeRecovery": str((p.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled")).lower(),
    }


def sam_expectations(tc) -> tuple[dict, list[dict], set[str]]:
    sam = tc.load_template(ROOT / "template.yaml")
    res = sam["Resources"]
    tables = [v for v in res.values() if v.get("Type") == "AWS::DynamoDB::Table"]
    if len(tables) != 1:
        raise ValueError(f"template.yaml has {len(tables)} DynamoDB tables, expected 1")
    table = layout(tables[0]["Properties"])
    alarms = []
    for v in res.values():
        if v.get("Type") == "AWS::CloudWatch::Alarm":
            p = v["Properties"]
            alarms.append({k: p[k] for k in ALARM_KEYS if k in p and not isinstance(p[k], dict)})
    fns = [v for v in res.values() if v.get("Type") == "AWS::Serverless::Function"]
    env = ((fns[0]["Properties"].get("Environment") or {}).get("Variables") or {}) if fns else {}
    # Variables set whatever the parameters (not behind an !If).
    unconditional = {k for k, v in env.items() if not (isinstance(v, dict) and "Fn::If" in v)}
    return table, alarms, unconditional


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("templates", nargs="+", help="synthesized templates (cdk.out/*.template.json)")
    parser.add_argument(
        "--metrics", metavar="FILE", help="the output of `reseq metrics --json`: alarms and dashboard are checked against it"
    )
    args = parser.parse_args()
    try:
        tc = load_template_check()
        expected_table, expected_alarms, sam_env = sam_expectations(tc)
        catalogue = tc.load_catalogue(Path(args.metrics)) if args.metrics else None
    except (ImportError, OSError, ValueError, AttributeError) as e:
        print(f"cdk-template-check: {e}", file=sys.stderr)
        return 2
    failures, count = [], 0
    for t in args.templates:
        c = Check(Path(t).name, tc, expected_table, expected_alarms, sam_env, catalogue)
        try:
            c.run(Path(t))
        except (OSError, ValueError, KeyError) as e:
            print(f"cdk-template-check: cannot check {t}: {e!r}", file=sys.stderr)
            return 2
        failures += c.failures
        count += c.count
    for f in failures:
        print(f"cdk-template-check: {f}", file=sys.stderr)
    if failures:
        print(f"cdk-template-check: {len(failures)} of {count} checks failed", file=sys.stderr)
        return 1
    print(f"{count} content checks over {len(args.templates)} templates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
