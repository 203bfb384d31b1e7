// Assertion tests of the Resequencer construct and the example stacks (node's test
// runner: `npm test`). No AWS account, no Docker: the Lambda code is a placeholder folder
// and the ECS image a URI.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { App, Duration, Stack } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import { METRICS, ReseqEcsStack, ReseqLambdaStack, Resequencer, ResequencerProps, TABLE_LAYOUT } from '../lib';

const IMAGE = '123456789012.dkr.ecr.eu-west-1.amazonaws.com/reseq:1.2.3';

function placeholderBootstrap(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'reseq-bootstrap-'));
  fs.writeFileSync(path.join(dir, 'bootstrap'), '#!/bin/sh\n# placeholder: synth only\n', { mode: 0o755 });
  return dir;
}
const BOOTSTRAP = placeholderBootstrap();
const TEMP_DIRS: string[] = [BOOTSTRAP];
after(() => {
  for (const dir of TEMP_DIRS) fs.rmSync(dir, { recursive: true, force: true });
});

function synth(props: Partial<ResequencerProps> & Pick<ResequencerProps, 'flavour'>): { template: Template; reseq: Resequencer } {
  const stack = new Stack(new App(), 'Test', { env: { account: '123456789012', region: 'eu-west-1' } });
  const reseq = new Resequencer(stack, 'Orders', {
    lambda: props.flavour === 'lambda' ? { code: lambda.Code.fromAsset(BOOTSTRAP) } : undefined,
    ecs: props.flavour === 'ecs' ? { image: ecs.ContainerImage.fromRegistry(IMAGE) } : undefined,
    ...props,
  });
  return { template: Template.fromStack(stack), reseq };
}

function only(template: Template, type: string): { id: string; resource: any } {
  const all = template.findResources(type);
  const ids = Object.keys(all);
  assert.equal(ids.length, 1, `expected one ${type}, found ${ids.length}`);
  return { id: ids[0], resource: all[ids[0]] };
}

/** Every Allow statement of the policies attached to a role (inline and AWS::IAM::Policy). */
function statementsOf(template: Template, roleId: string): any[] {
  const out: any[] = [];
  const role = template.findResources('AWS::IAM::Role')[roleId];
  for (const p of role.Properties.Policies ?? []) out.push(...p.PolicyDocument.Statement);
  for (const p of Object.values(template.findResources('AWS::IAM::Policy')) as any[]) {
    if ((p.Properties.Roles ?? []).some((r: any) => r.Ref === roleId)) out.push(...p.Properties.PolicyDocument.Statement);
  }
  return out.filter((s) => s.Effect === 'Allow');
}

const list = (x: any): any[] => (Array.isArray(x) ? x : [x]);
const actionsOn = (statements: any[], resource: (r: any) => boolean): Set<string> =>
  new Set(statements.filter((s) => list(s.Resource).some(resource)).flatMap((s) => list(s.Action)));
const getAtt = (id: string) => (r: any) => JSON.stringify(r) === JSON.stringify({ 'Fn::GetAtt': [id, 'Arn'] });
const indexArn = (tableId: string, index: string) => (r: any) =>
  JSON.stringify(r) === JSON.stringify({ 'Fn::Join': ['', [{ 'Fn::GetAtt': [tableId, 'Arn'] }, `/index/${index}`]] });

function envOfLambda(template: Template): Record<string, any> {
  return only(template, 'AWS::Lambda::Function').resource.Properties.Environment.Variables;
}
function workerOf(template: Template): any {
  const td = only(template, 'AWS::ECS::TaskDefinition').resource.Properties;
  const worker = td.ContainerDefinitions.find((c: any) => c.Name === 'Worker');
  assert.ok(worker, 'no Worker container');
  return worker;
}
function envOfWorker(template: Template): Record<string, any> {
  return Object.fromEntries(workerOf(template).Environment.map((e: any) => [e.Name, e.Value]));
}

for (const flavour of ['lambda', 'ecs'] as const) {
  describe(`Resequencer, flavour ${flavour}: what both flavours share`, () => {
    const { template, reseq } = synth({ flavour });
    const queues = template.findResources('AWS::SQS::Queue');
    const inputId = Stack.of(reseq).getLogicalId(reseq.inputQueue.node.defaultChild as any);
    const dlqId = Stack.of(reseq).getLogicalId(reseq.deadLetterQueue.node.defaultChild as any);
    const outputId = Stack.of(reseq).getLogicalId(reseq.outputQueue.node.defaultChild as any);
    const tableId = Stack.of(reseq).getLogicalId(reseq.table.node.defaultChild as any);

    it('creates three FIFO queues: input with a redrive (maxReceiveCount >= 5) to a FIFO DLQ, and high-throughput output', () => {
      assert.equal(Object.keys(queues).length, 3);
      for (const q of Object.values(queues) as any[]) assert.equal(q.Properties.FifoQueue, true);
      const input = queues[inputId].Properties;
      assert.deepEqual(input.RedrivePolicy.deadLetterTargetArn, { 'Fn::GetAtt': [dlqId, 'Arn'] });
      assert.ok(input.RedrivePolicy.maxReceiveCount >= 5);
      assert.equal(input.ContentBasedDeduplication, false);
      assert.equal(input.MessageRetentionPeriod, 1209600);
      for (const id of [outputId, dlqId]) {
        assert.equal(queues[id].Properties.DeduplicationScope, 'messageGroup');
        assert.equal(queues[id].Properties.FifoThroughputLimit, 'perMessageGroupId');
      }
      assert.equal(queues[dlqId].DeletionPolicy, 'Retain');
      assert.equal(queues[dlqId].UpdateReplacePolicy, 'Retain');
    });

    it("creates the table with reseq's exact layout, on demand, PITR, TTL, retained", () => {
      const { resource } = only(template, 'AWS::DynamoDB::Table');
      assert.equal(resource.DeletionPolicy, 'Retain');
      assert.equal(resource.UpdateReplacePolicy, 'Retain');
      const p = resource.Properties;
      assert.deepEqual(p.KeySchema, [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ]);
      const attrs = Object.fromEntries(p.AttributeDefinitions.map((a: any) => [a.AttributeName, a.AttributeType]));
      assert.deepEqual(attrs, { pk: 'S', sk: 'N', due_shard: 'N', due_at: 'N', att_shard: 'N', att: 'S' });
      const gsis = Object.fromEntries(p.GlobalSecondaryIndexes.map((g: any) => [g.IndexName, g]));
      assert.deepEqual(Object.keys(gsis).sort(), ['attention', 'due']);
      assert.deepEqual(gsis.due.KeySchema, [
        { AttributeName: 'due_shard', KeyType: 'HASH' },
        { AttributeName: 'due_at', KeyType: 'RANGE' },
      ]);
      assert.deepEqual(gsis.attention.KeySchema, [
        { AttributeName: 'att_shard', KeyType: 'HASH' },
        { AttributeName: 'att', KeyType: 'RANGE' },
      ]);
      for (const g of Object.values(gsis) as any[]) assert.deepEqual(g.Projection, { ProjectionType: 'KEYS_ONLY' });
      assert.equal(p.BillingMode, 'PAY_PER_REQUEST');
      assert.deepEqual(p.TimeToLiveSpecification, { AttributeName: 'ttl', Enabled: true });
      assert.deepEqual(p.PointInTimeRecoverySpecification, { PointInTimeRecoveryEnabled: true });
      assert.equal(TABLE_LAYOUT.timeToLiveAttribute, 'ttl');
    });

    it('gives its role least privilege: the right actions on the right resources, no wildcard actions, no managed policies', () => {
      const roleId = Stack.of(reseq).getLogicalId(reseq.role.node.defaultChild as any);
      const role = template.findResources('AWS::IAM::Role')[roleId];
      assert.equal(role.Properties.ManagedPolicyArns, undefined);
      const st = statementsOf(template, roleId);
      for (const s of st) for (const a of list(s.Action)) assert.ok(!String(a).includes('*'), `wildcard action ${a}`);
      // "*" resources only where AWS has no other (X-Ray).
      for (const s of st.filter((s) => list(s.Resource).includes('*'))) {
        for (const a of list(s.Action)) assert.match(a, /^xray:/, `${a} on every resource`);
      }
      const input = [...actionsOn(st, getAtt(inputId))].sort();
      const expectedInput = ['sqs:DeleteMessage', 'sqs:GetQueueAttributes', 'sqs:ReceiveMessage'];
      if (flavour === 'ecs') expectedInput.push('sqs:ChangeMessageVisibility');
      assert.deepEqual(input, expectedInput.sort());
      for (const id of [outputId, dlqId]) {
        assert.deepEqual([...actionsOn(st, getAtt(id))].sort(), ['sqs:GetQueueAttributes', 'sqs:SendMessage']);
      }
      assert.deepEqual(
        [...actionsOn(st, getAtt(tableId))].sort(),
        [
          'dynamodb:BatchWriteItem',
          'dynamodb:DeleteItem',
          'dynamodb:DescribeTable',
          'dynamodb:GetItem',
          'dynamodb:PutItem',
          'dynamodb:Query',
          'dynamodb:UpdateItem',
        ],
      );
      for (const index of ['due', 'attention']) {
        assert.deepEqual([...actionsOn(st, indexArn(tableId, index))], ['dynamodb:Query'], `Query on index ${index}`);
      }
      const logsId = Stack.of(reseq).getLogicalId(reseq.logGroup.node.defaultChild as any);
      assert.deepEqual([...actionsOn(st, getAtt(logsId))].sort(), ['logs:CreateLogStream', 'logs:PutLogEvents']);
      // Nothing else: every statement is one of the above.
      const known = [getAtt(inputId), getAtt(outputId), getAtt(dlqId), getAtt(tableId), getAtt(logsId), indexArn(tableId, 'due'), indexArn(tableId, 'attention'), (r: any) => r === '*'];
      for (const s of st) for (const r of list(s.Resource)) assert.ok(known.some((k) => k(r)), `unexpected resource ${JSON.stringify(r)}`);
    });

    it('has no wildcard action anywhere in the template', () => {
      for (const p of Object.values(template.findResources('AWS::IAM::Policy')) as any[]) {
        for (const s of p.Properties.PolicyDocument.Statement) for (const a of list(s.Action)) assert.ok(!String(a).includes('*'), a);
      }
    });

    it("creates the alarms of the operations issue on reseq's metrics (namespace Reseq, dimension Service = RESEQ_SERVICE)", () => {
      const env = flavour === 'lambda' ? envOfLambda(template) : envOfWorker(template);
      assert.equal(env.RESEQ_SERVICE, 'Orders');
      assert.equal(env.RESEQ_METRICS, flavour === 'lambda' ? 'stdout' : 'stderr');
      const dims = [{ Name: METRICS.dimension, Value: 'Orders' }];
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        Namespace: 'Reseq', MetricName: 'OldestWaitingAge', Dimensions: dims, Statistic: 'Maximum',
        Threshold: 900, ComparisonOperator: 'GreaterThanThreshold', TreatMissingData: 'notBreaching',
      });
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        Namespace: 'Reseq', MetricName: 'BlockedContexts', Dimensions: dims, Threshold: 0, ComparisonOperator: 'GreaterThanThreshold',
      });
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        Namespace: 'Reseq', MetricName: 'SweepErrors', Dimensions: dims, Statistic: 'Sum', Threshold: 0, ComparisonOperator: 'GreaterThanThreshold',
      });
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        Namespace: 'Reseq', MetricName: 'Sweeps', Dimensions: dims, Statistic: 'Sum', Period: 300, Threshold: 1,
        ComparisonOperator: 'LessThanThreshold', TreatMissingData: 'breaching',
      });
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesVisible',
        Dimensions: [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [dlqId, 'QueueName'] } }], Threshold: 0,
        ComparisonOperator: 'GreaterThanThreshold',
      });
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        Namespace: 'AWS/SQS', MetricName: 'ApproximateAgeOfOldestMessage',
        Dimensions: [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [inputId, 'QueueName'] } }], Threshold: 900,
      });
      const lambdaAlarms = Object.values(template.findResources('AWS::CloudWatch::Alarm')).filter((a: any) => a.Properties.Namespace === 'AWS/Lambda');
      assert.equal(lambdaAlarms.length, flavour === 'lambda' ? 2 : 0);
      template.resourceCountIs('AWS::CloudWatch::Alarm', flavour === 'lambda' ? 8 : 6);
      template.resourceCountIs('AWS::CloudWatch::Dashboard', 1);
      // No topic given: no actions.
      for (const a of Object.values(template.findResources('AWS::CloudWatch::Alarm')) as any[]) assert.equal(a.Properties.AlarmActions, undefined);
    });
  });
}

describe('Resequencer, flavour lambda', () => {
  const { template, reseq } = synth({ flavour: 'lambda', gapTimeout: '30s', settings: { RESEQ_CONTEXT_PATH: '/orderId' } });
  const stack = Stack.of(reseq);
  const fnId = stack.getLogicalId(reseq.function!.node.defaultChild as any);
  const inputId = stack.getLogicalId(reseq.inputQueue.node.defaultChild as any);

  it('runs the bootstrap on provided.al2023, arm64, with active tracing and JSON logs', () => {
    template.hasResourceProperties('AWS::Lambda::Function', {
      Runtime: 'provided.al2023',
      Handler: 'bootstrap',
      Architectures: ['arm64'],
      Timeout: 60,
      MemorySize: 256,
      TracingConfig: { Mode: 'Active' },
      LoggingConfig: Match.objectLike({ LogFormat: 'JSON' }),
    });
  });

  it('sets the env vars template.yaml sets: lease = timeout + 30 s, sqs: output, the DLQ', () => {
    const env = envOfLambda(template);
    assert.deepEqual(env.RESEQ_TABLE, { Ref: stack.getLogicalId(reseq.table.node.defaultChild as any) });
    assert.deepEqual(env.RESEQ_OUTPUT, { 'Fn::Join': ['', ['sqs:', { Ref: stack.getLogicalId(reseq.outputQueue.node.defaultChild as any) }]] });
    assert.deepEqual(env.RESEQ_DLQ_URL, { Ref: stack.getLogicalId(reseq.deadLetterQueue.node.defaultChild as any) });
    assert.equal(env.RESEQ_LEASE_DURATION, '90s');
    assert.equal(env.RESEQ_INVALID, 'dlq');
    assert.equal(env.RESEQ_GAP_TIMEOUT, '30s');
    assert.equal(env.RESEQ_CONTEXT_PATH, '/orderId');
    for (const name of Object.keys(env)) assert.match(name, /^RESEQ_[A-Z0-9_]+$/);
  });

  it('feeds it from the input queue: batch 10, ReportBatchItemFailures, no batching window', () => {
    const { resource } = only(template, 'AWS::Lambda::EventSourceMapping');
    assert.deepEqual(resource.Properties.EventSourceArn, { 'Fn::GetAtt': [inputId, 'Arn'] });
    assert.deepEqual(resource.Properties.FunctionName, { Ref: fnId });
    assert.equal(resource.Properties.BatchSize, 10);
    assert.deepEqual(resource.Properties.FunctionResponseTypes, ['ReportBatchItemFailures']);
    assert.equal(resource.Properties.MaximumBatchingWindowInSeconds, undefined);
  });

  it('gives the input queue a visibility timeout of 6 x the function timeout', () => {
    template.hasResourceProperties('AWS::SQS::Queue', { VisibilityTimeout: 360, RedrivePolicy: Match.anyValue() });
  });

  it('sweeps every minute through an EventBridge rule, not retried', () => {
    template.hasResourceProperties('AWS::Events::Rule', {
      ScheduleExpression: 'rate(1 minute)',
      Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [fnId, 'Arn'] } })],
    });
    template.hasResourceProperties('AWS::Lambda::Permission', { Principal: 'events.amazonaws.com', Action: 'lambda:InvokeFunction' });
    template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', { MaximumRetryAttempts: 0 });
  });

  it('derives lease and visibility from every timeout template.yaml allows', () => {
    for (const t of [15, 30, 60, 120, 300, 600, 900]) {
      const stack = new Stack(new App(), 'T');
      new Resequencer(stack, 'R', { flavour: 'lambda', lambda: { code: lambda.Code.fromAsset(BOOTSTRAP), timeout: Duration.seconds(t) } });
      const tpl = Template.fromStack(stack);
      assert.equal(envOfLambda(tpl).RESEQ_LEASE_DURATION, `${t + 30}s`);
      tpl.hasResourceProperties('AWS::SQS::Queue', { VisibilityTimeout: 6 * t, RedrivePolicy: Match.anyValue() });
    }
  });

  it('sends alarms to the topic given', () => {
    const stack = new Stack(new App(), 'T');
    const topic = new sns.Topic(stack, 'Topic');
    new Resequencer(stack, 'R', { flavour: 'lambda', lambda: { code: lambda.Code.fromAsset(BOOTSTRAP) }, alarmTopic: topic });
    const alarms = Object.values(Template.fromStack(stack).findResources('AWS::CloudWatch::Alarm')) as any[];
    assert.equal(alarms.length, 8);
    const topicId = stack.getLogicalId(topic.node.defaultChild as any);
    for (const a of alarms) {
      assert.deepEqual(a.Properties.AlarmActions, [{ Ref: topicId }]);
      assert.deepEqual(a.Properties.OKActions, [{ Ref: topicId }]);
    }
  });
});

describe('Resequencer, flavour ecs', () => {
  const { template, reseq } = synth({ flavour: 'ecs' });
  const stack = Stack.of(reseq);
  const inputId = stack.getLogicalId(reseq.inputQueue.node.defaultChild as any);

  it('runs the image as reseq worker, non-root, read-only root, stop timeout above the lease', () => {
    const worker = workerOf(template);
    assert.equal(worker.Image, IMAGE);
    assert.equal(worker.User, '65532:65532');
    assert.equal(worker.ReadonlyRootFilesystem, true);
    assert.equal(worker.StopTimeout, 120);
    assert.equal(worker.Essential, true);
    assert.equal(worker.Command, undefined, "the image's ENTRYPOINT is reseq worker, configured by env vars");
    const env = envOfWorker(template);
    assert.ok(parseInt(env.RESEQ_LEASE_DURATION, 10) < worker.StopTimeout);
    assert.deepEqual(env.RESEQ_QUEUE_URL, { Ref: inputId });
    assert.deepEqual(env.RESEQ_OUTPUT, { 'Fn::Join': ['', ['sqs:', { Ref: stack.getLogicalId(reseq.outputQueue.node.defaultChild as any) }]] });
    assert.deepEqual(env.RESEQ_DLQ_URL, { Ref: stack.getLogicalId(reseq.deadLetterQueue.node.defaultChild as any) });
    assert.deepEqual(env.RESEQ_TABLE, { Ref: stack.getLogicalId(reseq.table.node.defaultChild as any) });
    assert.equal(env.RESEQ_METRICS, 'stderr');
    assert.equal(env.RESEQ_LOG_FORMAT, 'json');
  });

  it('is a Fargate task (arm64 by default) whose role is the least-privilege one', () => {
    const td = only(template, 'AWS::ECS::TaskDefinition').resource.Properties;
    assert.deepEqual(td.RequiresCompatibilities, ['FARGATE']);
    assert.deepEqual(td.RuntimePlatform, { CpuArchitecture: 'ARM64', OperatingSystemFamily: 'LINUX' });
    assert.deepEqual(td.TaskRoleArn, { 'Fn::GetAtt': [stack.getLogicalId(reseq.role.node.defaultChild as any), 'Arn'] });
  });

  it('routes the logs through FireLens (Fluent Bit cloudwatch_logs, json/emf) so that CloudWatch extracts the EMF metrics', () => {
    const td = only(template, 'AWS::ECS::TaskDefinition').resource.Properties;
    const router = td.ContainerDefinitions.find((c: any) => c.FirelensConfiguration);
    assert.ok(router, 'no FireLens log router');
    assert.equal(router.FirelensConfiguration.Type, 'fluentbit');
    assert.match(router.Image, /aws-for-fluent-bit:\d+\.\d+\.\d+$/);
    const log = workerOf(template).LogConfiguration;
    assert.equal(log.LogDriver, 'awsfirelens');
    assert.equal(log.Options.Name, 'cloudwatch_logs');
    assert.equal(log.Options.log_format, 'json/emf');
    assert.deepEqual(log.Options.log_group_name, { Ref: stack.getLogicalId(reseq.logGroup.node.defaultChild as any) });
  });

  it('scales on the input backlog per running task (target tracking, metric math)', () => {
    const target = only(template, 'AWS::ApplicationAutoScaling::ScalableTarget');
    assert.equal(target.resource.Properties.MinCapacity, 1);
    assert.equal(target.resource.Properties.MaxCapacity, 10);
    assert.equal(target.resource.Properties.ScalableDimension, 'ecs:service:DesiredCount');
    const policy = only(template, 'AWS::ApplicationAutoScaling::ScalingPolicy').resource.Properties;
    assert.equal(policy.PolicyType, 'TargetTrackingScaling');
    assert.deepEqual(policy.ScalingTargetId, { Ref: target.id });
    const cfg = policy.TargetTrackingScalingPolicyConfiguration;
    assert.equal(cfg.TargetValue, 1000);
    const metrics = cfg.CustomizedMetricSpecification.Metrics;
    const byId = Object.fromEntries(metrics.map((m: any) => [m.Id, m]));
    assert.equal(byId.visible.MetricStat.Metric.MetricName, 'ApproximateNumberOfMessagesVisible');
    assert.deepEqual(byId.visible.MetricStat.Metric.Dimensions, [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [inputId, 'QueueName'] } }]);
    assert.equal(byId.tasks.MetricStat.Metric.MetricName, 'RunningTaskCount');
    assert.equal(byId.backlogPerTask.Expression, 'visible / tasks');
    assert.equal(byId.backlogPerTask.ReturnData, true);
    // RunningTaskCount exists only with Container Insights.
    template.hasResourceProperties('AWS::ECS::Cluster', { ClusterSettings: [{ Name: 'containerInsights', Value: 'enabled' }] });
  });

  it('creates the service with at least one task (the workers also sweep) and rollback on failed deployments', () => {
    template.hasResourceProperties('AWS::ECS::Service', {
      LaunchType: 'FARGATE',
      DesiredCount: 1,
      DeploymentConfiguration: Match.objectLike({ DeploymentCircuitBreaker: { Enable: true, Rollback: true } }),
    });
    template.resourceCountIs('AWS::EC2::NatGateway', 0);
  });

  it('refuses what cannot work', () => {
    const make = (p: Partial<ResequencerProps>, ecsProps: any = {}) => () =>
      new Resequencer(new Stack(new App(), 'T'), 'R', {
        flavour: 'ecs',
        ecs: { image: ecs.ContainerImage.fromRegistry(IMAGE), ...ecsProps },
        ...p,
      });
    assert.throws(make({}, { stopTimeout: Duration.seconds(180) }), /stopTimeout must be 2 to 120/);
    assert.throws(make({}, { leaseDuration: Duration.seconds(120) }), /must be shorter than ecs.stopTimeout/);
    assert.throws(make({}, { minTasks: 0 }), /at least 1/);
    assert.throws(make({}, { user: 'root' }), /must not be root/);
    assert.throws(make({}, { user: '0:0' }), /must not be root/);
    assert.throws(make({ maxReceiveCount: 3 }), /maxReceiveCount/);
    assert.throws(make({ settings: { RESEQ_TABLE: 'x' } }), /may not set RESEQ_TABLE/);
    assert.throws(make({ settings: { FOO: 'x' } }), /not a RESEQ_/);
    assert.throws(make({ settings: { RESEQ_METRICS_NAMESPACE: 'Other' } }), /may not set RESEQ_METRICS_NAMESPACE/);
    assert.throws(make({ gapTimeout: '30 seconds' }), /not a duration/);
    assert.throws(() => new Resequencer(new Stack(new App(), 'T'), 'R', { flavour: 'lambda' }), /needs the `lambda` props/);
    assert.throws(
      () => new Resequencer(new Stack(new App(), 'T'), 'R', { flavour: 'lambda', lambda: { code: lambda.Code.fromAsset(BOOTSTRAP), timeout: Duration.minutes(20) } }),
      /1 to 900/,
    );
  });
});

describe('the example stacks', () => {
  it('name everything as template.yaml does, and output the URLs and the table', () => {
    const l = Template.fromStack(new ReseqLambdaStack(new App(), 'L', { bootstrapDir: BOOTSTRAP }));
    const e = Template.fromStack(new ReseqEcsStack(new App(), 'E', { image: IMAGE }));
    l.hasResourceProperties('AWS::SQS::Queue', { QueueName: 'reseq-input.fifo' });
    l.hasResourceProperties('AWS::SQS::Queue', { QueueName: 'reseq-dlq.fifo' });
    l.hasResourceProperties('AWS::SQS::Queue', { QueueName: 'reseq-output.fifo' });
    l.hasResourceProperties('AWS::DynamoDB::Table', { TableName: 'reseq' });
    l.hasResourceProperties('AWS::Lambda::Function', { FunctionName: 'reseq' });
    l.hasResourceProperties('AWS::CloudWatch::Alarm', { AlarmName: 'reseq-sweep-not-running' });
    e.hasResourceProperties('AWS::DynamoDB::Table', { TableName: 'reseq-ecs' });
    for (const t of [l, e]) {
      for (const o of ['InputQueueUrl', 'OutputQueueUrl', 'DeadLetterQueueUrl', 'TableName']) t.hasOutput(o, Match.anyValue());
      t.resourceCountIs('AWS::SNS::Topic', 1);
      for (const a of Object.values(t.findResources('AWS::CloudWatch::Alarm')) as any[]) assert.equal(a.Properties.AlarmActions.length, 1);
    }
  });

  it('pulls an ECR image with a pull grant on that repository only', () => {
    const e = Template.fromStack(new ReseqEcsStack(new App(), 'E', { image: IMAGE }));
    const policies = Object.values(e.findResources('AWS::IAM::Policy')) as any[];
    const statements = policies.flatMap((p) => p.Properties.PolicyDocument.Statement);
    const pull = statements.find((s) => list(s.Action).includes('ecr:BatchGetImage'));
    assert.ok(pull);
    assert.match(JSON.stringify(pull.Resource), /:ecr:eu-west-1:123456789012:repository\/reseq/);
  });

  it('builds the image from the repository Dockerfile as an asset (no Docker needed to synthesize)', () => {
    const repoRoot = path.resolve(__dirname, '..', '..', '..', '..');
    const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'reseq-cdk-out-'));
    TEMP_DIRS.push(outdir);
    const app = new App({ outdir });
    const stack = new ReseqEcsStack(app, 'E', {
      image: ecs.ContainerImage.fromAsset(repoRoot, { file: 'Dockerfile' }),
    });
    const asm = app.synth();
    const worker = workerOf(Template.fromStack(stack));
    assert.match(JSON.stringify(worker.Image), /cdk-hnb659fds-container-assets/);
    const manifest = JSON.parse(fs.readFileSync(path.join(asm.directory, 'E.assets.json'), 'utf8'));
    const images = Object.values(manifest.dockerImages ?? {}) as any[];
    assert.equal(images.length, 1);
    const staged = path.join(asm.directory, images[0].source.directory);
    // .dockerignore keeps the build context small: no target/, no node_modules, no .git.
    for (const excluded of ['target', '.git', '.emulators', 'infra']) assert.ok(!fs.existsSync(path.join(staged, excluded)), `${excluded} in the image context`);
    for (const needed of ['Dockerfile', 'Cargo.toml', 'Cargo.lock', 'crates']) assert.ok(fs.existsSync(path.join(staged, needed)), `${needed} missing from the image context`);
  });
});
