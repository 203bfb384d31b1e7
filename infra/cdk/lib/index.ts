export * from './resequencer';
export * from './stacks';
