// Promise-returning ops: the JS thread validates and enqueues; the executor thread runs the
// work; a per-env thread-safe function brings the result back to the JS thread, where the
// Promise settles. Jobs hold only native data (never a napi handle), so an env that shuts
// down while its jobs are queued loses nothing but the settlement.
#pragma once
#include <napi.h>

#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

namespace sk::napi {

// Runs on the JS thread when the work succeeded; returns the value the Promise resolves to.
using Complete = std::function<Napi::Value(Napi::Env)>;

// Queues `work` (executor thread); then `complete` (JS thread). An exception from either
// rejects the Promise with a coded Error.
Napi::Promise queue_job(Napi::Env env, std::function<void()> work, Complete complete);
// As queue_job, but the work runs on saekit's I/O threads (one per core; many at once, in no
// particular order) instead of the executor: for file reads and row copies that touch no model.
Napi::Promise queue_io_job(Napi::Env env, std::function<void()> work, Complete complete);

// Keeps JS values (the arrays an I/O job reads or writes) alive until it is destroyed, which a
// job's `complete` closure does on the JS thread once the job has settled. Destroyed on another
// thread (a job dropped at env teardown), it leaves the references to the env's own cleanup.
class JsKeep {
 public:
  JsKeep(Napi::Env env, std::initializer_list<Napi::Value> values);
  ~JsKeep();
  JsKeep(const JsKeep&) = delete;
  JsKeep& operator=(const JsKeep&) = delete;

 private:
  napi_env env_;
  std::thread::id owner_;
  std::vector<napi_ref> refs_;
};

// Queues work whose result nobody awaits (e.g. the fill behind randn). It must not fail for
// validated input; an unexpected failure is reported on process 'warning'.
void queue_detached(Napi::Env env, std::function<void()> work);

struct DispatchState;
// Opens the per-env dispatcher (module init) and closes it (env teardown).
std::shared_ptr<DispatchState> open_dispatcher(Napi::Env env);
void close_dispatcher(const std::shared_ptr<DispatchState>& state);
// Number of this env's jobs still in flight.
int64_t pending_jobs(Napi::Env env);

// A JS Error from a native exception, with its `code` property.
Napi::Error error_from_exception(Napi::Env env, std::exception_ptr e);

}  // namespace sk::napi

namespace sk::napi {

// Runs a binding body, turning any native exception into a coded JS Error.
template <typename F>
Napi::Value guard(Napi::Env env, F&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw error_from_exception(env, std::current_exception());
  }
}

// A guarded free-function binding: Napi::Function::New<guarded<fn>>(env, "name").
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return F(info); });
}

}  // namespace sk::napi
