// Positioned reads of activation rows off the JS thread (saekit's I/O threads, napi/async.cpp
// queue_io_job, not the compute executor, so I/O never waits behind a training step): read, convert to float32 and screen for
// non-finite values in one job, several jobs in flight.
#pragma once
#include <napi.h>

namespace sk::napi {

void register_io(Napi::Env env, Napi::Object exports);

}  // namespace sk::napi
