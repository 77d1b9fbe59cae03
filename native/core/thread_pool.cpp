#include "thread_pool.h"

#include <algorithm>

namespace sk {

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

ThreadPool::ThreadPool(int threads) : size_(std::max(1, threads)) {
  threads_.reserve(size_ - 1);
  for (int i = 1; i < size_; ++i) threads_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::worker_main(int) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    // Take tasks until none are left; tasks are claimed under the lock (they are coarse).
    while (next_task_ < tasks_) {
      int task = next_task_++;
      const auto* fn = fn_;
      lock.unlock();
      try {
        (*fn)(task);
      } catch (...) {
        lock.lock();
        if (!error_) error_ = std::current_exception();
        lock.unlock();
      }
      lock.lock();
      if (--active_ == 0) done_cv_.notify_one();
    }
  }
}

void ThreadPool::run(int tasks, const std::function<void(int)>& fn) {
  if (tasks <= 0) return;
  if (size_ == 1 || tasks == 1) {
    for (int t = 0; t < tasks; ++t) fn(t);
    return;
  }
  std::unique_lock<std::mutex> lock(mu_);
  fn_ = &fn;
  tasks_ = tasks;
  next_task_ = 0;
  active_ = tasks;
  error_ = nullptr;
  ++generation_;
  start_cv_.notify_all();
  while (next_task_ < tasks_) {
    int task = next_task_++;
    lock.unlock();
    try {
      fn(task);
    } catch (...) {
      lock.lock();
      if (!error_) error_ = std::current_exception();
      lock.unlock();
    }
    lock.lock();
    --active_;
  }
  done_cv_.wait(lock, [&] { return active_ == 0; });
  fn_ = nullptr;
  tasks_ = 0;
  std::exception_ptr err = error_;
  error_ = nullptr;
  lock.unlock();
  if (err) std::rethrow_exception(err);
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t chunks = std::min<int64_t>(size_, (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(0, n, 0);
    return;
  }
  run(int(chunks), [&](int c) {
    int64_t begin = n * c / chunks;
    int64_t end = n * (c + 1) / chunks;
    fn(begin, end, c);
  });
}

}  // namespace sk
