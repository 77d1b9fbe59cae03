// A persistent pool of worker threads for intra-op parallelism. The thread that calls run()
// takes part as worker 0, so a pool of size n starts n - 1 threads. run() is not re-entrant and
// is called by one thread at a time (the backend executor); work is split statically so that a
// given size and thread count always gives the same partition (deterministic reductions).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sk {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }
  // Runs fn(task) for task in [0, tasks) over the pool and waits for all of them. The first
  // exception thrown by a task is rethrown here after every task has finished.
  void run(int tasks, const std::function<void(int task)>& fn);
  // Splits [0, n) into at most size() contiguous chunks of at least `grain` items and calls
  // fn(begin, end, chunk) for each.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn);

 private:
  void worker_main(int id);

  int size_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int)>* fn_ = nullptr;
  int tasks_ = 0;
  int next_task_ = 0;
  // Read without the lock while spinning (written under it): a short spin before sleeping hides
  // the wake-up latency of condition variables (milliseconds on some VMs) between the many
  // short parallel phases of an op.
  std::atomic<int> active_{0};
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
  std::exception_ptr error_;
};

// Number of hardware threads, at least 1.
int hardware_threads();

}  // namespace sk
