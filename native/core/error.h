// saekit native errors. Native code never aborts: every failed check throws sk::Error,
// which the N-API layer turns into a JS Error carrying `code` (ERR_SAEKIT_*).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <sstream>

namespace sk {

enum class ErrorCode {
  Arg,       // ERR_SAEKIT_ARG: a bad argument value or type
  Shape,     // ERR_SAEKIT_SHAPE: shape or length mismatch
  DType,     // ERR_SAEKIT_DTYPE: unsupported or mismatched dtype
  Disposed,  // ERR_SAEKIT_DISPOSED: use of a disposed object
  Device,    // ERR_SAEKIT_DEVICE: backend/device not available
  Format,    // ERR_SAEKIT_FORMAT: malformed file
  Memory,    // ERR_SAEKIT_MEMORY: allocation failed
  NonFinite, // ERR_SAEKIT_NONFINITE: NaN or infinity in an input, or a loss that became non-finite
  Internal,  // ERR_SAEKIT_INTERNAL: a bug in saekit
};

const char* error_code_name(ErrorCode code);

// The text of the NUL-terminated C string s (at most n bytes read) without a UTF-8 sequence cut
// at its end: messages from a plugin come through fixed-size buffers filled by snprintf, which
// can cut a character in two, and JS would show the piece as U+FFFD.
std::string utf8_whole(const char* s, size_t n);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  // An error about one row of an input (its index, >= 0): JS sees it as the error's `row`.
  Error(ErrorCode code, const std::string& message, int64_t row) : std::runtime_error(message), code_(code), row_(row) {}
  ErrorCode code() const { return code_; }
  int64_t row() const { return row_; }
 private:
  ErrorCode code_;
  int64_t row_ = -1;
};

// Builds a message from stream pieces: sk::fmt("got ", n, " rows").
template <typename... Args>
std::string fmt(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// How JavaScript prints a non-finite number (NaN, Infinity, -Infinity), for error messages that
// name a bad value: C++ streams would print nan / inf.
inline const char* js_nonfinite(double v) { return v != v ? "NaN" : v > 0 ? "Infinity" : "-Infinity"; }

}  // namespace sk

// SK_CHECK(cond, ErrorCode::Shape, "W_dec has ", n, " rows, expected ", m)
#define SK_CHECK(cond, code, ...)                                   \
  do {                                                              \
    if (!(cond)) throw ::sk::Error(::sk::code, ::sk::fmt(__VA_ARGS__)); \
  } while (0)
