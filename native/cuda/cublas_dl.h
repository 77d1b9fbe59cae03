// cuBLAS, loaded at run time (dlopen) so that the plugin builds and links without it. Only the
// few entry points saekit uses are resolved, through our own declarations of their C types
// (values from the cuBLAS documentation; they are part of cuBLAS's stable ABI).
#pragma once
#include <cstdint>
#include <string>

namespace sk::cuda {

typedef struct cublasContext* cublasHandle_t;
typedef int cublasStatus_t;  // CUBLAS_STATUS_SUCCESS = 0

enum : int { kOpN = 0, kOpT = 1 };                 // cublasOperation_t
enum : int { kR32F = 0, kR16BF = 14 };             // cudaDataType (library_types.h)
enum : int { kCompute32F = 68, kCompute32FFastTF32 = 77 };  // cublasComputeType_t
enum : int { kGemmDefault = -1 };                  // cublasGemmAlgo_t

struct Cublas {
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, void* stream);
  cublasStatus_t (*get_version)(cublasHandle_t, int*);
  cublasStatus_t (*sgemm)(cublasHandle_t, int transa, int transb, int m, int n, int k, const float* alpha,
                          const float* A, int lda, const float* B, int ldb, const float* beta, float* C, int ldc);
  cublasStatus_t (*gemm_ex)(cublasHandle_t, int transa, int transb, int m, int n, int k, const void* alpha,
                            const void* A, int Atype, int lda, const void* B, int Btype, int ldb, const void* beta,
                            void* C, int Ctype, int ldc, int compute_type, int algo);
  std::string path;  // the library that was loaded
};

// The loaded library, or null with `why` filled (every name tried and dlerror's answer).
// Loaded once per process; SAEKIT_CUBLAS may name the library file to try first.
const Cublas* cublas(std::string* why);

// "CUBLAS_STATUS_..." for a status code.
const char* cublas_status_name(cublasStatus_t s);

}  // namespace sk::cuda
