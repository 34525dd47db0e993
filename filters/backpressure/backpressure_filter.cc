#include "filters/backpressure/backpressure_filter.h"

#include <algorithm>

#include "filters/backpressure/load_report.h"
#include "filters/common/deadline.h"
#include "filters/common/rollout.h"

namespace deferd::filters::backpressure {

namespace {

constexpr int kDefaultUrgency = 3;
constexpr std::string_view kGrpcTimeoutHeader = "grpc-timeout";

// Polls of a queued request's controller happen at its next timeout, but at least this often,
// so aging and limit changes are seen while nothing else happens on the cluster.
constexpr std::chrono::milliseconds kMaxPollInterval{50};

LimiterOptions limiterOptions(const config::BackpressurePolicy& options) {
  LimiterOptions limiter;
  switch (options.limiter) {
  case config::LimiterKind::kGradient:
    limiter.algorithm = LimitAlgorithmKind::kGradient;
    break;
  case config::LimiterKind::kAimd:
    limiter.algorithm = LimitAlgorithmKind::kAimd;
    break;
  case config::LimiterKind::kFixed:
    limiter.algorithm = LimitAlgorithmKind::kFixed;
    break;
  }
  limiter.initial_limit = static_cast<int>(options.initial_limit);
  limiter.min_limit = static_cast<int>(options.min_limit);
  limiter.max_limit = static_cast<int>(options.max_limit);
  limiter.gradient.tolerance = options.tolerance;
  limiter.gradient.smoothing = options.smoothing;
  limiter.aimd.increase = static_cast<int>(options.increase);
  limiter.aimd.backoff = options.backoff;
  if (options.latency_threshold) {
    limiter.aimd.latency_threshold = *options.latency_threshold;
  }
  return limiter;
}

} // namespace

// --- SlotHolders ------------------------------------------------------------------------------

SlotHolders::Handle SlotHolders::add(std::string correlation_id, int urgency) {
  std::lock_guard lock(mutex_);
  holders_.push_front(Holder{std::move(correlation_id), urgency});
  return holders_.begin();
}

void SlotHolders::remove(Handle handle) {
  std::lock_guard lock(mutex_);
  holders_.erase(handle);
}

size_t SlotHolders::boostLessUrgent(int urgency, priority::InheritanceTable& table) {
  // The table takes its own shard locks inside; it never calls back, so the order of the two
  // locks is always this one.
  std::lock_guard lock(mutex_);
  size_t raised = 0;
  for (Holder& holder : holders_) {
    if (holder.urgency > urgency && table.boost(holder.correlation_id, urgency)) {
      holder.urgency = urgency;
      ++raised;
    }
  }
  return raised;
}

// --- Shared state -----------------------------------------------------------------------------

std::shared_ptr<BackpressureShared>
makeBackpressureShared(std::string policy, std::string cluster,
                       const config::BackpressurePolicy& options) {
  auto shared = std::make_shared<BackpressureShared>();
  shared->policy = std::move(policy);
  shared->cluster = std::move(cluster);
  shared->options = options;
  shared->limiter_options = limiterOptions(options);

  AdmissionOptions admission;
  admission.limiter = shared->limiter_options;
  admission.queue.max_length = options.queue_max_length;
  admission.queue.max_wait = options.max_wait;
  admission.queue.aging = options.aging;
  admission.queue.on_max_wait = options.on_max_wait == config::MaxWaitAction::kProceed
                                    ? MaxWaitAction::kProceed
                                    : MaxWaitAction::kReject;
  admission.queue.predict_wait = options.predict_wait;
  admission.all_deferring_scale = options.all_deferring_scale;
  shared->controller = std::make_unique<AdmissionController>(
      admission, [] { return std::chrono::steady_clock::now(); });

  if (options.signal) {
    SignalTableOptions signal;
    signal.ttl = options.signal->ttl;
    signal.half_life = options.signal->ewma_half_life;
    signal.defer_above = options.signal->defer_above;
    signal.hold_above = options.signal->hold_above;
    signal.resume_below = options.signal->resume_below;
    signal.hold_below = options.signal->hold_below;
    shared->signals = std::make_unique<SignalTable>(kMaxSignalEndpoints, signal);
  }
  return shared;
}

// --- The filter -------------------------------------------------------------------------------

BackpressureFilter::BackpressureFilter(const BackpressureRouteConfig& config)
    : config_(config), shared_(*config.shared) {}

BackpressureFilter::~BackpressureFilter() { endWait(); }

FilterStatus BackpressureFilter::onRequestHeaders(HeaderMap& headers) {
  RequestInfo& info = callbacks().requestInfo();
  MonotonicTime now = callbacks().dispatcher().now();
  urgency_ = info.urgency.value_or(kDefaultUrgency);

  // A breaker that sent the request to its fallback has already checked the fallback's
  // capacity; this cluster's limit is not the one it uses.
  if (info.route_cluster != shared_.cluster) {
    return FilterStatus::kContinue;
  }

  AdmissionRequest request;
  request.urgency = urgency_;
  request.deadline = deadlineOf(headers, now);

  bool enforced = config_.enforce && inRollout(info.request_id, config_.rollout * 100.0);
  if (!enforced) {
    AdmitResult result = shared_.controller->admitShadow(request);
    onAdmitted(std::move(result.slot), now);
    return FilterStatus::kContinue;
  }

  // The callback may run on any worker, and after this filter is gone: it holds only the wait
  // state and posts to this request's own worker, where the state tells whether to go on.
  wait_ = std::make_shared<WaitState>(WaitState{this});
  Dispatcher* dispatcher = &callbacks().dispatcher();
  request.on_wait_end = [wait = wait_, dispatcher](WaitOutcome outcome) {
    dispatcher->post([wait, outcome] {
      if (wait->filter != nullptr) {
        wait->filter->onWaitEnd(outcome);
      }
    });
  };

  AdmitResult result = shared_.controller->admit(std::move(request));
  switch (result.status) {
  case AdmitStatus::kAdmitted:
    onAdmitted(std::move(result.slot), now);
    return FilterStatus::kContinue;
  case AdmitStatus::kQueued:
    queued_ = std::move(result.queued);
    queued_at_ = now;
    info.decision = "queued";
    armPollTimer();
    if (config_.boost_after && config_.table) {
      boost_timer_ = callbacks().dispatcher().createTimer([this] { onBoostTimer(); });
      boost_timer_->enableTimer(*config_.boost_after);
    }
    return FilterStatus::kStop;
  case AdmitStatus::kShed:
    info.decision = "shed";
    callbacks().sendLocalReply(LocalReplyReason::kLoadShed);
    return FilterStatus::kStop;
  case AdmitStatus::kWaitTooLong:
    info.decision = "wait-too-long";
    callbacks().sendLocalReply(LocalReplyReason::kQueueWaitTooLong);
    return FilterStatus::kStop;
  case AdmitStatus::kExpired:
    info.decision = "expired";
    callbacks().sendLocalReply(LocalReplyReason::kDeadlineExceeded);
    return FilterStatus::kStop;
  }
  return FilterStatus::kContinue;
}

std::optional<MonotonicTime> BackpressureFilter::deadlineOf(const HeaderMap& headers,
                                                            MonotonicTime now) const {
  std::optional<std::chrono::nanoseconds> remaining;
  if (std::optional<std::string_view> grpc = headers.get(kGrpcTimeoutHeader)) {
    remaining = parseGrpcTimeout(*grpc);
  } else if (shared_.options.deadline_header) {
    if (std::optional<std::string_view> value = headers.get(*shared_.options.deadline_header)) {
      remaining = parseDeadlineDuration(*value);
    }
  }
  if (!remaining) {
    return std::nullopt;
  }
  return now + std::chrono::duration_cast<MonotonicTime::duration>(*remaining);
}

void BackpressureFilter::onAdmitted(AdmissionSlot slot, MonotonicTime now) {
  slot_ = std::move(slot);
  admitted_at_ = now;
  RequestInfo& info = callbacks().requestInfo();
  if (config_.boost_after && config_.table && !info.correlation_id.empty()) {
    holder_ = shared_.holders.add(info.correlation_id, urgency_);
  }
}

void BackpressureFilter::onWaitEnd(WaitOutcome outcome) {
  if (!queued_.valid()) {
    return; // the stream ended first
  }
  RequestInfo& info = callbacks().requestInfo();
  MonotonicTime now = callbacks().dispatcher().now();

  switch (outcome) {
  case WaitOutcome::kAdmitted:
  case WaitOutcome::kForced: {
    AdmissionSlot slot = queued_.takeSlot();
    if (!slot.held()) {
      return;
    }
    endWait();
    if (shared_.queue_wait != nullptr) {
      shared_.queue_wait->Observe(std::chrono::duration<double>(now - queued_at_).count());
    }
    info.decision = outcome == WaitOutcome::kForced ? "forced" : "dequeued";
    onAdmitted(std::move(slot), now);
    callbacks().continueRequest();
    return;
  }
  case WaitOutcome::kDisplaced:
    endWait();
    info.decision = "displaced";
    callbacks().sendLocalReply(LocalReplyReason::kQueueDisplaced);
    return;
  case WaitOutcome::kTimedOut:
    endWait();
    info.decision = "timed-out";
    callbacks().sendLocalReply(LocalReplyReason::kQueueTimeout);
    return;
  case WaitOutcome::kExpired:
    endWait();
    info.decision = "expired";
    callbacks().sendLocalReply(LocalReplyReason::kDeadlineExceeded);
    return;
  }
}

void BackpressureFilter::armPollTimer() {
  if (!poll_timer_) {
    poll_timer_ = callbacks().dispatcher().createTimer([this] {
      shared_.controller->poll();
      if (queued_.valid()) {
        armPollTimer();
      }
    });
  }
  std::chrono::milliseconds delay = kMaxPollInterval;
  if (std::optional<MonotonicTime> next = shared_.controller->nextTimeout()) {
    auto until =
        std::chrono::ceil<std::chrono::milliseconds>(*next - callbacks().dispatcher().now());
    delay = std::clamp(until, std::chrono::milliseconds(1), kMaxPollInterval);
  }
  poll_timer_->enableTimer(delay);
}

void BackpressureFilter::onBoostTimer() {
  if (!queued_.valid()) {
    return;
  }
  size_t raised = shared_.holders.boostLessUrgent(urgency_, *config_.table);
  if (raised > 0 && shared_.boosts != nullptr) {
    shared_.boosts->Increment(static_cast<double>(raised));
  }
}

void BackpressureFilter::onResponseHeaders(int status, HeaderMap& headers) {
  response_at_ = callbacks().dispatcher().now();
  status_ = status;

  if (config_.direction == config::Direction::kInbound) {
    if (shared_.options.emit_signal) {
      headers.set(kLoadReportHeader, formatLoadReport(shared_.controller->loadReport()));
    }
    return;
  }
  if (shared_.signals) {
    readSignal(headers);
  }
  headers.remove(kLoadReportHeader);
}

void BackpressureFilter::readSignal(HeaderMap& headers) {
  SharedEndpoint* endpoint = callbacks().requestInfo().upstream;
  std::optional<std::string_view> value = headers.get(kLoadReportHeader);
  if (endpoint == nullptr || !value) {
    return;
  }
  LoadReportParse parsed = parseLoadReport(*value);
  if (!parsed.report) {
    return;
  }

  MonotonicTime now = callbacks().dispatcher().now();
  SignalTable& signals = *shared_.signals;
  signals.update(endpoint->id, *parsed.report, now);

  // The balancers read the SharedEndpoint, so mirror a change of state into it. An endpoint
  // that the balancers avoid sends no reports; the process's once-a-second tick clears its
  // flag when its signal goes stale.
  bool deferring = signals.isDeferring(endpoint->id, now);
  endpoint->deferring.store(deferring, std::memory_order_relaxed);

  // Checked on every report, not only when this endpoint changes, because another endpoint's
  // signal may have gone stale (and so stopped deferring) since the last change.
  size_t known = config_.endpoints ? config_.endpoints->count(shared_.cluster) : 0;
  recheckAllDeferring(shared_, known, now);
}

void recheckAllDeferring(BackpressureShared& shared, size_t known, MonotonicTime now) {
  if (!shared.signals) {
    return;
  }
  auto allDeferring = [&] { return known > 0 && shared.signals->deferringCount(now) >= known; };
  if (shared.all_deferring.load(std::memory_order_acquire) == allDeferring()) {
    return;
  }
  // Two callers may see a change at once; the lock keeps the last scale applied in step with
  // the flag.
  std::lock_guard lock(shared.all_deferring_mutex);
  const bool all_deferring = allDeferring();
  if (shared.all_deferring.load(std::memory_order_acquire) != all_deferring) {
    shared.all_deferring.store(all_deferring, std::memory_order_release);
    shared.controller->setAllEndpointsDeferring(all_deferring);
  }
}

void BackpressureFilter::onStreamEnd(StreamEnd end) {
  endWait();
  if (holder_) {
    shared_.holders.remove(*holder_);
    holder_.reset();
  }
  if (!slot_.held()) {
    return;
  }

  // A request that never reached the upstream gives no measure of its latency.
  const RequestInfo& info = callbacks().requestInfo();
  bool reached_upstream = response_at_.has_value() || end == StreamEnd::kUpstreamFailed;
  if (info.local_reply) {
    switch (*info.local_reply) {
    case LocalReplyReason::kConnectFailed:
    case LocalReplyReason::kConnectTimeout:
    case LocalReplyReason::kUpstreamTimeout:
    case LocalReplyReason::kUpstreamReset:
    case LocalReplyReason::kBadUpstreamResponse:
      reached_upstream = true;
      break;
    default:
      reached_upstream = false;
      break;
    }
  }
  if (!reached_upstream) {
    slot_.reset();
    return;
  }

  MonotonicTime now = callbacks().dispatcher().now();
  auto latency = std::chrono::duration_cast<std::chrono::nanoseconds>(response_at_.value_or(now) -
                                                                      admitted_at_);
  bool timed_out = info.local_reply == LocalReplyReason::kUpstreamTimeout;
  int status = info.local_reply ? 0 : status_;
  LimitSample sample;
  sample.latency = latency;
  sample.dropped = classifyDrop(shared_.limiter_options, status, timed_out, latency);
  slot_.complete(sample);
}

void BackpressureFilter::endWait() {
  if (wait_) {
    wait_->filter = nullptr;
    wait_.reset();
  }
  poll_timer_.reset();
  boost_timer_.reset();
  if (queued_.valid()) {
    queued_.cancel();
    queued_ = QueuedRequest();
  }
}

} // namespace deferd::filters::backpressure
