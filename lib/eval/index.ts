/** Evaluation metrics. Ground-truth recovery: MMCS and MCC (methods.md §4.1), exact linear assignment. */
export { mmcs, mcc } from './recovery.js';
export type { MmcsOptions, MmcsResult, MccOptions, MccResult, Similarity } from './recovery.js';
export { linearAssignment } from './assignment.js';
export type { AssignmentOptions, AssignmentResult } from './assignment.js';
