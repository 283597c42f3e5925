#include "runtime/exchange_worker.hpp"

#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <stdexcept>

#include "runtime/trace.hpp"

namespace moe {
namespace {

// struct sched_attr of sched_setattr(2); glibc declares neither.
struct SchedAttr {
  std::uint32_t size = sizeof(SchedAttr);
  std::uint32_t sched_policy = SCHED_OTHER;
  std::uint64_t sched_flags = 0;
  std::int32_t sched_nice = 0;
  std::uint32_t sched_priority = 0;
  std::uint64_t sched_runtime = 0;  // SCHED_OTHER: the thread's slice (Linux 6.12+)
  std::uint64_t sched_deadline = 0;
  std::uint64_t sched_period = 0;
};

// The communication thread runs for microseconds at a time, and a chunk's exchange moves only
// while it runs; it shares its rank's core with the compute it overlaps. Two settings, both best
// effort (a kernel without them keeps its defaults):
// - Timer slack of 1 ns (default 50 us): the simulated link's sleep until a transfer's end, and
//   the 20 us pauses of a polling exchange, wake on time instead of up to 50 us late, which every
//   chunk's exchange would pay.
// - A short slice (100 us, the least the kernel takes). EEVDF (Linux 6.6+) runs the eligible
//   thread with the earliest virtual deadline, its eligible time plus its slice; with the default
//   slice (~3 ms) a woken communication thread can wait out the compute thread's slice before it
//   runs, once per step of every exchange. A short slice lets it preempt at once; it does not
//   give it a larger share of the core.
void prefer_prompt_wakeups() {
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  SchedAttr attr;
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, 0);  // this thread's (Linux: per thread)
  attr.sched_nice = errno == 0 ? nice : 0;
  attr.sched_runtime = 100'000;  // ns
  syscall(SYS_sched_setattr, 0, &attr, 0U);
}

}  // namespace

ExchangeWorker::ExchangeWorker(comm::Communicator& comm)
    : comm_(comm), ring_(8), thread_([this] { run(); }) {}

ExchangeWorker::~ExchangeWorker() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  posted_cv_.notify_one();
  thread_.join();
}

void ExchangeWorker::reserve(std::size_t tasks) {
  std::lock_guard lock(mutex_);
  if (posted_ != done_) throw std::logic_error("ExchangeWorker::reserve with tasks outstanding");
  if (ring_.size() < tasks) ring_.resize(tasks);
}

std::uint64_t ExchangeWorker::post(const Task& task) {
  std::uint64_t ticket = 0;
  {
    std::lock_guard lock(mutex_);
    if (posted_ - done_ >= ring_.size()) {
      throw std::logic_error("ExchangeWorker::post: more tasks outstanding than reserved");
    }
    ticket = posted_++;
    ring_[ticket % ring_.size()] = task;
  }
  posted_cv_.notify_one();
  return ticket;
}

void ExchangeWorker::wait(std::uint64_t ticket) {
  std::unique_lock lock(mutex_);
  done_cv_.wait(lock, [&] { return done_ > ticket; });
  if (error_) std::rethrow_exception(error_);
}

double ExchangeWorker::take_busy_seconds() {
  std::lock_guard lock(mutex_);
  const double seconds = busy_seconds_;
  busy_seconds_ = 0;
  return seconds;
}

void ExchangeWorker::run() {
  trace::name_thread("communication");
  prefer_prompt_wakeups();
  std::unique_lock lock(mutex_);
  while (true) {
    posted_cv_.wait(lock, [&] { return stop_ || posted_ > done_; });
    if (posted_ == done_) return;  // stopping, nothing left
    const Task task = ring_[done_ % ring_.size()];
    lock.unlock();
    const auto start = std::chrono::steady_clock::now();
    // After a failure the rest are skipped: the group's collective sequence is already broken, and
    // every waiter gets the first error.
    if (!error_) {
      try {
        comm_.set_context(task.context);
        comm_.alltoallv(task.send, task.send_bytes, task.recv, task.recv_bytes);
      } catch (...) {
        error_ = std::current_exception();
      }
    }
    const auto end = std::chrono::steady_clock::now();
    trace::record(task.context.phase, "exchange", start, end, task.chunk);
    lock.lock();
    busy_seconds_ += std::chrono::duration<double>(end - start).count();
    ++done_;
    done_cv_.notify_all();
  }
}

}  // namespace moe
