#!/usr/bin/env node
// The example app: one stack per flavour, deployable as it is.
//
//   cdk deploy ReseqLambda     # needs target/lambda/bootstrap/bootstrap (scripts/cargo-lambda.sh run build --profile lambda --arm64 -p reseq-lambda)
//   cdk deploy ReseqEcs        # builds the repository's Dockerfile (needs Docker), or -c image=<uri> to use a pushed image
//
// Context (-c key=value): bootstrapDir (default <repo>/target/lambda/bootstrap), image (an
// image URI; default: the repository's Dockerfile as an asset), arch (arm64 | x86_64,
// default arm64, for both flavours), alarmEmail.
import * as fs from 'fs';
import * as path from 'path';
import { App, Annotations } from 'aws-cdk-lib';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { ReseqEcsStack, ReseqLambdaStack } from '../lib';

const app = new App();
// dist/bin/app.js -> the repository root.
const repoRoot = path.resolve(__dirname, '..', '..', '..', '..');
const ctx = (key: string): string | undefined => app.node.tryGetContext(key) ?? undefined;

const arch = ctx('arch') ?? 'arm64';
if (arch !== 'arm64' && arch !== 'x86_64') throw new Error(`-c arch=${arch}: arm64 or x86_64`);
const alarmEmail = ctx('alarmEmail');
const env = { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION };

const bootstrapDir = path.resolve(ctx('bootstrapDir') ?? path.join(repoRoot, 'target', 'lambda', 'bootstrap'));
const lambdaStack = new ReseqLambdaStack(app, 'ReseqLambda', {
  env,
  description: 'reseq as an AWS Lambda function (infra/cdk, Resequencer flavour lambda)',
  bootstrapDir: fs.existsSync(path.join(bootstrapDir, 'bootstrap')) ? bootstrapDir : emptyDir(),
  architecture: arch === 'arm64' ? lambda.Architecture.ARM_64 : lambda.Architecture.X86_64,
  alarmEmail,
});
if (!fs.existsSync(path.join(bootstrapDir, 'bootstrap'))) {
  // Synthesizing the ECS stack alone must not need the Lambda build: only this stack fails.
  Annotations.of(lambdaStack).addError(
    `no ${path.join(bootstrapDir, 'bootstrap')}: build it (scripts/cargo-lambda.sh run build --profile lambda ` +
      `${arch === 'arm64' ? '--arm64 ' : ''}-p reseq-lambda) or pass -c bootstrapDir=<folder holding bootstrap>`,
  );
}

const imageUri = ctx('image');
new ReseqEcsStack(app, 'ReseqEcs', {
  env,
  description: 'reseq worker on ECS Fargate (infra/cdk, Resequencer flavour ecs)',
  image: imageUri ?? ecs.ContainerImage.fromAsset(repoRoot, { platform: arch === 'arm64' ? Platform.LINUX_ARM64 : Platform.LINUX_AMD64 }),
  cpuArchitecture: arch === 'arm64' ? ecs.CpuArchitecture.ARM64 : ecs.CpuArchitecture.X86_64,
  alarmEmail,
});

/** An empty folder, so that the Lambda stack can be constructed (and fail alone) without a build. */
function emptyDir(): string {
  const dir = path.join(repoRoot, 'infra', 'cdk', 'cdk.out', '.no-bootstrap');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}
