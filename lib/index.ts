/**
 * saekit: train, evaluate and compare sparse autoencoders from Node.js.
 * This is the package's only entry point.
 */
export * as backend from './backend/public.js';
export type { BackendInfo, DeviceOption, ResolvedDevice } from './backend/index.js';
export { SaekitError, type SaekitErrorCode } from './errors.js';
export {
  Tensor,
  tensor,
  zeros,
  randn,
  rand,
  DTYPES,
  type DType,
  type Device,
  type ArrayFor,
  type TensorData,
  type NestedNumbers,
  type TensorOptions,
  type ZerosOptions,
  type RandomOptions,
} from './tensor/index.js';
export * as ops from './tensor/ops.js';
export type { MatmulOptions } from './tensor/ops.js';
export {
  SparseAutoencoder,
  AdamOptimizer,
  PrefetchedBatch,
  type SparseCodes,
  type SaeWeights,
  type Architecture,
  type FromWeightsCommonOptions,
  type FromWeightsOptions,
  type Rows,
  type CreateOptions,
  type PlacementOptions,
  type AuxKOptions,
  type AuxKVariant,
  type EncodeOptions,
  type GradientOptions,
  type Gradients,
  type AdamOptions,
  type PrefetchOptions,
  type StepOptions,
  type StepStats,
  type AdamState,
} from './sae/index.js';
export { EncodeBatcher, type BatcherEncodeOptions, type EncodeBatcherOptions } from './sae/batcher.js';
export * as io from './io/index.js';
export type { IoDType, IoArray, IoTensor, SafetensorsEntry, SafetensorsReader, NpyHeader } from './io/index.js';
export { openActivations, fromArray, fromAsyncIterable, synthetic } from './data/index.js';
export type {
  ActivationSource,
  OwnedActivationSource,
  Batch,
  BatchOptions,
  OpenOptions,
  SuperpositionOptions,
  SuperpositionData,
  SyntheticCodes,
  Firing,
  Magnitude,
  Correlation,
  HierarchyNode,
  SharkeyOptions,
  SharkeyData,
  MfrOptions,
  MfrData,
  CompatData,
} from './data/index.js';
export * as metrics from './eval/index.js';
export { Trainer, learningRate, geometricMedian } from './train/index.js';
export type { TrainerOptions, ResolvedTrainerOptions, FitOptions, FitResult, StepLog } from './train/index.js';
export * as features from './features/index.js';
