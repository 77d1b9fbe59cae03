/** Evaluation metrics. Ground-truth recovery: MMCS and MCC (docs/references.md §4.1), exact linear assignment. */
export { mmcs, mcc } from './recovery.js';
export type { MmcsOptions, MmcsResult, MccOptions, MccResult, Similarity } from './recovery.js';
export { linearAssignment, linearAssignmentAsync } from './assignment.js';
export type { AssignmentOptions, AssignmentResult } from './assignment.js';
export { spectrum, powerLawFit, symmetricEigenvalues } from './spectrum.js';
export type { SpectrumResult } from './spectrum.js';
export { COOCCURRENCE_MAX_LATENTS, CooccurrenceAccumulator, cooccurrence, phiCoefficient } from './cooccurrence.js';
export type { CooccurrenceCodes, CooccurrenceInput, CooccurrenceOptions, CooccurrencePair, CooccurrenceResult, CooccurrenceResultOptions } from './cooccurrence.js';
export { sparseProbe, sparseProbeAsync, fitLogistic } from './probe.js';
export type { SparseProbeOptions, SparseProbeResult, LogisticFit } from './probe.js';
export { psEval } from './pseval.js';
export type { PsEvalPair, PsEvalResult } from './pseval.js';
export { evaluate, maxCosine } from './evaluate.js';
export type { EvaluateOptions, EvaluateResult, EvaluateCompat, MaxCosineOptions } from './evaluate.js';
export { descriptionLength } from './mdl.js';
export type { DescriptionLengthOptions, DescriptionLengthResult } from './mdl.js';
