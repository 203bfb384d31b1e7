import { Aws, CfnOutput, Stack, StackProps } from 'aws-cdk-lib';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';
import { Resequencer, ResequencerProps } from './resequencer';

/** What both example stacks take besides the flavour's own props. */
export interface ReseqStackProps extends StackProps {
  /** Passed to the Resequencer (names, settings, thresholds...). */
  readonly reseq?: Omit<ResequencerProps, 'flavour' | 'lambda' | 'ecs' | 'alarmTopic'>;
  /** Subscribe this address to the alarm topic. */
  readonly alarmEmail?: string;
}

export interface ReseqLambdaStackProps extends ReseqStackProps {
  /** The folder holding the built `bootstrap` (target/lambda/bootstrap). */
  readonly bootstrapDir: string;
  /** Must match the build (`--arm64`). @default arm64 */
  readonly architecture?: lambda.Architecture;
}

export interface ReseqEcsStackProps extends ReseqStackProps {
  /**
   * The worker image, or its URI: an ECR URI (`<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>`)
   * gets the execution role's pull permission on that repository; another URI is pulled as it is.
   */
  readonly image: ecs.ContainerImage | string;
  readonly cpuArchitecture?: ecs.CpuArchitecture;
}

function alarmTopic(scope: Construct, email?: string): sns.Topic {
  const topic = new sns.Topic(scope, 'Alarms', { displayName: 'reseq alarms' });
  if (email) topic.addSubscription(new subscriptions.EmailSubscription(email));
  return topic;
}

function outputs(scope: Construct, r: Resequencer): void {
  new CfnOutput(scope, 'InputQueueUrl', { value: r.inputQueue.queueUrl, description: 'Send messages here (FIFO; attributes contextId and sequence).' });
  new CfnOutput(scope, 'OutputQueueUrl', { value: r.outputQueue.queueUrl, description: 'Released messages, each context in order.' });
  new CfnOutput(scope, 'DeadLetterQueueUrl', { value: r.deadLetterQueue.queueUrl, description: 'Dead letters (reseqReason/reseqDetail) and redriven messages.' });
  new CfnOutput(scope, 'TableName', { value: r.table.tableName, description: 'The staging table (--table of reseq commands).' });
}

/** reseq on Lambda: the same resources as template.yaml, plus alarms and a dashboard. */
export class ReseqLambdaStack extends Stack {
  readonly reseq: Resequencer;
  constructor(scope: Construct, id: string, props: ReseqLambdaStackProps) {
    super(scope, id, props);
    this.reseq = new Resequencer(this, 'Reseq', {
      namePrefix: 'reseq',
      ...props.reseq,
      flavour: 'lambda',
      lambda: { code: lambda.Code.fromAsset(props.bootstrapDir), architecture: props.architecture },
      alarmTopic: alarmTopic(this, props.alarmEmail),
    });
    outputs(this, this.reseq);
    new CfnOutput(this, 'FunctionName', { value: this.reseq.function!.functionName });
  }
}

/** reseq worker on ECS Fargate. */
export class ReseqEcsStack extends Stack {
  readonly reseq: Resequencer;
  constructor(scope: Construct, id: string, props: ReseqEcsStackProps) {
    super(scope, id, props);
    this.reseq = new Resequencer(this, 'Reseq', {
      namePrefix: 'reseq-ecs',
      ...props.reseq,
      flavour: 'ecs',
      ecs: { image: typeof props.image === 'string' ? imageFromUri(this, props.image) : props.image, cpuArchitecture: props.cpuArchitecture },
      alarmTopic: alarmTopic(this, props.alarmEmail),
    });
    outputs(this, this.reseq);
    new CfnOutput(this, 'ServiceName', { value: this.reseq.service!.serviceName });
  }
}

/** An image by URI; for an ECR one, with the pull permission on its repository. */
export function imageFromUri(scope: Construct, uri: string): ecs.ContainerImage {
  const m = uri.match(/^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\/([^:@]+)(?::([^@]+))?$/);
  if (!m) return ecs.ContainerImage.fromRegistry(uri);
  const [, account, region, name, tag] = m;
  const repository = ecr.Repository.fromRepositoryAttributes(scope, 'ImageRepository', {
    repositoryName: name,
    repositoryArn: `arn:${Aws.PARTITION}:ecr:${region}:${account}:repository/${name}`,
  });
  return ecs.ContainerImage.fromEcrRepository(repository, tag ?? 'latest');
}
