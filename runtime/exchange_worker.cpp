#include "runtime/exchange_worker.hpp"

#include <chrono>
#include <stdexcept>

#include "runtime/trace.hpp"

namespace moe {

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
