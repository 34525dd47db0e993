#include "filters/backpressure/admission_controller.h"

#include <algorithm>
#include <utility>

namespace deferd::filters::backpressure {

namespace {

int clampUrgency(int urgency) { return std::clamp(urgency, 0, kLeastUrgent); }

bool deadlineTooClose(const AdmissionRequest& request, MonotonicTime now,
                      std::chrono::milliseconds margin) {
  return request.deadline && *request.deadline - now < margin;
}

} // namespace

AdmissionSlot::AdmissionSlot(AdmissionSlot&& other) noexcept
    : controller_(std::exchange(other.controller_, nullptr)), forced_(other.forced_),
      shadow_waiter_(other.shadow_waiter_) {}

AdmissionSlot& AdmissionSlot::operator=(AdmissionSlot&& other) noexcept {
  if (this != &other) {
    reset();
    controller_ = std::exchange(other.controller_, nullptr);
    forced_ = other.forced_;
    shadow_waiter_ = other.shadow_waiter_;
  }
  return *this;
}

AdmissionSlot::~AdmissionSlot() { reset(); }

void AdmissionSlot::complete(const LimitSample& sample) {
  if (AdmissionController* controller = std::exchange(controller_, nullptr)) {
    controller->releaseSlot(&sample, shadow_waiter_);
  }
}

void AdmissionSlot::reset() {
  if (AdmissionController* controller = std::exchange(controller_, nullptr)) {
    controller->releaseSlot(nullptr, shadow_waiter_);
  }
}

QueuedRequest::QueuedRequest(QueuedRequest&& other) noexcept
    : controller_(std::exchange(other.controller_, nullptr)), ticket_(std::move(other.ticket_)) {}

QueuedRequest& QueuedRequest::operator=(QueuedRequest&& other) noexcept {
  if (this != &other) {
    cancel();
    controller_ = std::exchange(other.controller_, nullptr);
    ticket_ = std::move(other.ticket_);
  }
  return *this;
}

QueuedRequest::~QueuedRequest() { cancel(); }

AdmissionSlot QueuedRequest::takeSlot() {
  if (controller_ == nullptr) {
    return {};
  }
  int expected = WaitTicket::kGranted;
  if (ticket_->state.compare_exchange_strong(expected, WaitTicket::kTaken)) {
    return AdmissionSlot(controller_, false);
  }
  expected = WaitTicket::kForcedGranted;
  if (ticket_->state.compare_exchange_strong(expected, WaitTicket::kTaken)) {
    return AdmissionSlot(controller_, true);
  }
  return {};
}

bool QueuedRequest::cancel() {
  AdmissionController* controller = std::exchange(controller_, nullptr);
  if (controller == nullptr) {
    return false;
  }
  const bool cancelled = controller->cancelWait(ticket_);
  ticket_.reset();
  return cancelled;
}

AdmissionController::AdmissionController(const AdmissionOptions& options, Clock clock)
    : options_(options), clock_(std::move(clock)), limiter_(options.limiter, clock_()),
      queue_(options.queue) {}

AdmissionController::~AdmissionController() = default;

AdmitResult AdmissionController::admit(AdmissionRequest request) {
  const MonotonicTime now = clock_();
  const int urgency = clampUrgency(request.urgency);
  AdmitResult result;

  if (deadlineTooClose(request, now, options_.queue.deadline_margin)) {
    count(Decision::kExpired, urgency);
    result.status = AdmitStatus::kExpired;
    return result;
  }
  if (queue_length_.load() == 0 && limiter_.tryAcquire()) {
    count(Decision::kAdmitted, urgency);
    result.status = AdmitStatus::kAdmitted;
    result.slot = AdmissionSlot(this, false);
    return result;
  }

  Notifications notifications;
  {
    std::lock_guard lock(mutex_);
    expireLocked(now, notifications);
    if (queue_.empty() && limiter_.tryAcquire()) {
      count(Decision::kAdmitted, urgency);
      result.status = AdmitStatus::kAdmitted;
      result.slot = AdmissionSlot(this, false);
    } else {
      result = enqueueLocked(std::move(request), urgency, now, notifications);
    }
  }
  deliver(notifications);
  return result;
}

void AdmissionController::updateEstimatorLocked(MonotonicTime now) {
  std::array<uint64_t, kUrgencyLevels> accepted{};
  for (int level = 0; level < kUrgencyLevels; ++level) {
    accepted[level] = decisions(Decision::kAdmitted, level) + decisions(Decision::kQueued, level) +
                      shadowDecisions(ShadowDecision::kAdmitted, level) +
                      shadowDecisions(ShadowDecision::kQueued, level);
  }
  estimator_.update(now, completions_.load(std::memory_order_relaxed), accepted);
}

std::optional<AdmitStatus>
AdmissionController::predictRefusalLocked(const AdmissionRequest& request, int urgency,
                                          size_t ahead, MonotonicTime now) {
  if (!options_.queue.predict_wait) {
    return std::nullopt;
  }
  updateEstimatorLocked(now);

  // With no waiter ahead, the next released slot is the newcomer's unless more urgent work
  // arrives first, so it is always given the chance to wait.
  if (ahead == 0) {
    return std::nullopt;
  }
  const std::optional<std::chrono::nanoseconds> wait = estimator_.predictWait(urgency, ahead, now);
  if (!wait) {
    return std::nullopt;
  }
  if (request.deadline && *wait > *request.deadline - options_.queue.deadline_margin - now) {
    return AdmitStatus::kExpired;
  }
  if (options_.queue.on_max_wait == MaxWaitAction::kReject && *wait > options_.queue.max_wait) {
    return AdmitStatus::kWaitTooLong;
  }
  return std::nullopt;
}

AdmitResult AdmissionController::enqueueLocked(AdmissionRequest request, int urgency,
                                               MonotonicTime now, Notifications& out) {
  AdmitResult result;
  const size_t ahead = queue_.countAhead(urgency, now);
  if (std::optional<AdmitStatus> refusal = predictRefusalLocked(request, urgency, ahead, now)) {
    count(*refusal == AdmitStatus::kExpired ? Decision::kExpired : Decision::kWaitTooLong, urgency);
    result.status = *refusal;
    return result;
  }

  auto ticket = std::make_shared<WaitTicket>();
  ticket->id = next_id_++;
  ticket->urgency = urgency;
  ticket->on_wait_end = std::move(request.on_wait_end);

  PushResult pushed = queue_.push(Waiter{.id = ticket->id,
                                         .urgency = urgency,
                                         .enqueued = now,
                                         .deadline = request.deadline,
                                         .ticket = ticket},
                                  now);
  if (!pushed.queued) {
    count(Decision::kShed, urgency);
    result.status = AdmitStatus::kShed;
    return result;
  }
  if (pushed.displaced) {
    endWaitLocked(std::move(*pushed.displaced), Decision::kDisplaced, WaitOutcome::kDisplaced, out);
  }
  publishQueueLengthLocked();

  // A slot may have been released between the failed tryAcquire and the push, as the handoff
  // notes in the header explain.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool newcomer_granted = false;
  drainLocked(now, out, ticket.get(), newcomer_granted);
  if (newcomer_granted) {
    count(Decision::kAdmitted, urgency);
    result.status = AdmitStatus::kAdmitted;
    result.slot = AdmissionSlot(this, false);
    return result;
  }
  count(Decision::kQueued, urgency);
  result.status = AdmitStatus::kQueued;
  result.queued = QueuedRequest(this, std::move(ticket));
  return result;
}

AdmitResult AdmissionController::admitShadow(const AdmissionRequest& request) {
  const MonotonicTime now = clock_();
  const int urgency = clampUrgency(request.urgency);

  const bool acquired = queue_length_.load() == 0 && limiter_.tryAcquire();
  // Requests over the limit stand for the waiters that enforcement would have queued.
  const int virtual_waiters = std::max(limiter_.inFlight() - limiter_.limit(), 0);
  if (!acquired) {
    limiter_.forceAcquire();
  }

  ShadowDecision decision = ShadowDecision::kQueued;
  if (deadlineTooClose(request, now, options_.queue.deadline_margin)) {
    decision = ShadowDecision::kExpired;
  } else if (acquired) {
    decision = ShadowDecision::kAdmitted;
  } else if (std::optional<AdmitStatus> refusal = predictShadowRefusal(request, urgency, now)) {
    decision =
        *refusal == AdmitStatus::kExpired ? ShadowDecision::kExpired : ShadowDecision::kWaitTooLong;
  } else if (static_cast<size_t>(virtual_waiters) >= options_.queue.max_length) {
    decision = ShadowDecision::kShed;
  }
  shadow_decisions_[static_cast<size_t>(decision)][urgency].fetch_add(1, std::memory_order_relaxed);

  int shadow_waiter = -1;
  if (decision == ShadowDecision::kQueued) {
    shadow_waiter = urgency;
    shadow_waiters_[urgency].fetch_add(1, std::memory_order_relaxed);
  }

  AdmitResult result;
  result.status = AdmitStatus::kAdmitted;
  result.slot = AdmissionSlot(this, !acquired, shadow_waiter);
  return result;
}

void AdmissionController::poll() {
  const MonotonicTime now = clock_();
  Notifications notifications;
  {
    std::lock_guard lock(mutex_);
    // The rates are measured on every tick, so an overload that starts is judged by recent ones.
    if (options_.queue.predict_wait) {
      updateEstimatorLocked(now);
    }
    if (queue_.empty()) {
      return;
    }
    expireLocked(now, notifications);
    bool unused = false;
    drainLocked(now, notifications, nullptr, unused);
  }
  deliver(notifications);
}

std::optional<MonotonicTime> AdmissionController::nextTimeout() const {
  std::lock_guard lock(mutex_);
  return queue_.nextTimeout();
}

void AdmissionController::setAllEndpointsDeferring(bool all_deferring) {
  limiter_.setLimitScale(all_deferring ? options_.all_deferring_scale : 1.0);
  if (!all_deferring) {
    poll(); // a higher limit may let waiters in
  }
}

LoadReport AdmissionController::loadReport() const {
  LoadReport report;
  const int limit = std::max(limiter_.limit(), 1);
  report.utilization = static_cast<double>(limiter_.inFlight()) / limit;
  report.queue = queue_length_.load();
  report.defer = report.queue > 0;
  return report;
}

std::array<size_t, kUrgencyLevels> AdmissionController::queueDepthByUrgency() const {
  std::lock_guard lock(mutex_);
  return queue_.depthByUrgency();
}

uint64_t AdmissionController::decisions(Decision decision, int urgency) const {
  return decisions_[static_cast<size_t>(decision)][clampUrgency(urgency)].load(
      std::memory_order_relaxed);
}

uint64_t AdmissionController::decisions(Decision decision) const {
  uint64_t total = 0;
  for (int urgency = 0; urgency < kUrgencyLevels; ++urgency) {
    total += decisions(decision, urgency);
  }
  return total;
}

uint64_t AdmissionController::shadowDecisions(ShadowDecision decision, int urgency) const {
  return shadow_decisions_[static_cast<size_t>(decision)][clampUrgency(urgency)].load(
      std::memory_order_relaxed);
}

uint64_t AdmissionController::shadowDecisions(ShadowDecision decision) const {
  uint64_t total = 0;
  for (int urgency = 0; urgency < kUrgencyLevels; ++urgency) {
    total += shadowDecisions(decision, urgency);
  }
  return total;
}

std::optional<AdmitStatus>
AdmissionController::predictShadowRefusal(const AdmissionRequest& request, int urgency,
                                          MonotonicTime now) {
  size_t ahead = 0;
  for (int level = 0; level <= urgency; ++level) {
    ahead += static_cast<size_t>(
        std::max<int64_t>(shadow_waiters_[level].load(std::memory_order_relaxed), 0));
  }
  std::lock_guard lock(mutex_);
  return predictRefusalLocked(request, urgency, ahead, now);
}

void AdmissionController::releaseSlot(const LimitSample* sample, int shadow_waiter) {
  const MonotonicTime now = clock_();
  completions_.fetch_add(1, std::memory_order_relaxed);
  if (shadow_waiter >= 0) {
    shadow_waiters_[shadow_waiter].fetch_sub(1, std::memory_order_relaxed);
  }
  if (sample != nullptr) {
    limiter_.recordSample(*sample, now);
  }

  Notifications notifications;
  if (queue_length_.load() > 0) {
    std::unique_lock lock(mutex_);
    expireLocked(now, notifications);
    // Hand the slot over without lowering in-flight, unless in-flight is over the limit.
    if (!queue_.empty() && limiter_.inFlight() <= limiter_.limit()) {
      grantLocked(*queue_.popMostUrgent(now), false, notifications);
      publishQueueLengthLocked();
      lock.unlock();
      deliver(notifications);
      return;
    }
  }

  limiter_.release();
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (queue_length_.load() > 0) {
    std::lock_guard lock(mutex_);
    bool unused = false;
    drainLocked(now, notifications, nullptr, unused);
  }
  deliver(notifications);
}

bool AdmissionController::cancelWait(const std::shared_ptr<WaitTicket>& ticket) {
  if (ticket->state.load() == WaitTicket::kWaiting) {
    std::lock_guard lock(mutex_);
    if (queue_.remove(ticket->id)) {
      ticket->state.store(WaitTicket::kCancelled);
      publishQueueLengthLocked();
      count(Decision::kCancelled, ticket->urgency);
      return true;
    }
  }

  // Not queued any more, so a slot may have been granted and not yet taken.
  for (int granted : {WaitTicket::kGranted, WaitTicket::kForcedGranted}) {
    int expected = granted;
    if (ticket->state.compare_exchange_strong(expected, WaitTicket::kCancelled)) {
      count(Decision::kCancelled, ticket->urgency);
      releaseSlot(nullptr, -1);
      return true;
    }
  }
  return false;
}

void AdmissionController::grantLocked(Waiter waiter, bool forced, Notifications& out) {
  waiter.ticket->state.store(forced ? WaitTicket::kForcedGranted : WaitTicket::kGranted);
  count(forced ? Decision::kForced : Decision::kAdmittedFromQueue, waiter.urgency);
  out.push_back({std::move(waiter.ticket), forced ? WaitOutcome::kForced : WaitOutcome::kAdmitted});
}

void AdmissionController::endWaitLocked(Waiter waiter, Decision decision, WaitOutcome outcome,
                                        Notifications& out) {
  waiter.ticket->state.store(WaitTicket::kEnded);
  count(decision, waiter.urgency);
  out.push_back({std::move(waiter.ticket), outcome});
}

void AdmissionController::drainLocked(MonotonicTime now, Notifications& out,
                                      const WaitTicket* newcomer, bool& newcomer_granted) {
  while (!queue_.empty() && limiter_.tryAcquire()) {
    Waiter waiter = *queue_.popMostUrgent(now);
    if (waiter.ticket.get() == newcomer) {
      waiter.ticket->state.store(WaitTicket::kTaken);
      newcomer_granted = true;
      continue;
    }
    grantLocked(std::move(waiter), false, out);
  }
  publishQueueLengthLocked();
}

void AdmissionController::expireLocked(MonotonicTime now, Notifications& out) {
  while (auto timed_out = queue_.popTimedOut(now)) {
    Waiter& waiter = timed_out->waiter;
    if (timed_out->kind == TimeoutKind::kDeadline) {
      endWaitLocked(std::move(waiter), Decision::kExpired, WaitOutcome::kExpired, out);
    } else if (options_.queue.on_max_wait == MaxWaitAction::kProceed) {
      limiter_.forceAcquire();
      grantLocked(std::move(waiter), true, out);
    } else {
      endWaitLocked(std::move(waiter), Decision::kTimedOut, WaitOutcome::kTimedOut, out);
    }
  }
  publishQueueLengthLocked();
}

void AdmissionController::publishQueueLengthLocked() { queue_length_.store(queue_.size()); }

void AdmissionController::deliver(Notifications& notifications) {
  for (Notification& notification : notifications) {
    if (notification.ticket->state.load() == WaitTicket::kCancelled) {
      continue; // the waiter has left, and cancel() has dealt with any slot
    }
    auto callback = std::move(notification.ticket->on_wait_end);
    notification.ticket->on_wait_end = nullptr;
    if (callback) {
      callback(notification.outcome);
    }
  }
}

void AdmissionController::count(Decision decision, int urgency) {
  decisions_[static_cast<size_t>(decision)][clampUrgency(urgency)].fetch_add(
      1, std::memory_order_relaxed);
}

} // namespace deferd::filters::backpressure
