{
  "variables": {
    "saekit_common_cflags": ["-O3", "-std=c++17", "-fvisibility=hidden", "-Wall", "-Wno-unused-function", "-fno-math-errno"],
    "saekit_defines": [
      "NAPI_VERSION=9",
      "NODE_ADDON_API_DISABLE_DEPRECATED",
      "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
      "<!@(node native/tools/blas-config.cjs defines)"
    ]
  },
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
    "defines": ["<@(saekit_defines)"],
    "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except_all"]
  },
  "targets": [
    {
      "target_name": "saekit_avx2",
      "type": "static_library",
      "sources": ["<!@(node native/tools/sources.cjs avx2)"],
      "cflags_cc": ["<@(saekit_common_cflags)", "-fPIC", "-mavx2", "-mfma", "-mf16c"]
    },
    {
      "target_name": "saekit_avx512",
      "type": "static_library",
      "sources": ["<!@(node native/tools/sources.cjs avx512)"],
      "cflags_cc": ["<@(saekit_common_cflags)", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                    "-mavx2", "-mfma", "-mf16c"]
    },
    {
      "target_name": "saekit",
      "sources": ["<!@(node native/tools/sources.cjs base)"],
      "dependencies": ["saekit_avx2", "saekit_avx512"],
      "cflags_cc": ["<@(saekit_common_cflags)", "-msse4.2", "-mpopcnt", "<!@(node native/tools/blas-config.cjs cflags)"],
      "libraries": ["<!@(node native/tools/blas-config.cjs libs)", "-ldl", "-pthread"],
      "ldflags": ["-pthread"]
    }
  ]
}
