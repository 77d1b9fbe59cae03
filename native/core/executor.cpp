#include "executor.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <stdlib.h>  // on_exit (glibc)
#include <deque>
#include <mutex>
#include <thread>

#include <dlfcn.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SK_EXEC_PAUSE() _mm_pause()
#else
#define SK_EXEC_PAUSE() ((void)0)
#endif

namespace sk {

namespace {

std::atomic<int> g_exit_code{1};

class Executor {
 public:
  Executor() : thread_([this] { loop(); }) { thread_.detach(); }

  // At process exit (atexit, so before the shared libraries' destructors): no queued op starts
  // any more, and the running one gets `limit` to finish. An op left running would deadlock the
  // exit: OpenBLAS's destructor joins its worker threads while one of them waits inside that op's
  // GEMM (a process.exit() or an uncaught error during a step hung forever). If the op does not
  // finish in time the process ends at once (_exit) with the status it was exiting with.
  void drain_at_exit(std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> lock(mu_);
    exiting_ = true;
    if (!idle_cv_.wait_for(lock, limit, [&] { return !running_; })) _exit(g_exit_code.load());
  }

  void submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
      ++submitted_;
      pending_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_one();
  }

  ExecutorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {submitted_, completed_};
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      // Poll briefly before sleeping: back-to-back ops (a training loop) then skip the wake-up
      // latency of the condition variable, which is a millisecond or more on some VMs.
      auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(300);
      while (pending_.load(std::memory_order_acquire) == 0 && std::chrono::steady_clock::now() < until) {
        for (int i = 0; i < 64; ++i) SK_EXEC_PAUSE();
      }
      {
        std::unique_lock<std::mutex> lock(mu_);
        // Once the process is exiting, queued ops never start (the thread sleeps for good).
        cv_.wait(lock, [&] { return !queue_.empty() && !exiting_; });
        pending_.fetch_sub(1, std::memory_order_relaxed);
        task = std::move(queue_.front());
        queue_.pop_front();
        running_ = true;
      }
      task();
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++completed_;
        running_ = false;
      }
      idle_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;  // an op finished (drain_at_exit waits on it)
  bool running_ = false;             // an op is running (under mu_)
  bool exiting_ = false;             // the process is exiting: start no more ops (under mu_)
  std::deque<std::function<void()>> queue_;
  uint64_t submitted_ = 0, completed_ = 0;
  std::atomic<int64_t> pending_{0};  // queued tasks, readable without the lock
  std::thread thread_;
};

}  // namespace

void pin_library() {
  static const bool pinned = [] {
    Dl_info self{};
    return dladdr(reinterpret_cast<void*>(&executor_submit), &self) != 0 && self.dli_fname != nullptr &&
           dlopen(self.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE) != nullptr;
  }();
  (void)pinned;
}

namespace {

// Created on first use and never destroyed: the thread serves every env for the life of the
// process (an addon is never unloaded while worker threads may still use it).
Executor& executor() {
  static Executor* e = [] {
    // Never unloaded (pin_library): unmapping would take the executor thread's code and the exit
    // handler below, and OpenBLAS's destructor hung joining its threads there.
    pin_library();
    auto* ex = new Executor();
    // Registered after the addon and its libraries were loaded, so it runs before their
    // destructors (OpenBLAS's among them). One second covers an op of a training loop. glibc's
    // on_exit passes the status exit() was called with: an exit cut short then keeps it even
    // when no JS 'exit' listener reported it (a main thread that never used saekit while its
    // workers did ended with status 1).
    on_exit(
        [](int status, void*) {
          g_exit_code.store(status);
          executor().drain_at_exit(std::chrono::milliseconds(1000));
        },
        nullptr);
    return ex;
  }();
  return *e;
}

}  // namespace

void executor_submit(std::function<void()> task) { executor().submit(std::move(task)); }
ExecutorStats executor_stats() { return executor().stats(); }
void executor_note_exit_code(int code) { g_exit_code.store(code); }

}  // namespace sk
