#include "args.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace sk::napi {

namespace {

// The shortest decimal that reads back as `d`, printed as JavaScript prints numbers
// (Number.prototype.toString: plain digits from 1e-6 up to below 1e21, else d.ddde+N): a limit
// like 2^50 and a value just past it must not print alike, and 1e6 prints as 1000000.
std::string shortest(double d) {
  if (d == 0) return "0";  // -0 too, as JavaScript prints it
  char buf[40];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  // buf is [-]D[.DDD]e(+|-)XX: its digits and the decimal exponent n of 0.DDDD x 10^n.
  const char* s = buf;
  const bool negative = *s == '-';
  if (negative) ++s;
  std::string digits;
  for (; *s != 'e'; ++s)
    if (*s != '.') digits += *s;
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int k = int(digits.size());
  const int n = std::atoi(s + 1) + 1;
  std::string out;
  if (k <= n && n <= 21) {
    out = digits + std::string(size_t(n - k), '0');
  } else if (0 < n && n <= 21) {
    out = digits.substr(0, size_t(n)) + "." + digits.substr(size_t(n));
  } else if (-6 < n && n <= 0) {
    out = "0." + std::string(size_t(-n), '0') + digits;
  } else {
    out = digits.substr(0, 1) + (k > 1 ? "." + digits.substr(1) : "") + (n - 1 >= 0 ? "e+" : "e-") +
          std::to_string(std::abs(n - 1));
  }
  return negative ? "-" + out : out;
}

}  // namespace

std::string describe(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    std::string s = std::isnan(d) ? "NaN" : (std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : shortest(d));
    return s + " (number)";
  }
  if (v.IsBoolean()) return fmt(v.As<Napi::Boolean>().Value() ? "true" : "false", " (boolean)");
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    if (s.size() > 40) s = s.substr(0, 40) + "...";
    return "'" + s + "' (string)";
  }
  if (v.IsBigInt()) return "a bigint";
  if (v.IsTypedArray()) return fmt("a typed array of length ", v.As<Napi::TypedArray>().ElementLength());
  if (v.IsArray()) return fmt("an array of length ", v.As<Napi::Array>().Length());
  if (v.IsFunction()) return "a function";
  if (v.IsSymbol()) return "a symbol";
  return "an object";
}

void arg_error(ErrorCode code, const std::string& name, const std::string& expected, const Napi::Value& actual) {
  throw Error(code, fmt("Expected ", expected, " for ", name, " but received ", describe(actual)));
}

int64_t get_int(const Napi::Value& v, const std::string& name, int64_t lo, int64_t hi) {
  std::string expected = fmt("integer between ", lo, " and ", hi);
  if (!v.IsNumber()) arg_error(ErrorCode::Arg, name, expected, v);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || d < double(lo) || d > double(hi)) arg_error(ErrorCode::Arg, name, expected, v);
  return int64_t(d);
}

double get_double(const Napi::Value& v, const std::string& name, double lo, double hi) {
  std::string expected = fmt("finite number between ", shortest(lo), " and ", shortest(hi));
  if (!v.IsNumber()) arg_error(ErrorCode::Arg, name, expected, v);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d < lo || d > hi) arg_error(ErrorCode::Arg, name, expected, v);
  return d;
}

bool get_bool(const Napi::Value& v, const std::string& name) {
  if (!v.IsBoolean()) arg_error(ErrorCode::Arg, name, "boolean", v);
  return v.As<Napi::Boolean>().Value();
}

uint64_t get_u64(const Napi::Value& v, const std::string& name) {
  const char* expected = "non-negative safe integer or bigint below 2^64";
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) arg_error(ErrorCode::Arg, name, expected, v);
    return x;
  }
  if (!v.IsNumber()) arg_error(ErrorCode::Arg, name, expected, v);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || d < 0 || d > 9007199254740991.0) arg_error(ErrorCode::Arg, name, expected, v);
  return uint64_t(d);
}

DType get_dtype(const Napi::Value& v, const std::string& name) {
  DType t;
  if (!v.IsString() || !dtype_from_name(v.As<Napi::String>().Utf8Value(), &t))
    arg_error(ErrorCode::DType, name, "one of: float32, bfloat16, float16, int32", v);
  return t;
}

std::vector<int64_t> get_shape(const Napi::Value& v, const std::string& name) {
  if (!v.IsArray()) arg_error(ErrorCode::Shape, name, "an array of non-negative integers", v);
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > 8) arg_error(ErrorCode::Shape, name, "at most 8 dimensions", v);
  std::vector<int64_t> shape;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value d = a.Get(i);
    const double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(x >= 0 && x <= double(int64_t(1) << 50) && std::floor(x) == x))
      arg_error(ErrorCode::Shape, fmt(name, "[", i, "]"), "non-negative integer at most 2^50", d);
    shape.push_back(int64_t(x));
  }
  return shape;
}

std::string get_string(const Napi::Value& v, const std::string& name) {
  if (!v.IsString()) arg_error(ErrorCode::Arg, name, "string", v);
  return v.As<Napi::String>().Utf8Value();
}

napi_typedarray_type typedarray_type_for(DType t) {
  switch (t) {
    case DType::F32: return napi_float32_array;
    case DType::BF16: return napi_uint16_array;
    case DType::F16: return napi_uint16_array;
    case DType::I32: return napi_int32_array;
  }
  return napi_float32_array;
}

uint8_t* typed_array_data(const Napi::TypedArray& a) {
  void* data = nullptr;
  if (napi_get_typedarray_info(a.Env(), a, nullptr, nullptr, &data, nullptr, nullptr) != napi_ok)
    throw Error(ErrorCode::Arg, "could not read a TypedArray's memory");
  return static_cast<uint8_t*>(data);
}

}  // namespace sk::napi
