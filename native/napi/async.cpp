#include "async.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>

#include <sched.h>

#include "../core/error.h"
#include "../core/executor.h"
#include "env_data.h"

namespace sk::napi {

struct Job;
namespace {
void call_js(Napi::Env env, Napi::Function, std::nullptr_t*, Job* job);
}
using Tsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, Job, call_js>;

// Shared between the env (JS thread) and the executor; outlives both through shared_ptr.
struct DispatchState {
  std::mutex mu;
  // tsfn must not be touched any more (the env is going away): drop results instead of posting
  // them. Set by whichever comes first of the tsfn's finalizer, a napi_closing answer and
  // close_dispatcher.
  bool closed = false;
  Tsfn tsfn;
  int64_t pending = 0;  // JS thread only
  // I/O jobs of this env running now (they write into the env's own arrays): env teardown waits
  // for them (close_dispatcher) before the env's memory may go; queued ones are dropped.
  int io_running = 0;
  std::condition_variable io_idle;
};

struct Job {
  std::shared_ptr<DispatchState> state;
  std::function<void()> work;
  Complete complete;
  napi_deferred deferred = nullptr;  // null for detached jobs
  std::exception_ptr error;
};

namespace {

std::shared_ptr<DispatchState> state_of(Napi::Env env) { return env_data(env).dispatch; }

void settle(Napi::Env env, Job* job) {
  Napi::HandleScope scope(env);
  napi_value value = nullptr;
  bool ok = !job->error;
  if (ok && job->complete) {
    try {
      value = job->complete(env);
    } catch (...) {
      job->error = std::current_exception();
      ok = false;
    }
  }
  if (job->deferred == nullptr) {
    if (!ok) {
      // Surface it without throwing into unrelated code: a process.emitWarning that was replaced
      // (or throws) must not make this callback throw.
      try {
        Napi::Error err = error_from_exception(env, job->error);
        Napi::Value process = env.Global().Get("process");
        Napi::Value emit = process.IsObject() ? process.As<Napi::Object>().Get("emitWarning") : env.Undefined();
        if (emit.IsFunction()) emit.As<Napi::Function>().Call(process, {err.Value()});
      } catch (const Napi::Error&) {
      }
    }
    return;
  }
  if (ok) {
    napi_resolve_deferred(env, job->deferred, value ? value : env.Undefined());
    return;
  }
  // The Promise settles whatever happens while its Error is made: nothing may throw past here
  // (an exception out of this thread-safe-function callback leaves the Promise pending forever).
  napi_value reason;
  try {
    reason = error_from_exception(env, job->error).Value();
  } catch (const Napi::Error& e) {
    reason = e.Value();
  }
  napi_reject_deferred(env, job->deferred, reason);
}

void call_js(Napi::Env env, Napi::Function, std::nullptr_t*, Job* job) {
  std::unique_ptr<Job> owned(job);
  if (env == nullptr) return;  // the env is shutting down
  auto& st = *owned->state;
  if (--st.pending == 0) st.tsfn.Unref(env);
  settle(env, owned.get());
}

void run_on_executor(Job* job) {
  try {
    job->work();
  } catch (...) {
    job->error = std::current_exception();
  }
  job->work = nullptr;  // release captured inputs on this thread, before posting back
  std::shared_ptr<DispatchState> st = job->state;
  std::lock_guard<std::mutex> lock(st->mu);
  if (st->closed) {
    delete job;
    return;
  }
  napi_status s = st->tsfn.NonBlockingCall(job);
  if (s != napi_ok) {
    // napi_closing: the env is shutting down and this call gave up our reference to the tsfn;
    // Node may free it at any moment, so nothing may call or release it again.
    if (s == napi_closing) st->closed = true;
    delete job;
  }
}

// Counts a job as in flight for its env (the dispatcher keeps the loop alive meanwhile).
void hold(Napi::Env env, Job* job) {
  auto& st = *job->state;
  if (st.pending++ == 0) st.tsfn.Ref(env);
}

void enqueue(Napi::Env env, Job* job) {
  hold(env, job);
  executor_submit([job] { run_on_executor(job); });
}

// A job whose Promise is written to `promise`. The C API gives us the raw napi_deferred to keep in
// the job (Napi::Promise::Deferred cannot be moved out of its wrapper).
Job* promised_job(Napi::Env env, std::function<void()> work, Complete complete, napi_value* promise) {
  auto* job = new Job{state_of(env), std::move(work), std::move(complete), nullptr, nullptr};
  if (napi_create_promise(env, &job->deferred, promise) != napi_ok) {
    delete job;
    throw Napi::Error::New(env, "saekit: could not create a Promise");
  }
  return job;
}

// Threads for file reads and row gathers (lib/data): one per core the process may run on, at most
// 8 (SAEKIT_IO_THREADS overrides, 1..64), started on first use and never stopped (the pool is
// leaked on purpose: no destructor can run while a thread still waits on its queue). Jobs run
// in FIFO order as threads free up. libuv's pool (4 threads by default) time-sliced the reads of
// a 2-core machine against each other: float32 passes ran 5-25% slower there (bfloat16 3-10%)
// than with one thread per core.
class IoPool {
 public:
  IoPool() {
    int n = 0;
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
#endif
    if (n <= 0) n = int(std::thread::hardware_concurrency());
    n = std::clamp(n, 1, 8);
    if (const char* env = std::getenv("SAEKIT_IO_THREADS")) {
      char* end = nullptr;
      const long v = std::strtol(env, &end, 10);
      // Digits only, as the JS check that warns about ignored values ("4x" or " 4" are ignored).
      if (env[0] >= '0' && env[0] <= '9' && *end == '\0' && v >= 1 && v <= 64) n = int(v);
    }
    for (int i = 0; i < n; ++i) std::thread([this] { loop(); }).detach();
  }

  void submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
};

IoPool& io_pool() {
  static IoPool* pool = new IoPool();  // never destroyed (see IoPool)
  return *pool;
}

}  // namespace

Napi::Promise queue_io_job(Napi::Env env, std::function<void()> work, Complete complete) {
  napi_value p;
  Job* job = promised_job(env, std::move(work), std::move(complete), &p);
  hold(env, job);
  io_pool().submit([job] {
    std::shared_ptr<DispatchState> st = job->state;
    {
      std::lock_guard<std::mutex> lock(st->mu);
      if (st->closed) {  // the env is going away: its arrays may be freed, nobody awaits the result
        delete job;
        return;
      }
      ++st->io_running;
    }
    run_on_executor(job);
    std::lock_guard<std::mutex> lock(st->mu);
    if (--st->io_running == 0) st->io_idle.notify_all();
  });
  return Napi::Promise(env, p);
}

JsKeep::JsKeep(Napi::Env env, std::initializer_list<Napi::Value> values) : env_(env), owner_(std::this_thread::get_id()) {
  for (const Napi::Value& v : values) {
    napi_ref r = nullptr;
    if (napi_create_reference(env, v, 1, &r) != napi_ok) {
      for (napi_ref done : refs_) napi_delete_reference(env_, done);
      throw Napi::Error::New(env, "saekit: could not reference an argument");
    }
    refs_.push_back(r);
  }
}

JsKeep::~JsKeep() {
  if (std::this_thread::get_id() != owner_) return;  // env teardown (a dropped job): the env frees them
  for (napi_ref r : refs_) napi_delete_reference(env_, r);
}

std::shared_ptr<DispatchState> open_dispatcher(Napi::Env env) {
  auto state = std::make_shared<DispatchState>();
  // At env teardown Node (20.x does) closes and frees the tsfn in its own cleanup hook, whatever
  // thread count we still hold, and that can come before free_env_data runs close_dispatcher (it
  // did for a worker terminated with thousands of ops in flight). A Release there, or a
  // NonBlockingCall from the executor in between, then works on freed memory (the process
  // aborted in uv_mutex_lock). The finalizer runs on the JS thread just before Node frees the
  // tsfn: from then on nothing touches it. (A Node that keeps the tsfn until its thread count
  // drops keeps this one, a few hundred bytes per env, since it is then never released.)
  auto* keep = new std::shared_ptr<DispatchState>(state);
  auto finalize = [](Napi::Env, std::shared_ptr<DispatchState>* k, std::nullptr_t*) {
    {
      std::lock_guard<std::mutex> lock((*k)->mu);
      (*k)->closed = true;
    }
    delete k;
  };
  try {
    state->tsfn = Tsfn::New(env, "saekit", 0, 1, nullptr, finalize, keep);
  } catch (...) {
    delete keep;
    throw;
  }
  state->tsfn.Unref(env);  // an idle dispatcher must not keep the process alive
  return state;
}

void close_dispatcher(const std::shared_ptr<DispatchState>& state) {
  std::unique_lock<std::mutex> lock(state->mu);
  // Already closed: finalized by Node (or released by a napi_closing call).
  if (!state->closed) {
    state->closed = true;
    state->tsfn.Release();
  }
  // I/O jobs write into this env's arrays: none may still run when its memory goes (a read takes
  // about a millisecond; queued ones see `closed` and never start).
  state->io_idle.wait(lock, [&] { return state->io_running == 0; });
}

int64_t pending_jobs(Napi::Env env) { return state_of(env)->pending; }

Napi::Promise queue_job(Napi::Env env, std::function<void()> work, Complete complete) {
  napi_value p;
  enqueue(env, promised_job(env, std::move(work), std::move(complete), &p));
  return Napi::Promise(env, p);
}

void queue_detached(Napi::Env env, std::function<void()> work) {
  auto* job = new Job{state_of(env), std::move(work), nullptr, nullptr, nullptr};
  enqueue(env, job);
}

Napi::Error error_from_exception(Napi::Env env, std::exception_ptr e) {
  std::string code = "ERR_SAEKIT_INTERNAL", message = "unknown native error";
  int64_t row = -1;
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    code = error_code_name(err.code());
    message = err.what();
    row = err.row();
  } catch (const Napi::Error& err) {
    return err;
  } catch (const std::bad_alloc&) {
    code = "ERR_SAEKIT_MEMORY";
    message = "out of memory";
  } catch (const std::exception& err) {
    message = err.what();
  } catch (...) {
  }
  Napi::Error error = Napi::Error::New(env, message);
  // Defined, not assigned: an assignment would run a setter for `code` or `row` on Error.prototype
  // or Object.prototype (user code, which may throw, here or in a thread-safe-function callback).
  Napi::Object o = error.Value();
  o.DefineProperty(Napi::PropertyDescriptor::Value("code", Napi::String::New(env, code), napi_default_jsproperty));
  if (row >= 0) o.DefineProperty(Napi::PropertyDescriptor::Value("row", Napi::Number::New(env, double(row)), napi_default_jsproperty));
  return error;
}

}  // namespace sk::napi
