import { Aws, Duration, RemovalPolicy, Stack, Token } from 'aws-cdk-lib';
import * as appscaling from 'aws-cdk-lib/aws-applicationautoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwactions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';

/**
 * reseq's staging table layout, as `reseq init` creates it (crates/reseq-dynamodb) and
 * template.yaml declares it. scripts/cdk-template-check.py compares the synthesized
 * table with template.yaml's.
 */
export const TABLE_LAYOUT = {
  partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
  sortKey: { name: 'sk', type: dynamodb.AttributeType.NUMBER },
  /** Sparse: only items with a timer (gap timeout, retry, retention, lease) carry these. */
  dueIndex: {
    indexName: 'due',
    partitionKey: { name: 'due_shard', type: dynamodb.AttributeType.NUMBER },
    sortKey: { name: 'due_at', type: dynamodb.AttributeType.NUMBER },
  },
  /** Sparse: only contexts an operator must look at (blocked, waiting) carry these. */
  attentionIndex: {
    indexName: 'attention',
    partitionKey: { name: 'att_shard', type: dynamodb.AttributeType.NUMBER },
    sortKey: { name: 'att', type: dynamodb.AttributeType.STRING },
  },
  timeToLiveAttribute: 'ttl',
} as const;

/** The metrics reseq emits (CloudWatch Embedded Metric Format) that the alarms use. */
export const METRICS = {
  namespace: 'Reseq',
  dimension: 'Service',
  oldestWaitingAge: 'OldestWaitingAge',
  blockedContexts: 'BlockedContexts',
  sweepErrors: 'SweepErrors',
  sweeps: 'Sweeps',
} as const;

/** The default log router image (AWS for Fluent Bit, 3.x line). */
export const DEFAULT_FLUENT_BIT_IMAGE = 'public.ecr.aws/aws-observability/aws-for-fluent-bit:3.4.8';

/** The environment variables the construct sets itself; `settings` may not override them. */
const MANAGED_ENV = [
  'RESEQ_QUEUE_URL',
  'RESEQ_TABLE',
  'RESEQ_OUTPUT',
  'RESEQ_DLQ_URL',
  'RESEQ_INVALID',
  'RESEQ_LEASE_DURATION',
  'RESEQ_GAP_TIMEOUT',
  'RESEQ_SERVICE',
  'RESEQ_METRICS',
  // Not set (reseq's default, `Reseq`), but the alarms and the dashboard read that namespace.
  'RESEQ_METRICS_NAMESPACE',
];

/** The Lambda flavour: the `bootstrap` of crates/reseq-lambda. */
export interface ResequencerLambdaOptions {
  /**
   * The function's code: a folder or zip holding `bootstrap`, e.g.
   * `lambda.Code.fromAsset('target/lambda/bootstrap')` after
   * `scripts/cargo-lambda.sh run build --profile lambda --arm64 -p reseq-lambda`.
   */
  readonly code: lambda.Code;
  /**
   * Function timeout (1 s to 15 min). It sets RESEQ_LEASE_DURATION to timeout + 30 s and the
   * input queue's visibility timeout to 6 x timeout, as template.yaml does.
   * @default Duration.seconds(60)
   */
  readonly timeout?: Duration;
  /** @default 256 */
  readonly memorySize?: number;
  /**
   * Must match the build (`--arm64` for ARM_64).
   * @default lambda.Architecture.ARM_64
   */
  readonly architecture?: lambda.Architecture;
  /** Most concurrent invocations the SQS event source starts (2-1000). @default no cap */
  readonly maxConcurrency?: number;
}

/** The ECS flavour: `reseq worker` on Fargate. */
export interface ResequencerEcsOptions {
  /**
   * The image whose entrypoint is `reseq worker` (the repository's Dockerfile):
   * `ecs.ContainerImage.fromRegistry('<account>.dkr.ecr.<region>.amazonaws.com/reseq:<tag>')`,
   * `fromEcrRepository(...)`, or `fromAsset('<repo root>', { platform })` (built by `cdk deploy`).
   */
  readonly image: ecs.ContainerImage;
  /** Must match the image. @default ecs.CpuArchitecture.ARM64 */
  readonly cpuArchitecture?: ecs.CpuArchitecture;
  /**
   * A cluster to run in. It needs Container Insights (the scaling policy reads its
   * RunningTaskCount). @default a new cluster (Container Insights on) in `vpc`
   */
  readonly cluster?: ecs.ICluster;
  /**
   * The VPC of the new cluster. @default a new VPC with public subnets only in 2 AZs and no
   * NAT gateway; the tasks get public IPs to reach SQS, DynamoDB, ECR and CloudWatch
   */
  readonly vpc?: ec2.IVpc;
  /** Subnets of the tasks. @default public subnets of a new VPC, else private with egress */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /** @default true when the construct created the VPC, false otherwise */
  readonly assignPublicIp?: boolean;
  /** @default 256 (.25 vCPU) */
  readonly cpu?: number;
  /** @default 512 */
  readonly memoryLimitMiB?: number;
  /**
   * At least 1: the workers also run the timer sweep (gap timeouts, retries, retention,
   * dead workers' leases), so with no task running nothing is swept. @default 1
   */
  readonly minTasks?: number;
  /** @default 10 */
  readonly maxTasks?: number;
  /**
   * Target of the scaling policy: visible input messages per running task. @default 1000
   */
  readonly messagesPerTask?: number;
  /**
   * RESEQ_LEASE_DURATION: a batch in flight ends within it (3/4 release budget + 1/4 for the
   * last handler call). @default Duration.seconds(60)
   */
  readonly leaseDuration?: Duration;
  /**
   * How long ECS waits after SIGTERM before SIGKILL: longer than the lease, so that a batch
   * in flight ends and commits. Fargate allows at most 120 s. @default Duration.seconds(120)
   */
  readonly stopTimeout?: Duration;
  /** The user the worker runs as. @default '65532:65532' (distroless `nonroot`) */
  readonly user?: string;
  /** The FireLens log router. @default DEFAULT_FLUENT_BIT_IMAGE */
  readonly logRouterImage?: ecs.ContainerImage;
  /** Input queue visibility timeout (the worker extends it while a batch runs). @default 2 x lease */
  readonly visibilityTimeout?: Duration;
}

export interface ResequencerProps {
  /** `lambda`: the bootstrap function fed by SQS, swept every minute; `ecs`: reseq worker on Fargate. */
  readonly flavour: 'lambda' | 'ecs';
  /** Required when flavour is 'lambda'. */
  readonly lambda?: ResequencerLambdaOptions;
  /** Required when flavour is 'ecs'. */
  readonly ecs?: ResequencerEcsOptions;
  /**
   * Names as in template.yaml: table `<prefix>`, queues `<prefix>-input.fifo`, `-dlq.fifo`,
   * `-output.fifo`, function `<prefix>`. @default names generated by CloudFormation
   */
  readonly namePrefix?: string;
  /** RESEQ_SERVICE, the `Service` dimension of reseq's metrics and alarms. @default namePrefix, else the construct's id */
  readonly serviceName?: string;
  /** RESEQ_GAP_TIMEOUT, e.g. '30s'. @default unset: a gap is waited for forever */
  readonly gapTimeout?: string;
  /** RESEQ_INVALID. @default 'dlq' (at once to the DLQ with reseqReason, as template.yaml) */
  readonly invalidMessages?: 'dlq' | 'redrive';
  /** Receives of an input message before SQS moves it to the DLQ (at least 5). @default 5 */
  readonly maxReceiveCount?: number;
  /**
   * Any other reseq setting, by its env var: { RESEQ_CONTEXT_PATH: '/orderId', RESEQ_MAX_STAGED: '5000' }.
   * The names are `reseq worker --help`'s; the ones this construct sets are refused.
   */
  readonly settings?: Record<string, string>;
  /** @default logs.RetentionDays.ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
  /** Alarm and OK notifications. @default no actions */
  readonly alarmTopic?: sns.ITopic;
  /** Alarm when a message has waited longer than this for a missing position. @default 15 minutes */
  readonly oldestWaitingAgeThreshold?: Duration;
  /** Alarm when the input queue's oldest message is older than this. @default 15 minutes */
  readonly inputQueueAgeThreshold?: Duration;
  /** @default true */
  readonly dashboard?: boolean;
}

/**
 * reseq with everything it uses: the FIFO input queue and its FIFO DLQ, the FIFO output
 * queue, the DynamoDB staging table, either the `bootstrap` Lambda function (SQS event
 * source + a 1-minute sweep schedule) or `reseq worker` on Fargate (with backlog-per-task
 * autoscaling), least-privilege roles, the alarms, and a dashboard.
 */
export class Resequencer extends Construct {
  readonly inputQueue: sqs.Queue;
  readonly deadLetterQueue: sqs.Queue;
  readonly outputQueue: sqs.Queue;
  readonly table: dynamodb.Table;
  readonly logGroup: logs.LogGroup;
  /** RESEQ_SERVICE: the `Service` dimension of the metrics. */
  readonly serviceName: string;
  /** The role the function or the worker runs with. */
  readonly role: iam.Role;
  readonly alarms: cloudwatch.Alarm[] = [];
  readonly dashboard?: cloudwatch.Dashboard;
  readonly function?: lambda.Function;
  readonly service?: ecs.FargateService;
  readonly taskDefinition?: ecs.FargateTaskDefinition;
  /** The worker container (ECS flavour). */
  readonly container?: ecs.ContainerDefinition;

  constructor(scope: Construct, id: string, props: ResequencerProps) {
    super(scope, id);
    const flavour = props.flavour;
    if (flavour !== 'lambda' && flavour !== 'ecs') {
      throw new Error(`Resequencer: flavour must be 'lambda' or 'ecs', not ${JSON.stringify(flavour)}`);
    }
    if (flavour === 'lambda' && !props.lambda) throw new Error("Resequencer: flavour 'lambda' needs the `lambda` props (code)");
    if (flavour === 'ecs' && !props.ecs) throw new Error("Resequencer: flavour 'ecs' needs the `ecs` props (image)");
    const prefix = props.namePrefix;
    if (prefix !== undefined && !/^[a-zA-Z0-9][a-zA-Z0-9_-]{2,39}$/.test(prefix)) {
      throw new Error(`Resequencer: namePrefix ${JSON.stringify(prefix)} must be 3 to 40 letters, digits, '-' or '_'`);
    }
    this.serviceName = props.serviceName ?? prefix ?? id;
    const maxReceiveCount = props.maxReceiveCount ?? 5;
    if (!Number.isInteger(maxReceiveCount) || maxReceiveCount < 5 || maxReceiveCount > 1000) {
      throw new Error(`Resequencer: maxReceiveCount must be 5 to 1000, not ${maxReceiveCount}`);
    }
    if (props.gapTimeout !== undefined && !/^[0-9]+(ms|s|m|h|d)$/.test(props.gapTimeout)) {
      throw new Error(`Resequencer: gapTimeout ${JSON.stringify(props.gapTimeout)} is not a duration such as 500ms, 30s, 5m, 2h, 1d`);
    }
    const settings = props.settings ?? {};
    for (const name of Object.keys(settings)) {
      if (!/^RESEQ_[A-Z0-9_]+$/.test(name)) throw new Error(`Resequencer: settings key ${name} is not a RESEQ_* variable`);
      if (MANAGED_ENV.includes(name)) throw new Error(`Resequencer: settings may not set ${name}: the construct sets it (use its prop)`);
    }

    // Timing: Lambda derives the lease and the visibility from the function timeout (as
    // template.yaml's TimeoutSettings); the worker from its lease.
    let lease: Duration;
    let visibility: Duration;
    if (flavour === 'lambda') {
      const timeout = props.lambda!.timeout ?? Duration.seconds(60);
      const t = timeout.toSeconds();
      if (!Number.isInteger(t) || t < 1 || t > 900) throw new Error(`Resequencer: lambda.timeout must be 1 to 900 s, not ${t}`);
      lease = Duration.seconds(t + 30);
      visibility = Duration.seconds(6 * t);
    } else {
      lease = props.ecs!.leaseDuration ?? Duration.seconds(60);
      const stop = (props.ecs!.stopTimeout ?? Duration.seconds(120)).toSeconds();
      if (stop > 120 || stop < 2) throw new Error(`Resequencer: ecs.stopTimeout must be 2 to 120 s (Fargate's limit), not ${stop}`);
      if (lease.toSeconds() >= stop) {
        throw new Error(
          `Resequencer: ecs.leaseDuration (${lease.toSeconds()} s) must be shorter than ecs.stopTimeout (${stop} s): ` +
            'a batch in flight at SIGTERM may run for the whole lease before it commits',
        );
      }
      visibility = props.ecs!.visibilityTimeout ?? Duration.seconds(Math.min(2 * lease.toSeconds(), 43200));
    }

    // --- Queues ---------------------------------------------------------------------
    // One DLQ for the input queue's redrive and for RESEQ_DLQ_URL (reseqReason tells them
    // apart), FIFO as the DLQ of a FIFO queue must be; retained: its messages exist nowhere else.
    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetterQueue', {
      queueName: prefix && `${prefix}-dlq.fifo`,
      fifo: true,
      contentBasedDeduplication: false,
      deduplicationScope: sqs.DeduplicationScope.MESSAGE_GROUP,
      fifoThroughputLimit: sqs.FifoThroughputLimit.PER_MESSAGE_GROUP_ID,
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    // Content-based deduplication stays off: context and position usually travel as
    // attributes, which a body hash does not see. Producers set MessageDeduplicationId.
    this.inputQueue = new sqs.Queue(this, 'InputQueue', {
      queueName: prefix && `${prefix}-input.fifo`,
      fifo: true,
      contentBasedDeduplication: false,
      visibilityTimeout: visibility,
      // 14 days: held-back messages wait here, and SQS drops expired ones without a DLQ.
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount },
    });
    // Released messages: MessageGroupId = context, so high-throughput FIFO (per group) fits.
    this.outputQueue = new sqs.Queue(this, 'OutputQueue', {
      queueName: prefix && `${prefix}-output.fifo`,
      fifo: true,
      contentBasedDeduplication: false,
      deduplicationScope: sqs.DeduplicationScope.MESSAGE_GROUP,
      fifoThroughputLimit: sqs.FifoThroughputLimit.PER_MESSAGE_GROUP_ID,
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
    });

    // --- The staging table (exactly reseq's layout; retained) --------------------------
    this.table = new dynamodb.Table(this, 'Table', {
      tableName: prefix,
      partitionKey: TABLE_LAYOUT.partitionKey,
      sortKey: TABLE_LAYOUT.sortKey,
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      timeToLiveAttribute: TABLE_LAYOUT.timeToLiveAttribute,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      removalPolicy: RemovalPolicy.RETAIN,
    });
    for (const index of [TABLE_LAYOUT.dueIndex, TABLE_LAYOUT.attentionIndex]) {
      this.table.addGlobalSecondaryIndex({ ...index, projectionType: dynamodb.ProjectionType.KEYS_ONLY });
    }

    this.logGroup = new logs.LogGroup(this, 'LogGroup', {
      logGroupName: prefix && (flavour === 'lambda' ? `/aws/lambda/${prefix}` : `/ecs/${prefix}`),
      retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });

    // --- Environment: what template.yaml sets, plus the metrics' service and sink ------
    const environment: Record<string, string> = {
      RESEQ_TABLE: this.table.tableName,
      RESEQ_OUTPUT: `sqs:${this.outputQueue.queueUrl}`,
      RESEQ_DLQ_URL: this.deadLetterQueue.queueUrl,
      RESEQ_INVALID: props.invalidMessages ?? 'dlq',
      RESEQ_LEASE_DURATION: `${lease.toSeconds()}s`,
      RESEQ_SERVICE: this.serviceName,
      // Lambda extracts EMF from the function's stdout; on ECS, stderr goes through FireLens.
      RESEQ_METRICS: flavour === 'lambda' ? 'stdout' : 'stderr',
      ...(props.gapTimeout ? { RESEQ_GAP_TIMEOUT: props.gapTimeout } : {}),
      ...settings,
    };

    // --- Least privilege, written out ------------------------------------------------
    this.role = new iam.Role(this, flavour === 'lambda' ? 'FunctionRole' : 'TaskRole', {
      assumedBy: new iam.ServicePrincipal(flavour === 'lambda' ? 'lambda.amazonaws.com' : 'ecs-tasks.amazonaws.com'),
      description: `reseq ${flavour === 'lambda' ? 'function' : 'worker'} (${this.serviceName})`,
    });
    this.grantReseq(this.role, flavour);

    if (flavour === 'lambda') {
      this.function = this.lambdaFlavour(props.lambda!, props, environment);
    } else {
      const ecsOut = this.ecsFlavour(props.ecs!, environment);
      this.service = ecsOut.service;
      this.taskDefinition = ecsOut.taskDefinition;
      this.container = ecsOut.container;
    }

    this.createAlarms(props);
    if (props.dashboard ?? true) this.dashboard = this.createDashboard();
  }

  /** The table, its indexes and the queues, for the function's or the task's role. */
  private grantReseq(role: iam.Role, flavour: 'lambda' | 'ecs'): void {
    const input = ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes'];
    // The worker receives itself and extends the visibility of a batch in flight; on Lambda
    // the event source mapping receives (with the function's role).
    if (flavour === 'ecs') input.splice(2, 0, 'sqs:ChangeMessageVisibility');
    role.addToPolicy(new iam.PolicyStatement({ sid: 'ReceiveInput', actions: input, resources: [this.inputQueue.queueArn] }));
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'SendOutputAndDeadLetters',
        actions: ['sqs:SendMessage', 'sqs:GetQueueAttributes'],
        resources: [this.outputQueue.queueArn, this.deadLetterQueue.queueArn],
      }),
    );
    // TransactWriteItems has no IAM action: its Puts and Deletes are authorized as
    // PutItem/DeleteItem. No Scan: the sweep and the operator commands query the indexes.
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'StagingTable',
        actions: [
          'dynamodb:DescribeTable',
          'dynamodb:GetItem',
          'dynamodb:PutItem',
          'dynamodb:UpdateItem',
          'dynamodb:DeleteItem',
          'dynamodb:Query',
          'dynamodb:BatchWriteItem',
        ],
        resources: [this.table.tableArn],
      }),
    );
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'Indexes',
        actions: ['dynamodb:Query'],
        resources: [TABLE_LAYOUT.dueIndex.indexName, TABLE_LAYOUT.attentionIndex.indexName].map(
          (index) => `${this.table.tableArn}/index/${index}`,
        ),
      }),
    );
    // The function's logs (Lambda), or FireLens's cloudwatch_logs output (ECS, with the task role).
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'Logs',
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [this.logGroup.logGroupArn],
      }),
    );
  }

  private lambdaFlavour(o: ResequencerLambdaOptions, props: ResequencerProps, environment: Record<string, string>): lambda.Function {
    if (o.maxConcurrency !== undefined && (o.maxConcurrency < 2 || o.maxConcurrency > 1000)) {
      throw new Error(`Resequencer: lambda.maxConcurrency must be 2 to 1000, not ${o.maxConcurrency}`);
    }
    const fn = new lambda.Function(this, 'Function', {
      functionName: props.namePrefix,
      description: 'reseq resequencer (crates/reseq-lambda)',
      code: o.code,
      handler: 'bootstrap',
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture: o.architecture ?? lambda.Architecture.ARM_64,
      memorySize: o.memorySize ?? 256,
      timeout: o.timeout ?? Duration.seconds(60),
      role: this.role,
      environment,
      tracing: lambda.Tracing.ACTIVE,
      logGroup: this.logGroup,
      loggingFormat: lambda.LoggingFormat.JSON,
      applicationLogLevelV2: lambda.ApplicationLogLevel.INFO,
      systemLogLevelV2: lambda.SystemLogLevel.WARN,
    });
    // Only the schedule invokes asynchronously: a failed sweep is not retried, the next
    // one comes a minute later.
    fn.configureAsyncInvoke({ retryAttempts: 0, maxEventAge: Duration.seconds(60) });
    // The SQS event source, without SqsEventSource's grant (it would add GetQueueUrl and
    // ChangeMessageVisibility): the role above has what the mapping needs.
    new lambda.EventSourceMapping(this, 'InputEventSource', {
      target: fn,
      eventSourceArn: this.inputQueue.queueArn,
      batchSize: 10, // at most 10 on a FIFO queue, and no batching window
      reportBatchItemFailures: true, // reseq answers with partial batch responses
      maxConcurrency: o.maxConcurrency,
    });
    // The timer sweep: gap timeouts, retries, retention, the leases of invocations that died.
    new events.Rule(this, 'Sweep', {
      description: 'reseq timer sweep',
      schedule: events.Schedule.rate(Duration.minutes(1)),
      targets: [new targets.LambdaFunction(fn, { retryAttempts: 0 })],
    });
    return fn;
  }

  private ecsFlavour(
    o: ResequencerEcsOptions,
    environment: Record<string, string>,
  ): { service: ecs.FargateService; taskDefinition: ecs.FargateTaskDefinition; container: ecs.ContainerDefinition } {
    const minTasks = o.minTasks ?? 1;
    const maxTasks = o.maxTasks ?? 10;
    if (!Number.isInteger(minTasks) || minTasks < 1) {
      throw new Error('Resequencer: ecs.minTasks must be at least 1: the workers also run the timer sweep');
    }
    if (!Number.isInteger(maxTasks) || maxTasks < minTasks) throw new Error('Resequencer: ecs.maxTasks must be at least ecs.minTasks');
    const user = o.user ?? '65532:65532';
    if (/^(0|root)(:|$)/.test(user)) throw new Error('Resequencer: ecs.user must not be root');

    let cluster = o.cluster;
    let ownVpc = false;
    if (!cluster) {
      let vpc = o.vpc;
      if (!vpc) {
        ownVpc = true;
        vpc = new ec2.Vpc(this, 'Vpc', {
          maxAzs: 2,
          natGateways: 0,
          restrictDefaultSecurityGroup: false,
          subnetConfiguration: [{ name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 }],
        });
      }
      // Container Insights: the scaling policy divides the backlog by its RunningTaskCount.
      cluster = new ecs.Cluster(this, 'Cluster', { vpc, containerInsightsV2: ecs.ContainerInsights.ENABLED });
    }

    const taskDefinition = new ecs.FargateTaskDefinition(this, 'TaskDefinition', {
      cpu: o.cpu ?? 256,
      memoryLimitMiB: o.memoryLimitMiB ?? 512,
      runtimePlatform: {
        cpuArchitecture: o.cpuArchitecture ?? ecs.CpuArchitecture.ARM64,
        operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
      },
      taskRole: this.role,
    });
    // FireLens: CloudWatch extracts EMF only from events sent with the EMF header, which
    // the awslogs driver does not send; Fluent Bit's cloudwatch_logs output with
    // log_format json/emf does. The router's own logs go to the same group by awslogs.
    taskDefinition.addFirelensLogRouter('LogRouter', {
      image: o.logRouterImage ?? ecs.ContainerImage.fromRegistry(DEFAULT_FLUENT_BIT_IMAGE),
      firelensConfig: { type: ecs.FirelensLogRouterType.FLUENTBIT },
      logging: ecs.LogDrivers.awsLogs({ logGroup: this.logGroup, streamPrefix: 'firelens' }),
      memoryReservationMiB: 50,
      essential: true,
    });
    const container = taskDefinition.addContainer('Worker', {
      image: o.image,
      // The image's ENTRYPOINT is ["reseq", "worker"]: configured by RESEQ_* alone.
      // JSON logs (one object per decision) for CloudWatch Logs Insights, unless `settings` says text.
      environment: { RESEQ_QUEUE_URL: this.inputQueue.queueUrl, RESEQ_LOG_FORMAT: 'json', ...environment, AWS_REGION: Aws.REGION },
      user,
      readonlyRootFilesystem: true,
      stopTimeout: o.stopTimeout ?? Duration.seconds(120),
      essential: true,
      logging: ecs.LogDrivers.firelens({
        options: {
          Name: 'cloudwatch_logs',
          region: Aws.REGION,
          log_group_name: this.logGroup.logGroupName,
          log_stream_prefix: 'worker-',
          log_key: 'log',
          log_format: 'json/emf',
          auto_create_group: 'false',
          retry_limit: '2',
        },
      }),
    });

    const service = new ecs.FargateService(this, 'Service', {
      cluster,
      taskDefinition,
      desiredCount: minTasks,
      assignPublicIp: o.assignPublicIp ?? ownVpc,
      vpcSubnets: o.vpcSubnets ?? (ownVpc ? { subnetType: ec2.SubnetType.PUBLIC } : undefined),
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { enable: true, rollback: true },
      platformVersion: ecs.FargatePlatformVersion.LATEST,
    });

    // Backlog per task: target tracking on visible input messages / running tasks (metric
    // math, which the L2 target tracking policy does not take, hence the L1 policy).
    const scalable = new appscaling.ScalableTarget(this, 'ScalableTarget', {
      serviceNamespace: appscaling.ServiceNamespace.ECS,
      resourceId: `service/${cluster.clusterName}/${service.serviceName}`,
      scalableDimension: 'ecs:service:DesiredCount',
      minCapacity: minTasks,
      maxCapacity: maxTasks,
      // ECS's service-linked role for Application Auto Scaling (what service.autoScaleTaskCount uses).
      role: iam.Role.fromRoleArn(
        this,
        'ScalingRole',
        `arn:${Aws.PARTITION}:iam::${Aws.ACCOUNT_ID}:role/aws-service-role/ecs.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_ECSService`,
      ),
    });
    new appscaling.CfnScalingPolicy(this, 'BacklogPerTask', {
      policyName: `${this.serviceName}-backlog-per-task`,
      policyType: 'TargetTrackingScaling',
      scalingTargetId: scalable.scalableTargetId,
      targetTrackingScalingPolicyConfiguration: {
        targetValue: o.messagesPerTask ?? 1000,
        scaleOutCooldown: 60,
        scaleInCooldown: 300,
        customizedMetricSpecification: {
          metrics: [
            {
              id: 'visible',
              returnData: false,
              metricStat: {
                stat: 'Sum',
                metric: {
                  namespace: 'AWS/SQS',
                  metricName: 'ApproximateNumberOfMessagesVisible',
                  dimensions: [{ name: 'QueueName', value: this.inputQueue.queueName }],
                },
              },
            },
            {
              id: 'tasks',
              returnData: false,
              metricStat: {
                stat: 'Average',
                metric: {
                  namespace: 'ECS/ContainerInsights',
                  metricName: 'RunningTaskCount',
                  dimensions: [
                    { name: 'ClusterName', value: cluster.clusterName },
                    { name: 'ServiceName', value: service.serviceName },
                  ],
                },
              },
            },
            { id: 'backlogPerTask', label: 'Visible input messages per running task', expression: 'visible / tasks', returnData: true },
          ],
        },
      },
    });
    return { service, taskDefinition, container };
  }

  /** A reseq metric (EMF, namespace Reseq, dimension Service). */
  metric(name: string, statistic: string, period: Duration = Duration.minutes(1)): cloudwatch.Metric {
    return new cloudwatch.Metric({
      namespace: METRICS.namespace,
      metricName: name,
      dimensionsMap: { [METRICS.dimension]: this.serviceName },
      statistic,
      period,
    });
  }

  private createAlarms(props: ResequencerProps): void {
    const oldestWaiting = props.oldestWaitingAgeThreshold ?? Duration.minutes(15);
    const inputAge = props.inputQueueAgeThreshold ?? Duration.minutes(15);
    // Names and settings as template.yaml's alarms (docs/RUNBOOK.md has a section per name).
    const alarm = (id: string, slug: string, description: string, o: Omit<cloudwatch.AlarmProps, 'alarmDescription' | 'alarmName'>) => {
      const a = new cloudwatch.Alarm(this, id, {
        alarmName: props.namePrefix && `${props.namePrefix}-${slug}`,
        alarmDescription: `reseq (${this.serviceName}): ${description} docs/RUNBOOK.md, section "${slug}".`,
        ...o,
      });
      if (props.alarmTopic) {
        a.addAlarmAction(new cwactions.SnsAction(props.alarmTopic));
        a.addOkAction(new cwactions.SnsAction(props.alarmTopic));
      }
      this.alarms.push(a);
      return a;
    };
    const GT = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD;
    const notBreaching = cloudwatch.TreatMissingData.NOT_BREACHING;
    alarm('DeadLetterQueueAlarm', 'dlq-not-empty', 'the dead-letter queue holds messages (reseqReason says why; none means redriven by SQS).', {
      metric: this.deadLetterQueue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: Duration.minutes(1) }),
      threshold: 0,
      comparisonOperator: GT,
      evaluationPeriods: 1,
      treatMissingData: notBreaching,
    });
    alarm('OldestWaitingAgeAlarm', 'oldest-waiting-age', `a staged message has waited more than ${oldestWaiting.toSeconds()} s for a missing position (or behind a blocked one).`, {
      metric: this.metric(METRICS.oldestWaitingAge, 'Maximum'),
      threshold: oldestWaiting.toSeconds(),
      comparisonOperator: GT,
      evaluationPeriods: 2,
      datapointsToAlarm: 2,
      // Its absence is the sweep-not-running alarm.
      treatMissingData: notBreaching,
    });
    alarm('BlockedContextsAlarm', 'blocked-contexts', 'at least one context is stopped at a poison message; nothing after it is released until an operator retries or skips.', {
      metric: this.metric(METRICS.blockedContexts, 'Maximum'),
      threshold: 0,
      comparisonOperator: GT,
      evaluationPeriods: 1,
      treatMissingData: notBreaching,
    });
    alarm('SweepErrorsAlarm', 'sweep-errors', 'the timer sweep failed (gap timeouts, retries, retention and lease takeovers may be late).', {
      metric: this.metric(METRICS.sweepErrors, 'Sum', Duration.minutes(5)),
      threshold: 0,
      comparisonOperator: GT,
      evaluationPeriods: 1,
      treatMissingData: notBreaching,
    });
    alarm('SweepNotRunningAlarm', 'sweep-not-running', 'no timer sweep ran for 5 minutes.', {
      metric: this.metric(METRICS.sweeps, 'Sum', Duration.minutes(5)),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
      evaluationPeriods: 1,
      // No data is the failure this alarm is for.
      treatMissingData: cloudwatch.TreatMissingData.BREACHING,
    });
    alarm('InputQueueAgeAlarm', 'input-queue-age', `the oldest message on the input queue is older than ${inputAge.toSeconds()} s.`, {
      metric: this.inputQueue.metricApproximateAgeOfOldestMessage({ statistic: 'Maximum', period: Duration.minutes(1) }),
      threshold: inputAge.toSeconds(),
      comparisonOperator: GT,
      evaluationPeriods: 5,
      datapointsToAlarm: 3,
      treatMissingData: notBreaching,
    });
    if (this.function) {
      alarm('FunctionErrorsAlarm', 'function-errors', 'invocations failed (a crash, a timeout, a failed cold start).', {
        metric: this.function.metricErrors({ statistic: 'Sum', period: Duration.minutes(5) }),
        threshold: 0,
        comparisonOperator: GT,
        evaluationPeriods: 1,
        treatMissingData: notBreaching,
      });
      alarm('FunctionThrottlesAlarm', 'function-throttles', 'invocations were throttled (account or reserved concurrency).', {
        metric: this.function.metricThrottles({ statistic: 'Sum', period: Duration.minutes(5) }),
        threshold: 0,
        comparisonOperator: GT,
        evaluationPeriods: 1,
        treatMissingData: notBreaching,
      });
    }
  }

  private createDashboard(): cloudwatch.Dashboard {
    const name = Stack.of(this).stackName;
    const dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: Token.isUnresolved(name) ? undefined : `${name}-${this.node.id}`.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 255),
    });
    const m = (n: string, stat = 'Sum') => this.metric(n, stat);
    dashboard.addWidgets(
      new cloudwatch.AlarmStatusWidget({ title: 'Alarms', alarms: this.alarms, width: 24, height: 3 }),
    );
    const search = (metricName: string, dimension: string) =>
      new cloudwatch.MathExpression({
        expression: `SEARCH('{${METRICS.namespace},${METRICS.dimension},${dimension}} MetricName="${metricName}" ${METRICS.dimension}="${this.serviceName}"', 'Sum', 60)`,
        label: '',
        period: Duration.minutes(1),
      });
    dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: 'Messages',
        left: ['Received', 'Released', 'Staged', 'Duplicates'].map((n) => m(n)),
        width: 8,
      }),
      new cloudwatch.GraphWidget({
        title: 'Release latency, arrival to release (ms)',
        left: ['p50', 'p99', 'Maximum'].map((stat) => this.metric('ReleaseLatency', stat).with({ label: stat })),
        width: 8,
      }),
      new cloudwatch.GraphWidget({
        title: 'Dead letters and invalid messages, all and by reason',
        left: [m('DeadLettered'), m('Invalid'), search('DeadLettered', 'Reason'), search('Invalid', 'Reason')],
        width: 8,
      }),
    );
    dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: 'Ordering decisions',
        left: ['GapsSkipped', 'PositionsSkipped', 'Conflicts', 'Late', 'Expired'].map((n) => m(n)),
        width: 8,
      }),
      new cloudwatch.GraphWidget({
        title: 'Held back, leases, handler errors, blocked',
        left: ['HeldBusy', 'HeldCapacity', 'HeldFailed', 'LeaseConflicts', 'LeasesTakenOver', 'HandlerErrors', 'Poison', 'Blocked'].map((n) => m(n)),
        width: 8,
      }),
      new cloudwatch.GraphWidget({
        title: 'Batch duration (ms) and DynamoDB units',
        left: ['p50', 'p99'].map((stat) => this.metric('BatchDuration', stat).with({ label: `batch ${stat}` })),
        right: [m('DynamoDBWriteUnits'), m('DynamoDBReadUnits')],
        width: 8,
      }),
    );
    dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: 'Oldest waiting message (s) and blocked contexts',
        left: [m(METRICS.oldestWaitingAge, 'Maximum')],
        right: [m(METRICS.blockedContexts, 'Maximum')],
        width: 12,
      }),
      new cloudwatch.GraphWidget({
        title: 'Timer sweeps and their errors',
        left: [m(METRICS.sweeps), m('ContextsSwept')],
        right: [m(METRICS.sweepErrors)],
        width: 12,
      }),
    );
    dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: 'Input queue',
        left: [
          this.inputQueue.metricNumberOfMessagesSent({ statistic: 'Sum' }),
          this.inputQueue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum' }),
        ],
        right: [this.inputQueue.metricApproximateAgeOfOldestMessage({ statistic: 'Maximum' })],
        width: 8,
      }),
      new cloudwatch.GraphWidget({
        title: 'Output queue (released)',
        left: [this.outputQueue.metricNumberOfMessagesSent({ statistic: 'Sum' })],
        width: 8,
      }),
      new cloudwatch.GraphWidget({
        title: 'Dead-letter queue',
        left: [
          this.deadLetterQueue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum' }),
          this.deadLetterQueue.metricNumberOfMessagesSent({ statistic: 'Sum' }),
        ],
        width: 8,
      }),
    );
    const tableMetric = (metricName: string) =>
      new cloudwatch.Metric({
        namespace: 'AWS/DynamoDB',
        metricName,
        dimensionsMap: { TableName: this.table.tableName },
        statistic: 'Sum',
        period: Duration.minutes(1),
      });
    const compute: cloudwatch.IWidget[] = [];
    if (this.function) {
      compute.push(
        new cloudwatch.GraphWidget({
          title: 'Function',
          left: [this.function.metricInvocations(), this.function.metricErrors(), this.function.metricThrottles()],
          right: [this.function.metricDuration({ statistic: 'p99' })],
          width: 12,
        }),
      );
    }
    if (this.service) {
      compute.push(
        new cloudwatch.GraphWidget({
          title: 'Workers',
          left: [this.service.metricCpuUtilization(), this.service.metricMemoryUtilization()],
          right: [
            new cloudwatch.Metric({
              namespace: 'ECS/ContainerInsights',
              metricName: 'RunningTaskCount',
              dimensionsMap: { ClusterName: this.service.cluster.clusterName, ServiceName: this.service.serviceName },
              statistic: 'Average',
            }),
          ],
          width: 12,
        }),
      );
    }
    dashboard.addWidgets(
      ...compute,
      new cloudwatch.GraphWidget({
        title: 'Staging table: capacity consumed and throttles',
        left: [tableMetric('ConsumedWriteCapacityUnits'), tableMetric('ConsumedReadCapacityUnits')],
        right: [tableMetric('ThrottledRequests')],
        width: 12,
      }),
    );
    // The decision logs (one JSON object per decision: at the top level from the worker's
    // --log-format json, under `fields` from the Lambda's tracing JSON), as template.yaml's.
    dashboard.addWidgets(
      new cloudwatch.LogQueryWidget({
        title: 'Decisions (logs): gap skipped, conflict, late, dead-lettered, blocked, retried, lease taken over, expired',
        logGroupNames: [this.logGroup.logGroupName],
        view: cloudwatch.LogQueryVisualizationType.TABLE,
        queryLines: [
          'fields coalesce(decision, `fields.decision`) as decision_, coalesce(reason, `fields.reason`) as reason_',
          'filter ispresent(decision_)',
          'stats count(*) as decisions by decision_, reason_',
          'sort decisions desc',
        ],
        width: 24,
      }),
    );
    return dashboard;
  }
}
