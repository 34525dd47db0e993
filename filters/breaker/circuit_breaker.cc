#include "filters/breaker/circuit_breaker.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace deferd::filters::breaker {

namespace {

// Rounds a positive duration up to whole milliseconds, so retry-after never promises too early.
std::chrono::milliseconds ceilMillis(std::chrono::nanoseconds duration) {
  if (duration <= std::chrono::nanoseconds::zero()) {
    return std::chrono::milliseconds(0);
  }
  return std::chrono::ceil<std::chrono::milliseconds>(duration);
}

} // namespace

std::string_view toString(BreakerState state) {
  switch (state) {
  case BreakerState::kClosed:
    return "closed";
  case BreakerState::kOpen:
    return "open";
  case BreakerState::kHalfOpen:
    return "half_open";
  }
  return "unknown";
}

std::string_view toString(TransitionCause cause) {
  switch (cause) {
  case TransitionCause::kFailureRate:
    return "failure_rate";
  case TransitionCause::kSlowCallRate:
    return "slow_call_rate";
  case TransitionCause::kConsecutiveFailures:
    return "consecutive_failures";
  case TransitionCause::kProbeFailed:
    return "probe_failed";
  case TransitionCause::kProbeTimeout:
    return "probe_timeout";
  case TransitionCause::kProbesSucceeded:
    return "probes_succeeded";
  case TransitionCause::kCooldownElapsed:
    return "cooldown_elapsed";
  }
  return "unknown";
}

Admission::Admission(Admission&& other) noexcept
    : breaker_(std::move(other.breaker_)), verdict_(other.verdict_), shadow_(other.shadow_),
      retry_after_(other.retry_after_), epoch_(other.epoch_), slot_(other.slot_),
      admitted_at_(other.admitted_at_), done_(other.done_) {
  other.done_ = true;
}

Admission& Admission::operator=(Admission&& other) noexcept {
  if (this != &other) {
    release();
    breaker_ = std::move(other.breaker_);
    verdict_ = other.verdict_;
    shadow_ = other.shadow_;
    retry_after_ = other.retry_after_;
    epoch_ = other.epoch_;
    slot_ = other.slot_;
    admitted_at_ = other.admitted_at_;
    done_ = other.done_;
    other.done_ = true;
  }
  return *this;
}

Admission::~Admission() { release(); }

void Admission::release() {
  if (breaker_ && !done_ && verdict_ == Verdict::kProbe) {
    breaker_->releaseProbe(*this);
  }
  done_ = true;
  breaker_.reset();
}

void Admission::record(const CallResult& result, MonotonicTime now) {
  if (done_ || !breaker_) {
    return;
  }
  done_ = true;

  CallResult measured = result;
  measured.latency = now - admitted_at_;
  Outcome outcome = breaker_->classifier().classify(measured);

  // A probe that timed out always fails, even when the classifier does not count timeouts.
  bool probe_timed_out =
      verdict_ == Verdict::kProbe && measured.local_failure == LocalFailure::kTimeout;
  if (probe_timed_out) {
    outcome = Outcome::kFailure;
  }
  breaker_->recordOutcome(*this, outcome, probe_timed_out, now);
}

void Admission::giveBack() {
  if (breaker_ && !done_ && verdict_ == Verdict::kProbe) {
    breaker_->returnProbe(*this);
  }
  done_ = true;
  breaker_.reset();
}

void Admission::recordTimeout(MonotonicTime now) {
  CallResult timeout;
  timeout.local_failure = LocalFailure::kTimeout;
  record(timeout, now);
}

void CircuitBreaker::PendingTransitions::push(const BreakerTransition& transition) {
  // applyTimersLocked makes at most one transition, because a half-open period that has just
  // begun has no outstanding probe to time out, and a recorded outcome adds at most one more.
  if (size_ < items_.size()) {
    items_[size_++] = transition;
  }
}

void CircuitBreaker::PendingTransitions::notify(const Listener& listener) const {
  if (!listener) {
    return;
  }
  for (size_t i = 0; i < size_; ++i) {
    listener(items_[i]);
  }
}

std::shared_ptr<CircuitBreaker> CircuitBreaker::create(const BreakerOptions& options,
                                                       MonotonicTime now, RandomSource random,
                                                       Listener listener) {
  return std::shared_ptr<CircuitBreaker>(
      new CircuitBreaker(options, now, std::move(random), std::move(listener)));
}

CircuitBreaker::CircuitBreaker(const BreakerOptions& options, MonotonicTime now,
                               RandomSource random, Listener listener)
    : options_(options), classifier_(options.classifier), listener_(std::move(listener)),
      random_(std::move(random)), fallback_random_(std::random_device{}()),
      window_(options.window, now), probe_slots_(std::max<uint32_t>(options.probes, 1)) {}

Admission CircuitBreaker::allow(MonotonicTime now) {
  PendingTransitions pending;
  Admission admission;

  {
    std::lock_guard lock(mutex_);
    applyTimersLocked(now, pending);
    admission.epoch_ = epoch_;

    switch (state_) {
    case BreakerState::kClosed:
      admission.verdict_ = Admission::Verdict::kAllowed;
      break;

    case BreakerState::kOpen:
      admission.verdict_ = Admission::Verdict::kRejected;
      admission.retry_after_ = ceilMillis(open_until_ - now);
      break;

    case BreakerState::kHalfOpen: {
      auto free_slot = std::find_if(probe_slots_.begin(), probe_slots_.end(),
                                    [](const ProbeSlot& s) { return s.state == SlotState::kFree; });
      if (free_slot == probe_slots_.end()) {
        admission.verdict_ = Admission::Verdict::kRejected;
        admission.retry_after_ = earliestProbeDeadlineLocked(now);
        break;
      }
      free_slot->state = SlotState::kOutstanding;
      free_slot->issued = now;
      admission.verdict_ = Admission::Verdict::kProbe;
      admission.slot_ = static_cast<size_t>(free_slot - probe_slots_.begin());
      probes_issued_.fetch_add(1, std::memory_order_relaxed);
      break;
    }
    }
  }

  pending.notify(listener_);

  admission.shadow_ = options_.shadow;
  if (admission.verdict_ == Admission::Verdict::kRejected) {
    auto& counter = options_.shadow ? shadow_rejections_ : rejections_;
    counter.fetch_add(1, std::memory_order_relaxed);
    return admission;
  }

  admission.breaker_ = shared_from_this();
  admission.admitted_at_ = now;
  admission.done_ = false;
  return admission;
}

BreakerState CircuitBreaker::state(MonotonicTime now) {
  PendingTransitions pending;
  BreakerState current;
  {
    std::lock_guard lock(mutex_);
    applyTimersLocked(now, pending);
    current = state_;
  }
  pending.notify(listener_);
  return current;
}

WindowCounts CircuitBreaker::windowCounts(MonotonicTime now) {
  std::lock_guard lock(mutex_);
  return window_.counts(now);
}

void CircuitBreaker::recordOutcome(Admission& admission, Outcome outcome, bool timed_out,
                                   MonotonicTime now) {
  PendingTransitions pending;
  {
    std::lock_guard lock(mutex_);
    applyTimersLocked(now, pending);

    if (admission.epoch_ != epoch_) {
      stale_results_.fetch_add(1, std::memory_order_relaxed);
    } else if (admission.verdict_ == Admission::Verdict::kAllowed) {
      recordClosedLocked(outcome, now, pending);
    } else if (admission.verdict_ == Admission::Verdict::kProbe) {
      recordProbeLocked(admission.slot_, outcome, timed_out, now, pending);
    }
  }
  pending.notify(listener_);
}

void CircuitBreaker::returnProbe(const Admission& admission) {
  std::lock_guard lock(mutex_);
  if (admission.epoch_ != epoch_ || state_ != BreakerState::kHalfOpen) {
    return;
  }
  ProbeSlot& slot = probe_slots_[admission.slot_];
  if (slot.state == SlotState::kOutstanding) {
    slot.state = SlotState::kFree;
  }
}

void CircuitBreaker::releaseProbe(const Admission& /*admission*/) {
  // The ticket stays outstanding: the primary may still be working on the cancelled probe, so
  // no other request takes its place, and applyTimersLocked fails it at probe_timeout.
}

void CircuitBreaker::applyTimersLocked(MonotonicTime now, PendingTransitions& pending) {
  if (state_ == BreakerState::kOpen && now >= open_until_) {
    transitionLocked(BreakerState::kHalfOpen, TransitionCause::kCooldownElapsed, now, {}, pending);
  }

  if (state_ != BreakerState::kHalfOpen) {
    return;
  }
  bool timed_out = std::any_of(probe_slots_.begin(), probe_slots_.end(), [&](const ProbeSlot& s) {
    return s.state == SlotState::kOutstanding && now - s.issued >= options_.probe_timeout;
  });
  if (timed_out) {
    transitionLocked(BreakerState::kOpen, TransitionCause::kProbeTimeout, now, {}, pending);
  }
}

void CircuitBreaker::recordClosedLocked(Outcome outcome, MonotonicTime now,
                                        PendingTransitions& pending) {
  window_.record(outcome, now);
  consecutive_failures_ = outcome == Outcome::kFailure ? consecutive_failures_ + 1 : 0;

  WindowCounts counts = window_.counts(now);
  if (counts.calls >= options_.min_requests) {
    if (options_.failure_rate_threshold > 0 &&
        counts.failureRate() >= options_.failure_rate_threshold) {
      transitionLocked(BreakerState::kOpen, TransitionCause::kFailureRate, now, counts, pending);
      return;
    }
    if (options_.slow_call_rate_threshold > 0 &&
        counts.slowCallRate() >= options_.slow_call_rate_threshold) {
      transitionLocked(BreakerState::kOpen, TransitionCause::kSlowCallRate, now, counts, pending);
      return;
    }
  }

  if (options_.consecutive_failures > 0 && consecutive_failures_ >= options_.consecutive_failures) {
    transitionLocked(BreakerState::kOpen, TransitionCause::kConsecutiveFailures, now, counts,
                     pending);
  }
}

void CircuitBreaker::recordProbeLocked(size_t slot, Outcome outcome, bool timed_out,
                                       MonotonicTime now, PendingTransitions& pending) {
  if (timed_out) {
    transitionLocked(BreakerState::kOpen, TransitionCause::kProbeTimeout, now, {}, pending);
    return;
  }
  if (outcome != Outcome::kSuccess) {
    // A slow probe fails too, because the primary has not shown that it is healthy again.
    transitionLocked(BreakerState::kOpen, TransitionCause::kProbeFailed, now, {}, pending);
    return;
  }

  probe_slots_[slot].state = SlotState::kSucceeded;
  bool all_succeeded = std::all_of(probe_slots_.begin(), probe_slots_.end(),
                                   [](const auto& s) { return s.state == SlotState::kSucceeded; });
  if (all_succeeded) {
    transitionLocked(BreakerState::kClosed, TransitionCause::kProbesSucceeded, now, {}, pending);
  }
}

void CircuitBreaker::transitionLocked(BreakerState to, TransitionCause cause, MonotonicTime now,
                                      const WindowCounts& window, PendingTransitions& pending) {
  BreakerTransition transition{.from = state_,
                               .to = to,
                               .cause = cause,
                               .cooldown = std::chrono::milliseconds(0),
                               .window = window,
                               .sequence = ++sequence_,
                               .at = now,
                               .shadow = options_.shadow};

  switch (to) {
  case BreakerState::kOpen:
    transition.cooldown = nextCooldownLocked();
    open_until_ = now + transition.cooldown;
    consecutive_failures_ = 0;
    trips_.fetch_add(1, std::memory_order_relaxed);
    break;

  case BreakerState::kHalfOpen:
    for (ProbeSlot& slot : probe_slots_) {
      slot = ProbeSlot{};
    }
    break;

  case BreakerState::kClosed:
    window_.reset();
    consecutive_failures_ = 0;
    trips_in_a_row_ = 0;
    break;
  }

  state_ = to;
  epoch_++;
  state_mirror_.store(to, std::memory_order_release);
  pending.push(transition);
}

std::chrono::milliseconds CircuitBreaker::nextCooldownLocked() {
  trips_in_a_row_++;

  double max_ms = static_cast<double>(std::max<int64_t>(options_.max_cooldown.count(), 0));
  // Each comparison is written so that NaN options fall back to no growth and no jitter.
  double multiplier = options_.cooldown_multiplier >= 1.0 ? options_.cooldown_multiplier : 1.0;
  double cooldown_ms = static_cast<double>(std::max<int64_t>(options_.base_cooldown.count(), 0)) *
                       std::pow(multiplier, static_cast<double>(trips_in_a_row_ - 1));
  cooldown_ms = std::min(cooldown_ms, max_ms);

  double unit = random_ ? random_() : std::uniform_real_distribution<double>()(fallback_random_);
  unit = unit >= 0.0 && unit <= 1.0 ? unit : 0.5;
  double jitter = options_.jitter > 0.0 ? std::min(options_.jitter, 1.0) : 0.0;
  cooldown_ms *= 1.0 + jitter * (2.0 * unit - 1.0);

  cooldown_ms = std::clamp(cooldown_ms, 0.0, max_ms);
  if (std::isnan(cooldown_ms)) {
    // Only a zero base cooldown times an infinite multiplier gets here.
    cooldown_ms = 0.0;
  }
  return std::chrono::milliseconds(std::llround(cooldown_ms));
}

std::chrono::milliseconds CircuitBreaker::earliestProbeDeadlineLocked(MonotonicTime now) const {
  std::chrono::nanoseconds earliest = options_.probe_timeout;
  for (const ProbeSlot& slot : probe_slots_) {
    if (slot.state == SlotState::kOutstanding) {
      earliest =
          std::min<std::chrono::nanoseconds>(earliest, slot.issued + options_.probe_timeout - now);
    }
  }
  return ceilMillis(earliest);
}

} // namespace deferd::filters::breaker
