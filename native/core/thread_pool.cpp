#include "thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SK_PAUSE() _mm_pause()
#else
#define SK_PAUSE() ((void)0)
#endif

namespace sk {

namespace {

// How long a thread polls for new work (or for the last task to finish) before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(200);

template <typename Pred>
bool spin_until(Pred ready) {
  auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (ready()) return true;
    SK_PAUSE();
    if ((i & 255) == 255 && std::chrono::steady_clock::now() > until) return false;
  }
}

}  // namespace

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
    if (!stop_ && generation_.load(std::memory_order_acquire) == seen) {
      lock.unlock();
      spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
      lock.lock();
    }
    start_cv_.wait(lock, [&] { return stop_ || generation_.load() != seen; });
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
  if (active_.load() != 0) {
    lock.unlock();
    spin_until([&] { return active_.load(std::memory_order_acquire) == 0; });
    lock.lock();
  }
  done_cv_.wait(lock, [&] { return active_.load() == 0; });
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
