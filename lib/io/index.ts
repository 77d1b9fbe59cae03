/**
 * File formats: safetensors, NumPy .npy and .npz, and the atomic writer they all use.
 * Tensors are plain `{ dtype, shape, data }` objects in C (row-major) order; float16 and
 * bfloat16 values are raw bits in a Uint16Array (Node 20 has no Float16Array). Every malformed
 * file fails with a SaekitError whose code is ERR_SAEKIT_FORMAT and whose message names the file
 * and the reason.
 */
export { type IoDType, type IoArray, type IoTensor, IO_DTYPES } from './common.js';
export {
  type SafetensorsEntry,
  type SafetensorsReader,
  readSafetensors,
  writeSafetensors,
} from './safetensors.js';
export { type NpyHeader, readNpyHeader, parseNpy, readNpy, encodeNpy, writeNpy } from './npy.js';
export { readNpz, writeNpz } from './npz.js';
export { writeFileAtomic } from './source.js';
export {
  type SaeFileFormat,
  type SaeFileConfig,
  type SaeFileWeights,
  type SaeFiles,
  type WriteSaeConfig,
  type WriteSaeOptions,
  readSaeFiles,
  writeSaeFiles,
  foldDecoderNorms,
} from './sae-files.js';
