#pragma once

// The priority queue of requests waiting for a concurrency slot of one cluster.
//
// Order: urgency 0 is the most urgent and 7 the least (the RFC 9218 scale). A waiter's
// effective urgency is its urgency minus one level per `aging` interval it has waited, down
// to 0, so a waiter of urgency 7 reaches urgency 0 after 7 * aging and cannot starve. The
// next waiter to leave is the one with the most urgent effective urgency; among equals, the
// one that arrived first. Within one urgency level that is plain FIFO.
//
// Shedding: when the queue contains max_length waiters, a newcomer is compared with the least
// urgent waiter, which is the one with the highest effective urgency and, among equals, the
// newest. The newcomer is shed when it is not more urgent than that waiter, so on a tie the
// newcomer (the newest of all) is shed. Otherwise that waiter is shed and the newcomer takes
// its place.
//
// Time limits: each waiter leaves at its timeout, the earlier of enqueue time + max_wait and
// deadline - deadline_margin. popTimedOut() returns the waiters whose timeout has passed and
// says which limit it was.
//
// Data structures: one FIFO list per urgency level, so the most urgent effective waiter is
// one of the eight list heads (the oldest of each level is its most aged) and the least
// urgent is one of the eight tails. An id index and a multimap of timeouts make removal by id
// and timeout O(log n).
//
// Thread safety: none. AdmissionController guards its queue with a mutex.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>

#include "filters/filter.h"

namespace deferd::filters::backpressure {

inline constexpr int kUrgencyLevels = 8;
inline constexpr int kLeastUrgent = kUrgencyLevels - 1;

// Action for a waiter that has waited max_wait.
enum class MaxWaitAction {
  kReject,  // it is shed with a local reply
  kProceed, // it goes to the upstream anyway, over the limit, counted as forced
};

struct QueueOptions {
  // Zero disables queueing: every request over the limit is shed.
  size_t max_length = 1000;
  std::chrono::milliseconds max_wait{1000};
  MaxWaitAction on_max_wait = MaxWaitAction::kReject;
  // A waiter gains one level of urgency per interval. Zero disables aging.
  std::chrono::milliseconds aging{200};
  // A request with less time than this left before its deadline cannot be served in time.
  std::chrono::milliseconds deadline_margin{5};
  // Refuse on arrival a request whose predicted wait exceeds max_wait (with on_max_wait =
  // reject) or its deadline, instead of letting it wait first (see wait_estimator.h).
  bool predict_wait = true;
};

struct WaitTicket;

struct Waiter {
  uint64_t id = 0;
  // Urgency 0..7. The queue clamps other values.
  int urgency = 3;
  MonotonicTime enqueued;
  std::optional<MonotonicTime> deadline;
  // Owned by AdmissionController. The queue only carries it.
  std::shared_ptr<WaitTicket> ticket;
};

enum class TimeoutKind { kMaxWait, kDeadline };

struct TimedOutWaiter {
  Waiter waiter;
  TimeoutKind kind = TimeoutKind::kMaxWait;
};

struct PushResult {
  // False when the newcomer itself was shed.
  bool queued = false;
  // The waiter shed to make room for the newcomer, if any.
  std::optional<Waiter> displaced;
};

class WaitQueue {
public:
  explicit WaitQueue(const QueueOptions& options) : options_(options) {}

  WaitQueue(const WaitQueue&) = delete;
  WaitQueue& operator=(const WaitQueue&) = delete;

  // Adds a waiter, shedding the least urgent one when full. Ids must be unique.
  PushResult push(Waiter waiter, MonotonicTime now);

  // Removes and returns the waiter to serve next, or nothing when empty.
  std::optional<Waiter> popMostUrgent(MonotonicTime now);

  // Removes and returns one waiter whose timeout is at or before now, earliest first.
  std::optional<TimedOutWaiter> popTimedOut(MonotonicTime now);

  // Removes the waiter with this id. Returns false when it is not queued.
  bool remove(uint64_t id);

  // The earliest timeout of any waiter, for the caller's timer.
  std::optional<MonotonicTime> nextTimeout() const;

  int effectiveUrgency(const Waiter& waiter, MonotonicTime now) const;

  // The waiters that would leave before a newcomer of this urgency arriving now: every waiter
  // whose effective urgency is at most `urgency`. Aged waiters of less urgent levels are at
  // their level's head, so the count stops at each level's first waiter that is not aged
  // enough, and costs O(levels + count).
  size_t countAhead(int urgency, MonotonicTime now) const;

  bool empty() const { return index_.empty(); }
  size_t size() const { return index_.size(); }
  // Waiters per urgency level, as they arrived (aging not applied).
  std::array<size_t, kUrgencyLevels> depthByUrgency() const;
  const QueueOptions& options() const { return options_; }

private:
  struct Entry {
    Waiter waiter;
    MonotonicTime timeout;
    TimeoutKind timeout_kind = TimeoutKind::kMaxWait;
    std::multimap<MonotonicTime, uint64_t>::iterator timeout_entry;
  };
  using Level = std::list<Entry>;

  Waiter take(Level::iterator entry);
  // The level whose head (or tail) is the most (or least) urgent waiter, or -1 when empty.
  int mostUrgentLevel(MonotonicTime now) const;
  int leastUrgentLevel(MonotonicTime now) const;

  const QueueOptions options_;
  std::array<Level, kUrgencyLevels> levels_;
  std::unordered_map<uint64_t, Level::iterator> index_;
  std::multimap<MonotonicTime, uint64_t> timeouts_;
};

} // namespace deferd::filters::backpressure
