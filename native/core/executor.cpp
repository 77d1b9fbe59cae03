#include "executor.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SK_EXEC_PAUSE() _mm_pause()
#else
#define SK_EXEC_PAUSE() ((void)0)
#endif

namespace sk {

namespace {

class Executor {
 public:
  Executor() : thread_([this] { loop(); }) { thread_.detach(); }

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
        cv_.wait(lock, [&] { return !queue_.empty(); });
        pending_.fetch_sub(1, std::memory_order_relaxed);
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
      std::lock_guard<std::mutex> lock(mu_);
      ++completed_;
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  uint64_t submitted_ = 0, completed_ = 0;
  std::atomic<int64_t> pending_{0};  // queued tasks, readable without the lock
  std::thread thread_;
};

// Created on first use and never destroyed: the thread serves every env for the life of the
// process (an addon is never unloaded while worker threads may still use it).
Executor& executor() {
  static Executor* e = new Executor();
  return *e;
}

}  // namespace

void executor_submit(std::function<void()> task) { executor().submit(std::move(task)); }
ExecutorStats executor_stats() { return executor().stats(); }

}  // namespace sk
