#include "executor.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

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
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
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
