#pragma once

// The admission controller of one cluster: its concurrency limiter and its wait queue, shared
// by every worker. The backpressure filter calls admit() for each request and gets one of:
//
//   admitted  an AdmissionSlot, the RAII guard of one slot of the limit. It releases the
//             slot when the request ends and feeds the limiter one sample.
//   queued    a QueuedRequest handle. The request waits, and the controller later calls the
//             request's callback with the outcome (WaitOutcome).
//   shed      nothing, because the queue is full of requests at least as urgent.
//   wait too long
//             nothing, because the predicted wait exceeds max_wait (with on_max_wait =
//             reject). See WaitEstimator.
//   expired   nothing, because the deadline is too close to be met (less than
//             deadline_margin left), or the predicted wait ends after it.
//
// Fast path: while the queue is empty, admit() and the slot's release are a compare-and-swap
// on the limiter and a few atomic adds, with no lock. New arrivals do not jump a non-empty
// queue. Once a request waits, arrivals go through the queue mutex and are ordered with the
// waiters by urgency.
//
// Slot handoff: a slot released while requests wait goes straight to the most urgent waiter
// (under the queue mutex, without lowering in-flight), so a new arrival cannot race for it.
// A slot is not handed over while in-flight is above the limit (after forced requests, or
// after the limit fell), but released instead. A release and an enqueue that happen at the
// same time cannot leave a waiter behind a free slot. A release lowers in-flight before it
// reads the queue size, and admit() publishes the queue size before it tries the limiter,
// with a sequentially consistent fence between the two steps on both sides. So at least one
// of them sees the other and serves the waiter.
//
// Waiter outcomes (WaitOutcome) are delivered through the waiter's callback, always outside
// the queue mutex and on whichever thread made the decision (a releasing worker, a polling
// worker or a cancelling one). The proxy's callback posts to the waiter's own worker. An
// admitted or forced waiter then calls QueuedRequest::takeSlot() to get its AdmissionSlot.
// A grant that races a cancel may still reach the callback after cancel() has returned, so
// the callback must own (or share) everything it touches; takeSlot() then returns nothing.
//
// Cancel: QueuedRequest::cancel() (also run by its destructor, so a client that disconnects
// frees its place at once) removes a waiting request. If a slot was granted to it at the same
// time and not yet taken, cancel() releases that slot, which may hand it to the next waiter;
// the grant moves through an atomic state (waiting, granted, taken or cancelled) so exactly one
// of takeSlot() and cancel() gets it.
//
// Timers: the controller owns no thread and no timer. max_wait, deadlines and aging advance in
// poll(), which each worker calls on its 50 ms tick; admit() and every release also poll, so a
// busy cluster is served on arrivals and releases. nextTimeout() gives the earliest time a
// waiter times out, for a caller that prefers an exact timer.
//
// Shadow mode: admitShadow() computes the decision that admit() would make and counts it under
// shadowDecisions(), but always admits. The slot is still taken (over the limit if needed) and
// released with a sample, so the limiter keeps learning, and the queue is never touched. The
// requests that admit() would have queued stand in for the queue: the ones at least as urgent
// as a newcomer are the waiters ahead of it in the wait prediction. They count until they
// complete rather than until a slot would have freed, so the shadow prediction errs long by
// about one service time, and it ignores aging.
//
// Lifetime: the controller must outlive every slot and handle it gave out.

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "filters/backpressure/limiter.h"
#include "filters/backpressure/load_report.h"
#include "filters/backpressure/wait_estimator.h"
#include "filters/backpressure/wait_queue.h"
#include "filters/filter.h"

namespace deferd::filters::backpressure {

class AdmissionController;

// Outcome of a wait, as passed to the waiter's callback.
enum class WaitOutcome {
  kAdmitted,  // a slot is waiting in takeSlot()
  kForced,    // max_wait passed with on_max_wait = proceed, so the slot is over the limit
  kDisplaced, // a more urgent request took its place in a full queue
  kTimedOut,  // max_wait passed with on_max_wait = reject
  kExpired,   // its deadline could no longer be met
};

// Counted decisions. kQueued and kAdmittedFromQueue count the same request twice, on entry and
// on its way out.
enum class Decision {
  kAdmitted,
  kQueued,
  kAdmittedFromQueue,
  kShed,
  kTimedOut,
  kExpired,
  kForced,
  kCancelled,
  kWaitTooLong, // refused on arrival: the predicted wait exceeds max_wait
  kDisplaced,   // a waiter pushed out of a full queue by a more urgent arrival
};
inline constexpr size_t kDecisionKinds = 10;

// The decisions the shadow path counts: what admit() would have done.
enum class ShadowDecision { kAdmitted, kQueued, kShed, kExpired, kWaitTooLong };
inline constexpr size_t kShadowDecisionKinds = 5;

struct AdmissionOptions {
  LimiterOptions limiter;
  QueueOptions queue;
  // Limit scale while every endpoint of the cluster defers (setAllEndpointsDeferring).
  double all_deferring_scale = 0.5;
};

struct AdmissionRequest {
  // From 0 (most urgent) to 7 (least). Other values are clamped.
  int urgency = 3;
  std::optional<MonotonicTime> deadline;
  // Called once if the request is queued, with how its wait ended. May run on any thread.
  std::function<void(WaitOutcome)> on_wait_end;
};

// One slot of the cluster's limit, released exactly once. Move-only.
class AdmissionSlot {
public:
  AdmissionSlot() = default;
  AdmissionSlot(AdmissionSlot&& other) noexcept;
  AdmissionSlot& operator=(AdmissionSlot&& other) noexcept;
  AdmissionSlot(const AdmissionSlot&) = delete;
  AdmissionSlot& operator=(const AdmissionSlot&) = delete;
  // Releases the slot without a sample, for a request that never reached the upstream.
  ~AdmissionSlot();

  // Releases the slot and gives the limiter the request's sample.
  void complete(const LimitSample& sample);
  // Releases the slot without a sample.
  void reset();

  bool held() const { return controller_ != nullptr; }
  // Whether the slot was taken over the limit (forced or shadow).
  bool forced() const { return forced_; }

private:
  friend class AdmissionController;
  friend class QueuedRequest;
  AdmissionSlot(AdmissionController* controller, bool forced, int shadow_waiter = -1)
      : controller_(controller), forced_(forced), shadow_waiter_(shadow_waiter) {}

  AdmissionController* controller_ = nullptr;
  bool forced_ = false;
  // The urgency of a shadow request that admit() would have queued, or -1.
  int shadow_waiter_ = -1;
};

// Shared by a queued request's handle and the queue entry.
struct WaitTicket {
  enum State : int { kWaiting, kGranted, kForcedGranted, kTaken, kCancelled, kEnded };

  uint64_t id = 0;
  int urgency = 3;
  std::atomic<int> state{kWaiting};
  // Cleared when called, under no lock, by the thread that delivers the outcome.
  std::function<void(WaitOutcome)> on_wait_end;
};

// A queued request. Move-only, and destroying it cancels the wait.
class QueuedRequest {
public:
  QueuedRequest() = default;
  QueuedRequest(QueuedRequest&& other) noexcept;
  QueuedRequest& operator=(QueuedRequest&& other) noexcept;
  QueuedRequest(const QueuedRequest&) = delete;
  QueuedRequest& operator=(const QueuedRequest&) = delete;
  ~QueuedRequest();

  // Takes the slot granted to this request. Returns an empty slot when none was granted or
  // the request was cancelled.
  AdmissionSlot takeSlot();
  // Ends the wait: removes the request from the queue, or releases a slot granted and not yet
  // taken. Returns true when the request was still waiting or its grant was given back.
  bool cancel();

  bool valid() const { return controller_ != nullptr; }

private:
  friend class AdmissionController;
  QueuedRequest(AdmissionController* controller, std::shared_ptr<WaitTicket> ticket)
      : controller_(controller), ticket_(std::move(ticket)) {}

  AdmissionController* controller_ = nullptr;
  std::shared_ptr<WaitTicket> ticket_;
};

enum class AdmitStatus { kAdmitted, kQueued, kShed, kWaitTooLong, kExpired };

struct AdmitResult {
  AdmitStatus status = AdmitStatus::kShed;
  AdmissionSlot slot;   // held when kAdmitted
  QueuedRequest queued; // valid when kQueued
};

class AdmissionController {
public:
  using Clock = std::function<MonotonicTime()>;

  // The clock must be safe to call from every worker thread.
  AdmissionController(const AdmissionOptions& options, Clock clock);
  ~AdmissionController();

  AdmissionController(const AdmissionController&) = delete;
  AdmissionController& operator=(const AdmissionController&) = delete;

  AdmitResult admit(AdmissionRequest request);
  // The shadow path (see above): the result is always kAdmitted with a slot.
  AdmitResult admitShadow(const AdmissionRequest& request);

  // Serves waiters that a raised limit lets in and ends waits past max_wait or deadline.
  void poll();
  std::optional<MonotonicTime> nextTimeout() const;

  // The all-deferring hook of SignalTable: scales the limit by all_deferring_scale while true.
  void setAllEndpointsDeferring(bool all_deferring);

  // This cluster's load, for the inbound side's endpoint-load-metrics header: utilization is
  // in-flight / limit, and the defer flag is set while requests wait in the queue.
  LoadReport loadReport() const;

  ConcurrencyLimiter& limiter() { return limiter_; }
  const ConcurrencyLimiter& limiter() const { return limiter_; }
  size_t queueLength() const { return queue_length_.load(); }
  // A snapshot of waiters per urgency (as they arrived, before aging).
  std::array<size_t, kUrgencyLevels> queueDepthByUrgency() const;
  uint64_t decisions(Decision decision, int urgency) const;
  uint64_t decisions(Decision decision) const;
  uint64_t shadowDecisions(ShadowDecision decision, int urgency) const;
  uint64_t shadowDecisions(ShadowDecision decision) const;

private:
  friend class AdmissionSlot;
  friend class QueuedRequest;

  struct Notification {
    std::shared_ptr<WaitTicket> ticket;
    WaitOutcome outcome;
  };
  using Notifications = std::vector<Notification>;

  void releaseSlot(const LimitSample* sample, int shadow_waiter);
  bool cancelWait(const std::shared_ptr<WaitTicket>& ticket);

  // Each expects mutex_ to be held. grantLocked hands one slot (already counted in flight)
  // to a waiter.
  void grantLocked(Waiter waiter, bool forced, Notifications& out);
  void drainLocked(MonotonicTime now, Notifications& out, const WaitTicket* newcomer,
                   bool& newcomer_granted);
  AdmitResult enqueueLocked(AdmissionRequest request, int urgency, MonotonicTime now,
                            Notifications& out);
  // Folds the completion and arrival totals into the wait estimator.
  void updateEstimatorLocked(MonotonicTime now);
  // Returns the refusal for a newcomer with `ahead` waiters served before it whose predicted
  // wait is too long, if any.
  std::optional<AdmitStatus> predictRefusalLocked(const AdmissionRequest& request, int urgency,
                                                  size_t ahead, MonotonicTime now);
  // The same for a shadow request, with the shadow waiters at least as urgent ahead of it.
  std::optional<AdmitStatus> predictShadowRefusal(const AdmissionRequest& request, int urgency,
                                                  MonotonicTime now);
  // Ends a wait without a slot (shed, timed out or expired).
  void endWaitLocked(Waiter waiter, Decision decision, WaitOutcome outcome, Notifications& out);
  void expireLocked(MonotonicTime now, Notifications& out);
  void publishQueueLengthLocked();

  static void deliver(Notifications& notifications);
  void count(Decision decision, int urgency);

  const AdmissionOptions options_;
  const Clock clock_;
  ConcurrencyLimiter limiter_;

  // Guards queue_ and next_id_. Held for queue operations only, never while a callback runs.
  mutable std::mutex mutex_;
  WaitQueue queue_;
  uint64_t next_id_ = 1;
  // The queue's size, readable without the mutex (see the handoff notes above).
  std::atomic<size_t> queue_length_{0};
  // Slots released so far, for the wait estimator.
  std::atomic<uint64_t> completions_{0};
  // Guarded by mutex_.
  WaitEstimator estimator_;
  // Shadow requests in flight that admit() would have queued, by urgency.
  std::array<std::atomic<int64_t>, kUrgencyLevels> shadow_waiters_{};

  std::array<std::array<std::atomic<uint64_t>, kUrgencyLevels>, kDecisionKinds> decisions_{};
  std::array<std::array<std::atomic<uint64_t>, kUrgencyLevels>, kShadowDecisionKinds>
      shadow_decisions_{};
};

} // namespace deferd::filters::backpressure
