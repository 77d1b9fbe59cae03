// The whole SAE suite again with tiny encoder tiles, so every case runs over several row blocks
// and several latent blocks (TopK and AuxK heaps carried across latent blocks). The tile sizes
// are read when the addon first encodes, in this process.
process.env.SAEKIT_TILE_BYTES = '1024';
process.env.SAEKIT_TILE_ROWS = '8';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';

describe('encoder tiling', () => {
  it('uses the tiny tiles of this file', () => {
    expect(backend.info().encoderTile).toEqual({ bytes: 1024, rows: 8 });
  });
});

await import('./sae.test.js');
