#include "io_read.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <emmintrin.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../core/dtype.h"
#include "../core/aligned_memory.h"
#include "../core/error.h"
#include "../cpu/convert.h"
#include "args.h"
#include "async.h"
#include "buffers.h"

namespace sk::napi {

namespace {

// True when any of the n float32 values is a NaN or an infinity (the vectorised kernel).
bool any_non_finite_f32(const float* p, int64_t n) { return cpu::convert_kernels().any_non_finite_f32(p, n); }

// Copies n bytes with non-temporal 16-byte stores when dst is 16-byte aligned (no
// read-for-ownership of dst lines: for rows written once at random places), else memcpy. Baseline
// SSE2; the caller issues _mm_sfence() before its job ends.
void copy_stream(uint8_t* dst, const uint8_t* src, size_t n) {
  if ((reinterpret_cast<uintptr_t>(dst) & 15) != 0) {
    std::memcpy(dst, src, n);
    return;
  }
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
  if (i < n) std::memcpy(dst + i, src + i, n - i);
}

// bfloat16 -> float32 (exact: the float's top 16 bits) with non-temporal stores where dst is
// aligned: for batch rows, written once and not read again by this job. Baseline SSE2; the caller
// issues _mm_sfence() before its job ends.
void bf16_to_f32_stream(float* o, const uint16_t* s, int64_t n) {
  uint32_t* u = reinterpret_cast<uint32_t*>(o);
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(u + i) & 15) != 0; ++i) u[i] = uint32_t(s[i]) << 16;
  const __m128i z = _mm_setzero_si128();
  for (; i + 8 <= n; i += 8) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    _mm_stream_si128(reinterpret_cast<__m128i*>(u + i), _mm_unpacklo_epi16(z, v));
    _mm_stream_si128(reinterpret_cast<__m128i*>(u + i + 4), _mm_unpackhi_epi16(z, v));
  }
  for (; i < n; ++i) u[i] = uint32_t(s[i]) << 16;
}

// True when any of the n bfloat16 / float16 values (mask: their exponent bits) is a NaN or an infinity.
bool any_non_finite_16(const uint16_t* p, int64_t n, uint16_t mask) {
  return cpu::convert_kernels().any_non_finite_16(p, n, mask);
}

// This thread's staging buffer for file reads, at least `bytes` long and page aligned: a plain
// pread from the page cache into a destination that is not cache-line aligned runs at about 60%
// of the speed (8 against 14 GB/s for 1 MiB reads on this Zen 4 VM; a std::vector's buffer need
// not be aligned). Null when memory runs out.
uint8_t* stage_buffer(size_t bytes) {
  struct Stage {
    uint8_t* p = nullptr;
    size_t cap = 0;
    ~Stage() { aligned_free(p); }
  };
  thread_local Stage st;
  if (st.cap < bytes) {
    const size_t cap = (bytes + 4095) / 4096 * 4096;
    aligned_free(st.p);
    st.p = static_cast<uint8_t*>(aligned_malloc(4096, cap));
    st.cap = st.p ? cap : 0;
  }
  return st.p;
}

// The kernel copies page-cache data to the reader with `rep movsb`, which on AMD Zen runs 4-5x
// slower when the destination is 1 to 31 bytes past the source within a 4 KiB page ((dst - file
// offset) mod 4096 in [1, 31]: 1.7 against 9 GB/s on the EPYC VM, every read of the pass, since
// the difference is the same for every byte of a contiguous read). glibc hands out large blocks
// (fresh V8 arrays among them) 16 bytes into a page, so a raw file read from offset 0 into a
// fresh batch lands there. Reads whose difference falls in this window (with a margin) go
// through a staging buffer instead (stage_for).
constexpr uintptr_t kCopyAliasWindow = 64;
bool slow_kernel_copy(const void* dst, int64_t pos) {
  const uintptr_t rel = (reinterpret_cast<uintptr_t>(dst) - uintptr_t(pos)) & 4095;
  return rel != 0 && rel < kCopyAliasWindow;
}

// A staging buffer for a read of `bytes` at file offset `pos`, placed about half a page away from
// pos's offset within a page: the kernel's copy into it runs at full speed (see slow_kernel_copy),
// and so does a memcpy from it to a destination that was too close to the file offset (glibc's
// memcpy uses the same instruction). 16-byte aligned whatever pos is: the file's elements land at
// the stage's start, so a 16-bit file at an odd offset (a safetensors header of odd length) is
// still read from aligned uint16_t (the stage is then 2033-2048 bytes past pos within a page).
// Null when memory runs out.
uint8_t* stage_for(size_t bytes, int64_t pos) {
  uint8_t* p = stage_buffer(bytes + 4096);
  return p ? p + ((uint64_t(pos) + 2048) & 4095 & ~uint64_t(15)) : nullptr;
}

// The element type of file data: float32, float16, bfloat16 or float64.
std::string get_file_dtype(const Napi::Value& v) {
  std::string dtype = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (dtype != "float32" && dtype != "float16" && dtype != "bfloat16" && dtype != "float64")
    arg_error(ErrorCode::Arg, "srcDtype", "one of float32, float16, bfloat16, float64", v);
  return dtype;
}

// Reads exactly `bytes` at `pos`, looping over short reads. Returns "" or an error message.
std::string pread_fully(int fd, uint8_t* into, size_t bytes, int64_t pos) {
  size_t done = 0;
  while (done < bytes) {
    ssize_t n = ::pread(fd, into + done, bytes - done, off_t(pos + int64_t(done)));
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::string("read failed: ") + std::strerror(errno);
    }
    if (n == 0) return "eof";
    done += size_t(n);
  }
  return "";
}

// readRows(fd, position, count, srcDtype, dst: Float32Array, dstOffset) -> Promise<boolean>:
// reads `count` little-endian elements of srcDtype (float32, float16, bfloat16, float64) at byte
// `position` of the open file `fd`, converts them into dst[dstOffset, dstOffset + count) and
// resolves to whether any converted value is non-finite. A file that ends early rejects with
// ERR_SAEKIT_FORMAT ("truncated"); the caller names the file.
struct ReadJob {
  int fd_ = -1;
  int64_t pos_ = 0, count_ = 0;
  std::string dtype_;
  float* out_ = nullptr;
  bool raw16_ = false;  // dst holds the file's 16-bit values (no conversion), screened on their bits
  std::vector<uint32_t> slots_;  // row r goes to out_ + slots_[r] * d_ (empty: contiguous)
  int64_t d_ = 0;
  bool non_finite_ = false;

  // Throws ERR_SAEKIT_FORMAT "truncated" for a file that ends early, ERR_SAEKIT_ARG for a failed read.
  [[noreturn]] static void fail(const std::string& e) {
    if (e == "eof") throw Error(ErrorCode::Format, "truncated");
    throw Error(ErrorCode::Arg, e);
  }

  void run() {
    if (count_ == 0) return;
    if (dtype_ == "float32" && slots_.empty()) {
      // In 1 MiB pieces, each screened right after its read, while it is still in cache (a
      // 2 GiB pass with recycled batches: 0.7 of a plain read's speed with the screen run over the
      // whole batch afterwards, 0.8-0.88 in pieces with the vectorised screen). A destination the
      // kernel copies into slowly (see slow_kernel_copy) is read through the staging buffer.
      const int64_t piece = int64_t(1) << 18;
      const bool staged = slow_kernel_copy(out_, pos_);
      bool bad = false;
      for (int64_t c0 = 0; c0 < count_; c0 += piece) {
        const int64_t cn = std::min(piece, count_ - c0);
        const int64_t at = pos_ + c0 * 4;
        float* const o = out_ + c0;
        if (!staged) {
          std::string e = pread_fully(fd_, reinterpret_cast<uint8_t*>(o), size_t(cn) * 4, at);
          if (!e.empty()) fail(e);
          bad = bad || any_non_finite_f32(o, cn);
          continue;
        }
        uint8_t* const stage = stage_for(size_t(std::min(piece, count_)) * 4, at);
        if (!stage) fail("out of memory for the read's staging buffer");
        std::string e = pread_fully(fd_, stage, size_t(cn) * 4, at);
        if (!e.empty()) fail(e);
        bad = bad || any_non_finite_f32(reinterpret_cast<const float*>(stage), cn);
        std::memcpy(o, stage, size_t(cn) * 4);
      }
      non_finite_ = bad;
      return;
    }
    const size_t item = dtype_ == "float64" ? 8 : dtype_ == "float32" ? 4 : 2;
    if (!slots_.empty() && (item == 4 || raw16_)) {
      // Rows are read in runs of about 256 KiB into a staging buffer that stays in this core's
      // L2, screened there, and copied to their (random) slots with non-temporal stores. Reading
      // straight into the slots (preadv) costs more: every slot line is first fetched from memory
      // (read-for-ownership), then screened by a second pass over the slots.
      const int64_t row_bytes = d_ * int64_t(item);
      const int64_t run = std::max<int64_t>(1, (int64_t(256) << 10) / row_bytes);
      const int64_t rows = int64_t(slots_.size());
      const uint16_t mask = dtype_ == "bfloat16" ? 0x7f80 : 0x7c00;
      bool bad = false;
      for (int64_t r0 = 0; r0 < rows; r0 += run) {
        const int64_t n = std::min(run, rows - r0);
        uint8_t* const stage = stage_for(size_t(std::min(run, rows) * row_bytes), pos_ + r0 * row_bytes);
        if (!stage) fail("out of memory for the read's staging buffer");
        std::string e = pread_fully(fd_, stage, size_t(n * row_bytes), pos_ + r0 * row_bytes);
        if (!e.empty()) fail(e);
        bad = bad || (item == 4 ? any_non_finite_f32(reinterpret_cast<const float*>(stage), n * d_)
                                : any_non_finite_16(reinterpret_cast<const uint16_t*>(stage), n * d_, mask));
        for (int64_t r = 0; r < n; ++r)
          copy_stream(reinterpret_cast<uint8_t*>(out_) + size_t(slots_[size_t(r0 + r)]) * size_t(row_bytes), stage + r * row_bytes, size_t(row_bytes));
      }
      _mm_sfence();
      non_finite_ = bad;
      return;
    }
    // Read and converted in chunks of about 128K elements (256 KiB of 16-bit data), so the staged
    // bytes are still in this core's L2 when converted: the file's bytes cross DRAM once.
    // Converted (and screened) in pieces that stay in L1: blocks of dst, or one row per slot.
    const int64_t block = slots_.empty() ? 8192 : d_;
    const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 17) / block) * block;
    bool bad = false;
    for (int64_t c0 = 0; c0 < count_; c0 += chunk) {
      const int64_t cn = std::min(chunk, count_ - c0);
      uint8_t* const stage = stage_for(size_t(std::min(chunk, count_)) * item, pos_ + c0 * int64_t(item));
      if (!stage) fail("out of memory for the read's staging buffer");
      std::string e = pread_fully(fd_, stage, size_t(cn) * item, pos_ + c0 * int64_t(item));
      if (!e.empty()) fail(e);
      for (int64_t b = 0; b < cn; b += block) {
        const int64_t n = std::min(block, cn - b);
        const int64_t at = c0 + b;  // element index in this job
        float* o = slots_.empty() ? out_ + at : out_ + int64_t(slots_[size_t(at / d_)]) * d_;
        if (item == 8) {
          const double* src = reinterpret_cast<const double*>(stage) + b;
          for (int64_t i = 0; i < n; ++i) o[i] = float(src[i]);
          bad = bad || any_non_finite_f32(o, n);
        } else if (dtype_ == "bfloat16") {
          // Screened on the staged 16-bit values (in cache), not by reading the output back.
          const uint16_t* src = reinterpret_cast<const uint16_t*>(stage) + b;
          bf16_to_f32_stream(o, src, n);
          bad = bad || any_non_finite_16(src, n, 0x7f80);
        } else {
          cpu::convert(o, DType::F32, stage + b * 2, dtype_ == "float16" ? DType::F16 : DType::BF16, n, nullptr);
          bad = bad || any_non_finite_f32(o, n);
        }
      }
    }
    _mm_sfence();
    non_finite_ = bad;
  }
};

// Queues `job` on the I/O threads; the Promise resolves to whether a value was non-finite. dst
// stays referenced until then.
// The work holds a HostUse of dst's memory: at a worker's teardown dst's finalizer can run while
// the job writes (see HostUse), and the work is destroyed on the I/O thread once it has run.
Napi::Promise queue_read(Napi::Env env, std::shared_ptr<ReadJob> job, Napi::TypedArray dst) {
  auto keep = std::make_shared<JsKeep>(env, std::initializer_list<Napi::Value>{dst});
  auto use = std::make_shared<HostUse>(dst);
  return queue_io_job(
      env, [job, use] { job->run(); },
      [job, keep](Napi::Env e) -> Napi::Value { return Napi::Boolean::New(e, job->non_finite_); });
}

Napi::Value read_rows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = int(get_int(info[0], "fd", 0, (int64_t(1) << 31) - 1));
  int64_t pos = get_int(info[1], "position", 0, (int64_t(1) << 53));
  std::string dtype = get_file_dtype(info[3]);
  if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    arg_error(ErrorCode::Arg, "dst", "a Float32Array", info[4]);
  Napi::Float32Array dst = info[4].As<Napi::Float32Array>();
  int64_t n = int64_t(dst.ElementLength());
  int64_t offset = get_int(info[5], "dstOffset", 0, n);
  int64_t count = get_int(info[2], "count", 0, n - offset);
  auto job = std::make_shared<ReadJob>();
  job->fd_ = fd;
  job->pos_ = pos;
  job->count_ = count;
  job->dtype_ = dtype;
  job->out_ = reinterpret_cast<float*>(typed_array_data(dst)) + offset;
  return queue_read(env, std::move(job), dst);
}

// readRowsToSlots(fd, position, rows, dIn, srcDtype, dst: Float32Array, slots: Uint32Array,
// slotFirst) -> Promise<boolean>: as readRows, for `rows` rows of dIn values, row r landing at
// dst[slots[slotFirst + r] * dIn, +dIn) (the mixing buffer's free slots).
Napi::Value read_rows_to_slots(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = int(get_int(info[0], "fd", 0, (int64_t(1) << 31) - 1));
  int64_t pos = get_int(info[1], "position", 0, (int64_t(1) << 53));
  int64_t d = get_int(info[3], "dIn", 1, int64_t(1) << 24);
  std::string dtype = get_file_dtype(info[4]);
  if (!info[5].IsTypedArray()) arg_error(ErrorCode::Arg, "dst", "a Float32Array or a Uint16Array", info[5]);
  const bool raw16 = info[5].As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array;
  if (!raw16 && info[5].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    arg_error(ErrorCode::Arg, "dst", "a Float32Array or a Uint16Array", info[5]);
  if (raw16 && dtype != "bfloat16" && dtype != "float16")
    arg_error(ErrorCode::Arg, "srcDtype", "'bfloat16' or 'float16' for a Uint16Array dst", info[4]);
  if (!info[6].IsTypedArray() || info[6].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    arg_error(ErrorCode::Arg, "slots", "a Uint32Array", info[6]);
  Napi::TypedArray dst = info[5].As<Napi::TypedArray>();
  Napi::Uint32Array slots = info[6].As<Napi::Uint32Array>();
  int64_t first = get_int(info[7], "slotFirst", 0, int64_t(slots.ElementLength()));
  int64_t rows = get_int(info[2], "rows", 0, int64_t(slots.ElementLength()) - first);
  const int64_t dst_rows = int64_t(dst.ElementLength()) / d;
  std::vector<uint32_t> mine(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t slot = slots[size_t(first + r)];
    if (int64_t(slot) >= dst_rows)
      throw Error(ErrorCode::Arg, fmt("readRowsToSlots: slot ", slot, " is past the ", dst_rows, " rows of dst"));
    mine[size_t(r)] = slot;
  }
  auto job = std::make_shared<ReadJob>();
  job->fd_ = fd;
  job->pos_ = pos;
  job->count_ = rows * d;
  job->dtype_ = dtype;
  job->out_ = reinterpret_cast<float*>(typed_array_data(dst));
  job->raw16_ = raw16;
  job->slots_ = std::move(mine);
  job->d_ = d;
  return queue_read(env, std::move(job), dst);
}

// gatherRows(src, slots: Uint32Array, first, count, dst: Float32Array, at, d[, srcDtype]) ->
// Promise: dst[at + j*d, +d) = src[slots[first + j]*d, +d) for j < count, as a job on the I/O
// threads (queue_io_job; the JS thread keeps serving I/O while rows are copied). src is a Float32Array, or a
// Uint16Array of srcDtype 'bfloat16' / 'float16' bits, converted on the way. The caller keeps src
// rows slots[first, +count) and dst[at, +count d) untouched until the Promise settles.
struct GatherJob {
  const uint8_t* src_ = nullptr;
  DType src_type_ = DType::F32;
  std::vector<uint32_t> rows_;
  float* dst_ = nullptr;
  int64_t d_ = 0;

  void run() {
    const size_t item = src_type_ == DType::F32 ? 4 : 2;
    const size_t row_bytes = size_t(d_) * item;
    // Rows sit at random places in the mixing buffer, so the hardware prefetchers cannot see the
    // next one coming: for 16-bit rows, every cache line of row j + kAhead is requested while row
    // j is converted, which keeps several rows' misses in flight (about 20% faster on Zen 4 for
    // 1.5 KiB rows). float32 rows go through memcpy, whose own streaming gains nothing from it.
    constexpr size_t kAhead = 3;
    const bool prefetch = item == 2;
    for (size_t j = 0; j < rows_.size(); ++j) {
      if (prefetch && j + kAhead < rows_.size()) {
        const uint8_t* next = src_ + size_t(rows_[j + kAhead]) * row_bytes;
        for (size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(next + b, 0, 3);
      }
      const uint8_t* from = src_ + size_t(rows_[j]) * size_t(d_) * item;
      float* to = dst_ + int64_t(j) * d_;
      if (src_type_ == DType::F32) std::memcpy(to, from, size_t(d_) * 4);
      else cpu::convert(to, DType::F32, from, src_type_, d_, nullptr);
    }
  }
};

Napi::Value gather_rows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) arg_error(ErrorCode::Arg, "src", "a Float32Array or a Uint16Array", info[0]);
  const napi_typedarray_type st = info[0].As<Napi::TypedArray>().TypedArrayType();
  if (st != napi_float32_array && st != napi_uint16_array)
    arg_error(ErrorCode::Arg, "src", "a Float32Array or a Uint16Array", info[0]);
  DType src_type = DType::F32;
  if (st == napi_uint16_array) {
    std::string dt = info[7].IsString() ? info[7].As<Napi::String>().Utf8Value() : "";
    if (dt != "bfloat16" && dt != "float16") arg_error(ErrorCode::Arg, "srcDtype", "'bfloat16' or 'float16' for a Uint16Array src", info[7]);
    src_type = dt == "bfloat16" ? DType::BF16 : DType::F16;
  }
  Napi::TypedArray src = info[0].As<Napi::TypedArray>();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    arg_error(ErrorCode::Arg, "slots", "a Uint32Array", info[1]);
  Napi::Uint32Array slots = info[1].As<Napi::Uint32Array>();
  int64_t ns = int64_t(slots.ElementLength());
  int64_t first = get_int(info[2], "first", 0, ns);
  int64_t count = get_int(info[3], "count", 0, ns - first);
  if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    arg_error(ErrorCode::Arg, "dst", "a Float32Array", info[4]);
  Napi::Float32Array dst = info[4].As<Napi::Float32Array>();
  int64_t d = get_int(info[6], "d", 1, int64_t(1) << 30);
  int64_t at = get_int(info[5], "at", 0, int64_t(dst.ElementLength()));
  if (at + count * d > int64_t(dst.ElementLength()))
    throw Error(ErrorCode::Shape, fmt("gatherRows: ", count, " rows of ", d, " at ", at, " overflow dst of length ", dst.ElementLength()));
  const int64_t src_rows = int64_t(src.ElementLength()) / d;
  std::vector<uint32_t> rows(static_cast<size_t>(count));
  for (int64_t j = 0; j < count; ++j) {
    uint32_t r = slots[size_t(first + j)];
    if (int64_t(r) >= src_rows) throw Error(ErrorCode::Arg, fmt("gatherRows: slot ", r, " is past the ", src_rows, " rows of src"));
    rows[size_t(j)] = r;
  }
  auto job = std::make_shared<GatherJob>();
  job->src_ = typed_array_data(src);
  job->src_type_ = src_type;
  job->rows_ = std::move(rows);
  job->dst_ = dst.Data() + at;
  job->d_ = d;
  auto keep = std::make_shared<JsKeep>(env, std::initializer_list<Napi::Value>{src, dst});
  auto uses = std::make_shared<std::pair<HostUse, HostUse>>(src, dst);  // as in queue_read
  return queue_io_job(env, [job, uses] { job->run(); }, [job, keep](Napi::Env e) -> Napi::Value { return e.Undefined(); });
}

// The blocks allocHost handed out that are still alive (start -> bytes reserved), so that
// discardHost acts only on memory it knows is a whole block of its own. Finalizers run on the JS
// thread, as do allocHost and discardHost; the mutex is for worker threads' environments (and for
// a finalizer that a HostUse deferred, which runs on an I/O thread). Never destroyed: such a
// finalizer may run after exit() has run the static destructors.
std::mutex g_host_mu;
std::unordered_map<void*, size_t>& g_host_blocks = *new std::unordered_map<void*, size_t>;

// allocHost(bytes): an ArrayBuffer of uninitialised native memory for row buffers that are
// written at random (the mixing buffer, batches): 2 MiB aligned and marked for transparent huge
// pages when large, so filling it costs one page fault per 2 MiB instead of per 4 KiB and random
// rows rarely miss the TLB. V8 counts the external backing store's bytes itself. A released
// buffer that may still be reused (lib/data/memory.ts's spare pool) gives its pages back with
// discardHost rather than waiting for the collector.
Napi::Value alloc_host(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t bytes = get_int(info[0], "bytes", 1, int64_t(1) << 40);
  const size_t huge = size_t(2) << 20;
  const size_t align = size_t(bytes) >= huge ? huge : 64;
  const size_t rounded = (size_t(bytes) + align - 1) / align * align;
  void* p = aligned_malloc(align, rounded);
  if (p == nullptr)
    throw Error(ErrorCode::Memory, fmt("could not allocate ", bytes, " bytes of host memory"));
  if (align == huge) sk::advise_huge_pages(p, rounded);  // a hint; failure is harmless
  {
    std::lock_guard<std::mutex> lock(g_host_mu);
    g_host_blocks[p] = rounded;
  }
  napi_value ab = external_arraybuffer(
      env, p, size_t(bytes),
      [](napi_env, void* data, void*) {
        {
          std::lock_guard<std::mutex> lock(g_host_mu);
          g_host_blocks.erase(data);
        }
        aligned_free(data);
      },
      nullptr);
  if (ab == nullptr) {  // no external buffer here (a V8 sandbox, or over Node 20's 4 GiB limit): a plain one
    {
      std::lock_guard<std::mutex> lock(g_host_mu);
      g_host_blocks.erase(p);
    }
    aligned_free(p);
    return Napi::ArrayBuffer::New(env, size_t(bytes));
  }
  return Napi::Value(env, ab);
}

// discardHost(buffer: ArrayBuffer) -> boolean: gives the physical pages of a block from allocHost
// back to the system (madvise MADV_DONTNEED) while the buffer stays valid: its contents read as
// zeros afterwards, and writing to it faults pages in again. For buffers nobody reads any more but
// that may be reused. False (and nothing done) for any other buffer, or where the system lacks it.
Napi::Value discard_host(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) arg_error(ErrorCode::Arg, "buffer", "an ArrayBuffer from allocHost", info[0]);
  void* p = info[0].As<Napi::ArrayBuffer>().Data();
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(g_host_mu);
    auto it = g_host_blocks.find(p);
    if (it != g_host_blocks.end()) bytes = it->second;
  }
  bool done = false;
#if defined(__linux__) && defined(MADV_DONTNEED)
  // Only page-aligned blocks (the 2 MiB aligned large ones) are whole pages of their own.
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  if (bytes > 0 && page > 0 && reinterpret_cast<uintptr_t>(p) % page == 0 && bytes % page == 0)
    done = madvise(p, bytes, MADV_DONTNEED) == 0;
#endif
  return Napi::Boolean::New(env, done);
}

// adviseHugePages(buffer: ArrayBuffer) -> boolean: marks the whole 2 MiB pages inside the buffer's
// memory for transparent huge pages (madvise MADV_HUGEPAGE), so that the first write to a part
// with no memory behind it yet faults once per 2 MiB instead of once per 4 KiB. For short-lived
// batch arrays that V8 owns and frees itself (allocHost's own blocks go back only through a
// finalizer that runs later). The mark stays on the range after V8 frees the buffer: when malloc
// hands that range out again in small blocks, a 2 MiB page there may hold little data (peak RSS
// in bench read was the same with and without). False where nothing was marked (under 2 MiB of
// whole pages inside, or no such advice on this system).
Napi::Value advise_huge_pages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) arg_error(ErrorCode::Arg, "buffer", "an ArrayBuffer", info[0]);
  auto ab = info[0].As<Napi::ArrayBuffer>();
  return Napi::Boolean::New(env, sk::advise_huge_pages(ab.Data(), ab.ByteLength()));
}

// lockFile(fd) -> 'locked' | 'busy' | 'unsupported': takes an exclusive advisory lock (flock) on
// the open file fd without waiting. 'busy' when another open file description holds it (another
// process, or another open of the file in this one); 'unsupported' where the file system has no
// such locks. The lock lasts until fd is closed (the system also drops it when the process dies,
// however it dies, so a killed run never leaves a stale lock behind).
Napi::Value lock_file(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = int(get_int(info[0], "fd", 0, INT32_MAX));
  int rc;
  do rc = flock(fd, LOCK_EX | LOCK_NB);
  while (rc != 0 && errno == EINTR);
  if (rc == 0) return Napi::String::New(env, "locked");
  const int e = errno;
  if (e == EWOULDBLOCK) return Napi::String::New(env, "busy");
  if (e == ENOLCK || e == EOPNOTSUPP || e == EINVAL) return Napi::String::New(env, "unsupported");
  throw Error(ErrorCode::Arg, fmt("lockFile: fd ", fd, " cannot be locked: ", std::strerror(e)));
}

}  // namespace

void register_io(Napi::Env env, Napi::Object exports) {
  exports.Set("readRows", Napi::Function::New<guarded<read_rows>>(env, "readRows"));
  exports.Set("allocHost", Napi::Function::New<guarded<alloc_host>>(env, "allocHost"));
  exports.Set("discardHost", Napi::Function::New<guarded<discard_host>>(env, "discardHost"));
  exports.Set("adviseHugePages", Napi::Function::New<guarded<advise_huge_pages>>(env, "adviseHugePages"));
  exports.Set("gatherRows", Napi::Function::New<guarded<gather_rows>>(env, "gatherRows"));
  exports.Set("lockFile", Napi::Function::New<guarded<lock_file>>(env, "lockFile"));
  exports.Set("readRowsToSlots", Napi::Function::New<guarded<read_rows_to_slots>>(env, "readRowsToSlots"));
}

}  // namespace sk::napi
