/**
 * Feature comparison across SAEs, layers and models: matching features (argmax, mutual nearest
 * neighbours / best buddies, exact one-to-one assignment), data-free SAE Match across layers, and
 * the similarity of matched feature spaces (SVCCA, PWCCA, RSA, linear CKA) against shuffled baselines.
 */
export { match, saeMatch, composeMatches, foldWeights } from './match.js';
export type { MatchMethod, MatchOptions, MatchPair, MatchResult, SaeMatchOptions, SaeMatchResult } from './match.js';
export { svcca, pwcca, rsa, cka, permutationTest } from './similarity.js';
export type { Matrix, SvccaOptions, SvccaResult, PwccaOptions, PwccaResult, RsaOptions, CkaOptions, PermutationOptions, PermutationResult } from './similarity.js';
export { correlation } from './correlation.js';
export type { CorrelationCommon, CorrelationOptions, CorrelationSide, CorrelationResult, CorrelationMatrix, CorrelationTopMatches, CorrelationTop } from './correlation.js';
