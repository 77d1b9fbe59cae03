/**
 * The subset of the zip format (PKWARE APPNOTE 6.3) that .npz files use: one disk, entries
 * stored (method 0) or deflated (method 8), ZIP64 extensions for sizes and offsets past 4 GiB
 * (np.savez always writes ZIP64 local headers). Every number read from the archive is checked
 * against the archive's size before it is used to read or allocate. Internal to lib/io.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';

import { argError, SaekitError } from '../errors.js';
import { due, pause } from '../slices.js';
import { checkPlanned, formatError, MAX_BUFFER_BYTES } from './common.js';
import type { ByteSource } from './source.js';


const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_LOCATOR64 = 0x07064b50;
const EOCD_SIZE = 22;
const MAX_COMMENT = 0xffff;
const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;
/** Deflate cannot expand data by more than about 1032:1; a larger declared ratio is a lie. */
const MAX_DEFLATE_RATIO = 1100;
/** The least first buffer of a deflated entry (else 4x its compressed bytes; output past it gets a buffer of the declared size). */
const INITIAL_INFLATE_BYTES = 1 << 20;
const FLAG_ENCRYPTED = 0x0001;
const FLAG_STRONG_ENCRYPTION = 0x0040;
const FLAG_UTF8 = 0x0800;
/** 1980-01-01 00:00:00 in MS-DOS date/time: fixed, so archives are reproducible (numpy does the same). */
const DOS_DATE = (0 << 9) | (1 << 5) | 1;

/** One file in the archive, from the central directory. */
export interface ZipEntry {
  name: string;
  method: number;
  crc32: number;
  compressedSize: number;
  uncompressedSize: number;
  localHeaderOffset: number;
  /**
   * Where this entry's local header and data must end: the next entry's local header (by
   * offset), or the central directory for the last one. Set by readZipDirectory.
   */
  end: number;
}

// ---------------------------------------------------------------- CRC-32

let crcTable: Uint32Array | undefined;

function crc32Fallback(bytes: Uint8Array, crc: number): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

const nativeCrc32 = (zlib as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;

/**
 * CRC-32 (IEEE, as zip uses) of `bytes`, continuing from `crc` (default 0). Uses zlib.crc32
 * where Node has it (20.15+), a table-driven fallback otherwise.
 */
export function crc32(bytes: Uint8Array, crc = 0, forceFallback = false): number {
  // Node 20's zlib.crc32 returns 0, not `crc`, for a view of a zero-length ArrayBuffer.
  if (bytes.length === 0) return crc >>> 0;
  if (nativeCrc32 && !forceFallback) return nativeCrc32(bytes, crc) >>> 0;
  return crc32Fallback(bytes, crc);
}

/** Bytes given to crc32 at a time by crc32Sliced (a fraction of a millisecond natively). */
const CRC_PIECE = 1 << 20;

/**
 * crc32 of the chunks in order, continuing from `crc`, computed CRC_PIECE bytes at a time in
 * slices between turns of the event loop (slices.ts due / pause): the same value. A planned chunk
 * (a caller's array) is checked before each piece (checkPlanned).
 */
async function crc32Sliced(chunks: readonly Uint8Array[], crc = 0): Promise<number> {
  for (const c of chunks) {
    const length = checkPlanned(c);
    for (let at = 0; at < length; at += CRC_PIECE) {
      checkPlanned(c);
      const piece = c.subarray(at, Math.min(length, at + CRC_PIECE));
      crc = crc32(piece, crc);
      if (due(piece.length)) await pause();
    }
  }
  return crc >>> 0;
}

// ---------------------------------------------------------------- reading

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
}

/** A u64 field as a number, or a format error when it is beyond 2^53. */
function u64(dv: DataView, at: number, what: string, name: string, field: string): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw formatError(what, name, `${field} ${v} is too large`);
  return Number(v);
}

interface EndRecord {
  entries: number;
  cdSize: number;
  cdOffset: number;
  /** Where the end records start: the central directory must end at or before this. */
  cdLimit: number;
}

/** Finds the end-of-central-directory record in the last 64 KiB + 22 bytes, scanning backwards. */
async function findEnd(src: ByteSource, what: string): Promise<{ tail: Uint8Array; tailStart: number; at: number }> {
  const name = src.name;
  if (src.size < EOCD_SIZE) throw formatError(what, name, `file is ${src.size} bytes, too short for a zip archive`);
  const tailLen = Math.min(src.size, EOCD_SIZE + MAX_COMMENT);
  const tailStart = src.size - tailLen;
  const tail = await src.read(tailStart, tailLen);
  const dv = view(tail);
  for (let i = tailLen - EOCD_SIZE; i >= 0; i--) {
    if (dv.getUint32(i, true) === SIG_EOCD && i + EOCD_SIZE + dv.getUint16(i + 20, true) <= tailLen) return { tail, tailStart, at: i };
  }
  throw formatError(what, name, 'no end-of-central-directory record (not a zip archive, or truncated)');
}

/** Reads the end record, following the ZIP64 locator when there is one. */
async function readEnd(src: ByteSource, what: string): Promise<EndRecord> {
  const name = src.name;
  const { tail, tailStart, at } = await findEnd(src, what);
  const dv = view(tail);
  const eocdPos = tailStart + at;
  const disk = dv.getUint16(at + 4, true);
  const cdDisk = dv.getUint16(at + 6, true);
  const entriesHere = dv.getUint16(at + 8, true);
  let entries = dv.getUint16(at + 10, true);
  let cdSize = dv.getUint32(at + 12, true);
  let cdOffset = dv.getUint32(at + 16, true);
  let cdLimit = eocdPos;
  const saturated = entries === U16_MAX || cdSize === U32_MAX || cdOffset === U32_MAX;
  const locator = eocdPos >= 20 ? await src.read(eocdPos - 20, 20) : undefined;
  if (locator && view(locator).getUint32(0, true) === SIG_LOCATOR64) {
    const lv = view(locator);
    if (lv.getUint32(4, true) !== 0 || lv.getUint32(16, true) > 1) throw formatError(what, name, 'multi-disk zip archives are not supported');
    const recAt = u64(lv, 8, what, name, 'ZIP64 end record offset');
    if (recAt + 56 > eocdPos - 20) throw formatError(what, name, `ZIP64 end record offset ${recAt} is out of bounds`);
    // Python's zipfile (numpy.load) ignores this offset and reads the 56 bytes before the
    // locator: a record anywhere else (after a gap, or with extensible data) is read differently.
    if (recAt + 56 !== eocdPos - 20) {
      throw formatError(what, name, `ZIP64 end record at ${recAt} does not end where its locator starts (${eocdPos - 20}): zip readers disagree on such an archive`);
    }
    const rv = view(await src.read(recAt, 56));
    if (rv.getUint32(0, true) !== SIG_EOCD64) throw formatError(what, name, 'ZIP64 end record signature is wrong');
    if (rv.getUint32(16, true) !== 0 || rv.getUint32(20, true) !== 0) throw formatError(what, name, 'multi-disk zip archives are not supported');
    entries = u64(rv, 32, what, name, 'ZIP64 entry count');
    if (u64(rv, 24, what, name, 'ZIP64 entry count') !== entries) throw formatError(what, name, 'multi-disk zip archives are not supported');
    cdSize = u64(rv, 40, what, name, 'ZIP64 central directory size');
    cdOffset = u64(rv, 48, what, name, 'ZIP64 central directory offset');
    cdLimit = recAt;
  } else if (saturated) {
    throw formatError(what, name, 'end record needs ZIP64 values but the ZIP64 locator is missing');
  } else if (disk !== 0 || cdDisk !== 0 || entriesHere !== entries) {
    throw formatError(what, name, 'multi-disk zip archives are not supported');
  }
  if (cdOffset + cdSize > cdLimit) throw formatError(what, name, `central directory [${cdOffset}, +${cdSize}) runs past its end records at ${cdLimit}`);
  // Bytes between the directory and its end records: Python's zipfile (numpy.load) takes them as
  // a prefix before the archive and shifts every offset by their length, other readers do not,
  // so the same file would hold other arrays for numpy than for saekit.
  if (cdOffset + cdSize < cdLimit) {
    throw formatError(what, name, `central directory [${cdOffset}, +${cdSize}) ends ${cdLimit - cdOffset - cdSize} bytes before its end records at ${cdLimit} (a gap or a prefix, which zip readers resolve differently)`);
  }
  if (entries * 46 > cdSize) throw formatError(what, name, `${entries} entries cannot fit in a central directory of ${cdSize} bytes`);
  return { entries, cdSize, cdOffset, cdLimit };
}

/** Applies a ZIP64 extended-information extra field to the saturated 32-bit values. */
function applyZip64(extra: Uint8Array, e: ZipEntry, diskStart: number, what: string, name: string): void {
  const dv = view(extra);
  let p = 0;
  while (p + 4 <= extra.length) {
    const id = dv.getUint16(p, true);
    const size = dv.getUint16(p + 2, true);
    if (p + 4 + size > extra.length) throw formatError(what, name, `entry ${quoteName(e.name)} has an extra field running past its end`);
    if (id === 0x0001) {
      let q = p + 4;
      const end = q + size;
      const take = (field: string): number => {
        if (q + 8 > end) throw formatError(what, name, `entry ${quoteName(e.name)} ZIP64 field lacks the ${field}`);
        const v = u64(dv, q, what, name, `entry ${quoteName(e.name)} ${field}`);
        q += 8;
        return v;
      };
      if (e.uncompressedSize === U32_MAX) e.uncompressedSize = take('uncompressed size');
      if (e.compressedSize === U32_MAX) e.compressedSize = take('compressed size');
      if (e.localHeaderOffset === U32_MAX) e.localHeaderOffset = take('local header offset');
      if (diskStart === U16_MAX && (q + 4 > end || dv.getUint32(q, true) !== 0)) throw formatError(what, name, 'multi-disk zip archives are not supported');
      return;
    }
    p += 4 + size;
  }
  if (e.uncompressedSize === U32_MAX || e.compressedSize === U32_MAX || e.localHeaderOffset === U32_MAX) {
    throw formatError(what, name, `entry ${quoteName(e.name)} needs a ZIP64 extra field but has none`);
  }
}

/** An entry name: UTF-8 when flag bit 11 says so, otherwise code page 437. */
function decodeName(raw: Uint8Array, flags: number, what: string, name: string): string {
  if (flags & FLAG_UTF8) {
    try {
      // A leading U+FEFF is part of the name (Python's zipfile keeps it; the writer writes it):
      // TextDecoder would drop it as a byte-order mark.
      return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(raw);
    } catch {
      throw formatError(what, name, 'an entry name is not valid UTF-8');
    }
  }
  // Without the UTF-8 flag a name is in code page 437 (the zip specification, APPNOTE appendix D,
  // as Python's zipfile and so np.load decode it): ASCII below 0x80, CP437_HIGH above.
  let out = '';
  for (const b of raw) out += b < 0x80 ? String.fromCharCode(b) : CP437_HIGH[b - 0x80]!;
  return out;
}

/** Code page 437's characters for the bytes 0x80 to 0xff, in order. */
const CP437_HIGH = 'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0';

/** Parses one central-directory record at `p`; returns the entry and the next record's offset. */
function readCentral(cd: Uint8Array, p: number, what: string, name: string): { entry: ZipEntry; next: number } {
  const dv = view(cd);
  if (p + 46 > cd.length || dv.getUint32(p, true) !== SIG_CENTRAL) throw formatError(what, name, `central directory record at +${p} is missing or cut short`);
  const flags = dv.getUint16(p + 8, true);
  const nameLen = dv.getUint16(p + 28, true);
  const extraLen = dv.getUint16(p + 30, true);
  const commentLen = dv.getUint16(p + 32, true);
  const next = p + 46 + nameLen + extraLen + commentLen;
  if (next > cd.length) throw formatError(what, name, `central directory record at +${p} runs past the directory`);
  const entry: ZipEntry = {
    name: decodeName(cd.subarray(p + 46, p + 46 + nameLen), flags, what, name),
    method: dv.getUint16(p + 10, true),
    crc32: dv.getUint32(p + 16, true),
    compressedSize: dv.getUint32(p + 20, true),
    uncompressedSize: dv.getUint32(p + 24, true),
    localHeaderOffset: dv.getUint32(p + 42, true),
    end: 0,
  };
  applyZip64(cd.subarray(p + 46 + nameLen, p + 46 + nameLen + extraLen), entry, dv.getUint16(p + 34, true), what, name);
  if (flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION)) throw formatError(what, name, `entry ${quoteName(entry.name)} is encrypted`);
  if (entry.method !== 0 && entry.method !== 8) {
    throw formatError(what, name, `entry ${quoteName(entry.name)} uses compression method ${entry.method} (only stored and deflate are supported)`);
  }
  return { entry, next };
}

/**
 * Reads and validates the central directory of the zip archive in `src`.
 * @param what Names the format in errors ("npz file").
 */
export async function readZipDirectory(src: ByteSource, what: string): Promise<{ entries: ZipEntry[]; cdOffset: number }> {
  const end = await readEnd(src, what);
  if (end.cdSize > MAX_BUFFER_BYTES) throw formatError(what, src.name, `central directory of ${end.cdSize} bytes is too large`);
  const cd = await src.read(end.cdOffset, end.cdSize);
  const entries: ZipEntry[] = [];
  let p = 0;
  for (let i = 0; i < end.entries; i++) {
    const { entry, next } = readCentral(cd, p, what, src.name);
    entries.push(entry);
    p = next;
  }
  // Records past the count would be silently dropped here, yet read by tools that walk the
  // directory by its size (Python's zipfile does): one file, two meanings. Demand an exact fit.
  if (p !== cd.length) {
    const counted = `${end.entries} entr${end.entries === 1 ? 'y' : 'ies'}`;
    throw formatError(what, src.name, `end record counts ${counted} but the central directory holds ${cd.length - p} more bytes after them (${cd.length} in all)`);
  }
  setEntryEnds(entries, end.cdOffset, what, src.name);
  return { entries, cdOffset: end.cdOffset };
}

/**
 * Sets each entry's `end` (the next local header by offset, or the central directory) and
 * rejects entries that overlap: several directory records pointing into one local entry let a
 * small archive inflate the same deflate stream again and again (a zip bomb no per-entry ratio
 * check sees), and make one stretch of bytes mean two arrays. An entry takes at least its
 * 30-byte local header and its compressed data, so that much must fit before the next one
 * starts; readZipEntry checks the exact extent once the local header is read.
 */
function setEntryEnds(entries: readonly ZipEntry[], cdOffset: number, what: string, name: string): void {
  const byOffset = [...entries].sort((a, b) => a.localHeaderOffset - b.localHeaderOffset);
  for (let i = 0; i < byOffset.length; i++) {
    const e = byOffset[i]!;
    const next = byOffset[i + 1];
    e.end = Math.min(next ? next.localHeaderOffset : cdOffset, cdOffset);
    if (next && e.localHeaderOffset + 30 + e.compressedSize > next.localHeaderOffset) {
      throw formatError(
        what,
        name,
        `entries ${quoteName(e.name)} and ${quoteName(next.name)} overlap (local headers at ${e.localHeaderOffset} and ${next.localHeaderOffset}, ` +
          `and the first needs at least ${30 + e.compressedSize} bytes)`,
      );
    }
  }
}

/** An entry name for a message, cut at 60 characters (names may be 65,535 bytes long). */
export function quoteName(s: string): string {
  return `'${s.length > 60 ? `${s.slice(0, 60)}...` : s}'`;
}

/**
 * Where one entry's data starts, after checking its local header (its name must be the
 * directory's, as np.load requires), that header and data end before the next entry (`e.end`),
 * and the declared sizes (before anything is allocated).
 */
async function entryData(src: ByteSource, e: ZipEntry, cdOffset: number, bad: (reason: string) => Error, what: string): Promise<number> {
  if (e.localHeaderOffset + 30 > e.end) throw bad(`local header offset ${e.localHeaderOffset} is out of bounds`);
  const lv = view(await src.read(e.localHeaderOffset, 30));
  if (lv.getUint32(0, true) !== SIG_LOCAL) throw bad('local header signature is wrong');
  const nameLen = lv.getUint16(26, true);
  const dataStart = e.localHeaderOffset + 30 + nameLen + lv.getUint16(28, true);
  if (dataStart + e.compressedSize > e.end) {
    throw bad(`data [${dataStart}, +${e.compressedSize}) runs past ${e.end === cdOffset ? 'the end of the entries' : `the next entry's local header at ${e.end}`}`);
  }
  // np.load (Python's zipfile) refuses an entry whose local name differs from the directory's.
  const localName = decodeName(await src.read(e.localHeaderOffset + 30, nameLen), lv.getUint16(6, true), what, src.name);
  if (localName !== e.name) throw bad(`the local header names it ${quoteName(localName)}`);
  if (e.method === 0 && e.compressedSize !== e.uncompressedSize) throw bad(`stored entry sizes differ (${e.compressedSize} != ${e.uncompressedSize})`);
  if (e.method === 8 && e.uncompressedSize > e.compressedSize * MAX_DEFLATE_RATIO + 64) {
    throw bad(`declares ${e.uncompressedSize} bytes from ${e.compressedSize} compressed bytes, more than deflate can produce`);
  }
  return dataStart;
}

/**
 * The uncompressed bytes of one entry of a directory from readZipDirectory (a fresh buffer),
 * after entryData's checks, and the CRC-32 (in slices between turns of the event loop).
 * @param cdOffset The central directory's start (readZipDirectory returns it).
 */
export async function readZipEntry(src: ByteSource, e: ZipEntry, cdOffset: number, what: string): Promise<Uint8Array> {
  const bad = (reason: string) => formatError(what, src.name, `entry ${quoteName(e.name)}: ${reason}`);
  const dataStart = await entryData(src, e, cdOffset, bad, what);
  // No Uint8Array holds more (readZipEntryInto reads such an entry into the caller's views).
  if (e.uncompressedSize > MAX_BUFFER_BYTES) throw bad(`uncompressed size ${e.uncompressedSize} exceeds the 4 GiB buffer limit`);
  if (e.method === 0) {
    const data = await src.read(dataStart, e.compressedSize);
    if ((await crc32Sliced([data])) !== e.crc32) throw bad('CRC-32 mismatch (the data is corrupt)');
    return data;
  }
  // Inflated in pieces (each piece's output CRC-checked as it comes), so no single step holds
  // the JS thread for the whole entry. The declared size is bounded only by what deflate can
  // produce (MAX_DEFLATE_RATIO times the compressed bytes: 4 GiB from a 4 MB file), so it is not
  // allocated up front: the output goes straight into a buffer of up to 4x the compressed bytes
  // (most arrays deflate less than that: then it is the result). Only an entry whose output
  // passes that (real output past 4:1, which a junk stream does not have) gets a buffer of its
  // declared size; the rest of its output goes straight there, and the first buffer is copied
  // to its start afterwards, in slices between turns of the event loop. (One large copy, or a
  // buffer doubled and copied as it grew, held the thread for 300-480 ms of a 1 s read of
  // 128 MiB: the copy faults in fresh pages. Output kept in zlib's chunks to be joined was held
  // twice, and zlib's own chunk allocation, when memory ran out, aborted the process, where
  // this allocation fails as ERR_SAEKIT_MEMORY.)
  const alloc = (n: number): Uint8Array => {
    try {
      return new Uint8Array(n);
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      throw new SaekitError('ERR_SAEKIT_MEMORY', `Cannot hold entry ${quoteName(e.name)} of ${src.name} (${e.uncompressedSize} bytes inflated) in memory here: ${err.message}`);
    }
  };
  const first = alloc(Math.min(e.uncompressedSize, Math.max(INITIAL_INFLATE_BYTES, e.compressedSize * 4)));
  let data: Uint8Array | undefined; // the declared size, once the output passes `first`
  let memory: unknown;
  let got = 0;
  let crc = 0;
  const failure = await streamInflate(src, dataStart, e.compressedSize, INFLATE_PIECE, true, (c) => {
    if (got + c.length > e.uncompressedSize) {
      got += c.length;
      return false;
    }
    crc = crc32(c, crc);
    const fit = Math.max(0, Math.min(c.length, first.length - got));
    if (fit > 0) first.set(c.subarray(0, fit), got);
    if (fit < c.length) {
      if (data === undefined) {
        try {
          data = alloc(e.uncompressedSize);
        } catch (err) {
          memory = err;
          return false;
        }
      }
      data.set(fit > 0 ? c.subarray(fit) : c, got + fit);
    }
    got += c.length;
    return true;
  }, INFLATE_CHUNK);
  if (memory !== undefined) throw memory;
  checkInflated(e, bad, failure, got, crc);
  if (data === undefined) return first; // got === first.length: checkInflated saw got equal the declared size
  for (let off = 0; off < first.length; off += JOIN_PIECE) {
    const end = Math.min(first.length, off + JOIN_PIECE);
    data.set(first.subarray(off, end), off);
    if (due(end - off)) await pause();
  }
  return data;
}

/**
 * Reads one entry (of any size: over 4 GiB no single buffer can hold it) into views the caller
 * provides, with readZipEntry's checks: entryData's first (the data within the file, the stored
 * sizes equal, the deflate ratio bound), then the inflated size and the CRC-32 of the whole
 * entry. Its first `skip` bytes (an .npy header) come back in a fresh buffer; the rest go, in
 * order, into the views `target` returns, whose lengths must add up to the declared size less
 * `skip`. `target` is called once the checks that bound the size have passed, so the caller
 * allocates nothing from a size not checked against the file. Stored data is read straight into
 * the views; deflated data is inflated in pieces and each output chunk copied in. The CRC-32 runs
 * in slices between turns of the event loop. On an error the views hold partial data.
 */
export async function readZipEntryInto(src: ByteSource, e: ZipEntry, cdOffset: number, what: string, skip: number, target: () => readonly Uint8Array[]): Promise<Uint8Array> {
  const bad = (reason: string) => formatError(what, src.name, `entry ${quoteName(e.name)}: ${reason}`);
  const dataStart = await entryData(src, e, cdOffset, bad, what);
  if (!Number.isSafeInteger(skip) || skip < 0 || skip > Math.min(e.uncompressedSize, MAX_BUFFER_BYTES)) throw new RangeError(`skip ${skip} is out of range`);
  const views = target();
  const total = views.reduce((a, v) => a + v.length, 0);
  if (skip + total !== e.uncompressedSize) throw new RangeError(`views of ${total} bytes after ${skip} do not hold the ${e.uncompressedSize} bytes declared`);
  const head = new Uint8Array(skip);
  if (e.method === 0) {
    await src.read(dataStart, skip, head);
    let crc = crc32(head);
    let at = dataStart + skip;
    for (const v of views) {
      for (let off = 0; off < v.length; off += STORED_PIECE) {
        const part = v.subarray(off, Math.min(v.length, off + STORED_PIECE));
        await src.read(at, part.length, part);
        crc = await crc32Sliced([part], crc);
        at += part.length;
      }
    }
    if (crc !== e.crc32) throw bad('CRC-32 mismatch (the data is corrupt)');
    return head;
  }
  let got = 0;
  let crc = 0;
  let vi = 0; // the view being filled, and how far
  let vAt = 0;
  const failure = await streamInflate(src, dataStart, e.compressedSize, INFLATE_PIECE, true, (c) => {
    if (got + c.length > e.uncompressedSize) {
      got += c.length;
      return false;
    }
    crc = crc32(c, crc);
    let from = 0;
    if (got < skip) {
      from = Math.min(skip - got, c.length);
      head.set(c.subarray(0, from), got);
    }
    while (from < c.length) {
      const v = views[vi]!;
      const k = Math.min(v.length - vAt, c.length - from);
      v.set(c.subarray(from, from + k), vAt);
      from += k;
      vAt += k;
      if (vAt === v.length) {
        vi++;
        vAt = 0;
      }
    }
    got += c.length;
    return true;
  }, INFLATE_CHUNK);
  checkInflated(e, bad, failure, got, crc);
  return head;
}

/** Stored bytes read into a view at a time by readZipEntryInto (then CRC-checked in slices). */
const STORED_PIECE = 1 << 26;

/** Bytes of an entry's first buffer copied at a time into its whole buffer by readZipEntry (then the slice's clock is checked). */
const JOIN_PIECE = 1 << 20;

/** Compressed bytes read and fed to the inflater at a time by readZipEntry. */
const INFLATE_PIECE = 1 << 20;
/** The inflater's output chunks in readZipEntry (each is copied and CRC-checked in one step). */
const INFLATE_CHUNK = 1 << 20;

/** Compressed bytes fed to the inflater at a time while looking for an entry's first bytes (at most ~1 MiB out each). */
const HEAD_PIECE = 1024;
/** How far into an entry's compressed data its first bytes must appear (real deflaters need a few KiB for 10 KiB). */
const HEAD_SEARCH = 1 << 20;

/**
 * Feeds `length` compressed bytes from `start` to a raw inflater, `piece` bytes at a time, each
 * piece's output handed to `onData` before the next is read; stops early once `onData` returns
 * false. With `finish`, the inflater is then ended; Node calls end()'s callback before it emits
 * "unexpected end of file" for a stream cut short, so that error is not waited for: a stream cut
 * after its last output byte passes when the caller's size and CRC-32 checks do (as Python's
 * zipfile and np.load accept it), and one cut earlier fails the size check. Resolves to the
 * inflater's error, if any. Nothing is kept: memory stays at a piece's output.
 */
async function streamInflate(
  src: ByteSource,
  start: number,
  length: number,
  piece: number,
  finish: boolean,
  onData: (chunk: Buffer) => boolean,
  chunkSize?: number,
): Promise<Error | undefined> {
  const inf = zlib.createInflateRaw(chunkSize === undefined ? {} : { chunkSize });
  let failure: Error | undefined;
  let more = true;
  inf.on('data', (c: Buffer) => {
    if (more) more = onData(c);
  });
  inf.on('error', (err: Error) => (failure ??= err));
  // Resolves when `act` calls back, or the stream fails or closes instead.
  const settle = (act: (done: () => void) => void) =>
    new Promise<void>((resolve) => {
      const done = () => {
        inf.off('error', done).off('close', done);
        resolve();
      };
      inf.once('error', done).once('close', done);
      act(done);
    });
  try {
    for (let off = 0; off < length && more && !failure && !inf.destroyed; off += piece) {
      const bytes = await src.read(start + off, Math.min(piece, length - off));
      // The flush's callback runs once this piece's output has been pushed (and 'data' seen).
      await settle((done) => {
        inf.write(bytes);
        inf.flush(zlib.constants.Z_SYNC_FLUSH, done);
      });
    }
    if (finish && more && !failure && !inf.destroyed) await settle((done) => inf.end(done));
  } finally {
    inf.destroy();
  }
  return failure;
}

/**
 * The first min(`want`, size) uncompressed bytes of an entry (all of them, or more, when it is
 * shorter or a piece inflates past `want`), without inflating the rest: an entry's .npy header
 * can be checked against its declared size before the whole entry is allocated. A deflated
 * entry is fed to the inflater 1 KiB at a time, so at most about `want` + 1 MiB is produced.
 * Not CRC-checked (readZipEntry and verifyZipEntry do that).
 */
export async function readZipEntryHead(src: ByteSource, e: ZipEntry, cdOffset: number, what: string, want: number): Promise<Uint8Array> {
  const bad = (reason: string) => formatError(what, src.name, `entry ${quoteName(e.name)}: ${reason}`);
  const dataStart = await entryData(src, e, cdOffset, bad, what);
  const need = Math.min(want, e.uncompressedSize);
  if (e.method === 0) return src.read(dataStart, need);
  const parts: Buffer[] = [];
  let got = 0;
  const failure = await streamInflate(src, dataStart, Math.min(e.compressedSize, HEAD_SEARCH), HEAD_PIECE, false, (c) => {
    parts.push(c);
    got += c.length;
    return got < need;
  });
  if (failure) throw bad(`deflate data is corrupt (${failure.message})`);
  if (got < need && e.compressedSize > HEAD_SEARCH) throw bad(`its first ${need} bytes are not within the first ${HEAD_SEARCH} compressed bytes`);
  return Buffer.concat(parts, got);
}

/**
 * Checks an entry as readZipEntry does (inflates to its declared size, CRC-32) without keeping
 * its bytes: memory stays at 64 KiB of input and its output, and inflating stops once the output
 * passes the declared size. Throws readZipEntry's error, or returns when the entry is sound.
 */
export async function verifyZipEntry(src: ByteSource, e: ZipEntry, cdOffset: number, what: string): Promise<void> {
  const bad = (reason: string) => formatError(what, src.name, `entry ${quoteName(e.name)}: ${reason}`);
  const dataStart = await entryData(src, e, cdOffset, bad, what);
  let crc = 0;
  let got = 0;
  const piece = 1 << 16;
  if (e.method === 0) {
    for (let off = 0; off < e.compressedSize; off += piece) crc = crc32(await src.read(dataStart + off, Math.min(piece, e.compressedSize - off)), crc);
    got = e.compressedSize;
  } else {
    const failure = await streamInflate(src, dataStart, e.compressedSize, piece, true, (c) => {
      got += c.length;
      if (got <= e.uncompressedSize) crc = crc32(c, crc);
      return got <= e.uncompressedSize;
    });
    checkInflated(e, bad, failure, got, crc);
    return;
  }
  checkInflated(e, bad, undefined, got, crc);
}

/**
 * The checks after an entry's data has gone through: the inflater's error, the bytes produced
 * (`got`, counted past the declared size when it overran) against the declared size, the CRC-32.
 */
function checkInflated(e: ZipEntry, bad: (reason: string) => Error, failure: Error | undefined, got: number, crc: number): void {
  if (failure) throw bad(`deflate data is corrupt (${failure.message})`);
  if (got > e.uncompressedSize) throw bad(`deflate data is corrupt (it inflates to more than the declared ${e.uncompressedSize} bytes)`);
  if (got !== e.uncompressedSize) throw bad(`inflated to ${got} bytes but declares ${e.uncompressedSize}`);
  if (crc !== e.crc32) throw bad('CRC-32 mismatch (the data is corrupt)');
}

// ---------------------------------------------------------------- writing

/** One file to put in an archive: its name and its content as chunks (concatenated in order). */
export interface ZipInput {
  name: string;
  chunks: readonly Uint8Array[];
}

/** Options of encodeZipParts. */
export interface ZipWriteOptions {
  /** Deflate every entry (default false: stored). */
  compress?: boolean;
  /**
   * 'auto' (default) uses ZIP64 records only where a size, offset or count needs them;
   * 'always' writes them everywhere (for tests of the ZIP64 reader).
   */
  zip64?: 'auto' | 'always';
}

interface Written {
  name: Uint8Array;
  utf8: boolean;
  method: number;
  crc: number;
  csize: number;
  usize: number;
  offset: number;
}

/**
 * Encodes `files` as a zip archive, returning its chunks in order (stored data chunks are passed
 * through without copying). Dates are fixed at 1980-01-01 so output is reproducible.
 */
export async function encodeZipParts(files: readonly ZipInput[], options: ZipWriteOptions = {}): Promise<Uint8Array[]> {
  const always = options.zip64 === 'always';
  const out: Uint8Array[] = [];
  const written: Written[] = [];
  let offset = 0;
  for (const f of files) {
    const name = Buffer.from(f.name, 'utf8');
    if (name.length > U16_MAX) throw argError('name', 'an entry name of at most 65535 UTF-8 bytes', f.name);
    const crc = await crc32Sliced(f.chunks);
    const usize = f.chunks.reduce((a, c) => a + checkPlanned(c), 0);
    const data = options.compress ? await deflateChunks(f.chunks, usize) : f.chunks;
    const csize = data.reduce((a, c) => a + c.length, 0);
    const w: Written = { name, utf8: name.length !== f.name.length, method: options.compress ? 8 : 0, crc, csize, usize, offset };
    const local = localHeader(w, always || usize >= U32_MAX || csize >= U32_MAX);
    out.push(local, ...data);
    written.push(w);
    offset += local.length + csize;
  }
  const cdOffset = offset;
  for (const w of written) {
    const rec = centralRecord(w, always);
    out.push(rec);
    offset += rec.length;
  }
  out.push(...endRecords(written.length, offset - cdOffset, cdOffset, always));
  return out;
}

/** Bytes of a chunk copied for the deflater at a time (deflateChunks). */
const DEFLATE_PIECE = 1 << 20;

/**
 * The chunks in order as owned copies of up to DEFLATE_PIECE bytes, each made when the deflater
 * asks for it, right after its chunk's planned length is checked (checkPlanned): the deflater
 * never holds a view on a caller's array, which could be detached while it waits or works.
 */
function* deflateInput(chunks: readonly Uint8Array[]): Generator<Buffer> {
  for (const c of chunks) {
    const length = checkPlanned(c);
    for (let at = 0; at < length; at += DEFLATE_PIECE) {
      checkPlanned(c);
      yield Buffer.from(c.subarray(at, Math.min(length, at + DEFLATE_PIECE)));
    }
  }
}

/**
 * The raw deflate stream of the chunks in order, as the deflater's output pieces: the chunks go
 * to it a piece at a time (never concatenated on the JS thread), and the output bytes are the
 * same as one zlib.deflateRaw of their concatenation. Output pieces are up to 1 MiB. A planned
 * chunk detached or resized meanwhile, or any failure of the streams, rejects.
 */
async function deflateChunks(chunks: readonly Uint8Array[], size: number): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  await pipeline(Readable.from(deflateInput(chunks)), zlib.createDeflateRaw({ chunkSize: Math.min(1 << 20, Math.max(zlib.constants.Z_DEFAULT_CHUNK, size)) }), async (deflated: AsyncIterable<Buffer>) => {
    for await (const c of deflated) out.push(c);
  });
  for (const c of chunks) checkPlanned(c);
  return out;
}

function localHeader(w: Written, zip64: boolean): Uint8Array {
  const b = new Uint8Array(30 + w.name.length + (zip64 ? 20 : 0));
  const dv = view(b);
  dv.setUint32(0, SIG_LOCAL, true);
  dv.setUint16(4, zip64 ? 45 : 20, true);
  dv.setUint16(6, w.utf8 ? FLAG_UTF8 : 0, true);
  dv.setUint16(8, w.method, true);
  dv.setUint16(10, 0, true);
  dv.setUint16(12, DOS_DATE, true);
  dv.setUint32(14, w.crc, true);
  dv.setUint32(18, zip64 ? U32_MAX : w.csize, true);
  dv.setUint32(22, zip64 ? U32_MAX : w.usize, true);
  dv.setUint16(26, w.name.length, true);
  dv.setUint16(28, zip64 ? 20 : 0, true);
  b.set(w.name, 30);
  if (zip64) {
    const at = 30 + w.name.length;
    dv.setUint16(at, 0x0001, true);
    dv.setUint16(at + 2, 16, true);
    dv.setBigUint64(at + 4, BigInt(w.usize), true);
    dv.setBigUint64(at + 12, BigInt(w.csize), true);
  }
  return b;
}

function centralRecord(w: Written, always: boolean): Uint8Array {
  const big = [always || w.usize >= U32_MAX, always || w.csize >= U32_MAX, always || w.offset >= U32_MAX];
  const n64 = big.filter(Boolean).length;
  const extraLen = n64 ? 4 + 8 * n64 : 0;
  const b = new Uint8Array(46 + w.name.length + extraLen);
  const dv = view(b);
  dv.setUint32(0, SIG_CENTRAL, true);
  dv.setUint16(4, (3 << 8) | 45, true); // made by: Unix, spec 4.5
  dv.setUint16(6, n64 ? 45 : 20, true);
  dv.setUint16(8, w.utf8 ? FLAG_UTF8 : 0, true);
  dv.setUint16(10, w.method, true);
  dv.setUint16(12, 0, true);
  dv.setUint16(14, DOS_DATE, true);
  dv.setUint32(16, w.crc, true);
  dv.setUint32(20, big[1] ? U32_MAX : w.csize, true);
  dv.setUint32(24, big[0] ? U32_MAX : w.usize, true);
  dv.setUint16(28, w.name.length, true);
  dv.setUint16(30, extraLen, true);
  dv.setUint32(38, (0o100644 << 16) >>> 0, true); // regular file, rw-r--r--
  dv.setUint32(42, big[2] ? U32_MAX : w.offset, true);
  b.set(w.name, 46);
  if (n64) {
    let at = 46 + w.name.length;
    dv.setUint16(at, 0x0001, true);
    dv.setUint16(at + 2, 8 * n64, true);
    at += 4;
    for (const [i, v] of [w.usize, w.csize, w.offset].entries()) {
      if (!big[i]) continue;
      dv.setBigUint64(at, BigInt(v), true);
      at += 8;
    }
  }
  return b;
}

function endRecords(count: number, cdSize: number, cdOffset: number, always: boolean): Uint8Array[] {
  const zip64 = always || count >= U16_MAX || cdSize >= U32_MAX || cdOffset >= U32_MAX;
  const out: Uint8Array[] = [];
  if (zip64) {
    const rec = new Uint8Array(56);
    const rv = view(rec);
    rv.setUint32(0, SIG_EOCD64, true);
    rv.setBigUint64(4, 44n, true);
    rv.setUint16(12, (3 << 8) | 45, true);
    rv.setUint16(14, 45, true);
    rv.setBigUint64(24, BigInt(count), true);
    rv.setBigUint64(32, BigInt(count), true);
    rv.setBigUint64(40, BigInt(cdSize), true);
    rv.setBigUint64(48, BigInt(cdOffset), true);
    const loc = new Uint8Array(20);
    const lv = view(loc);
    lv.setUint32(0, SIG_LOCATOR64, true);
    lv.setBigUint64(8, BigInt(cdOffset + cdSize), true);
    lv.setUint32(16, 1, true);
    out.push(rec, loc);
  }
  const end = new Uint8Array(EOCD_SIZE);
  const dv = view(end);
  dv.setUint32(0, SIG_EOCD, true);
  dv.setUint16(8, zip64 ? U16_MAX : count, true);
  dv.setUint16(10, zip64 ? U16_MAX : count, true);
  dv.setUint32(12, zip64 ? U32_MAX : cdSize, true);
  dv.setUint32(16, zip64 ? U32_MAX : cdOffset, true);
  out.push(end);
  return out;
}
