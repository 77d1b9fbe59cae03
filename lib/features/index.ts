/**
 * Feature comparison across SAEs, layers and models: matching features (argmax, mutual nearest
 * neighbours / best buddies, exact one-to-one assignment) and data-free SAE Match across layers.
 */
export { match, saeMatch, composeMatches, foldWeights } from './match.js';
export type { MatchMethod, MatchOptions, MatchPair, MatchResult, SaeMatchOptions, SaeMatchResult } from './match.js';
