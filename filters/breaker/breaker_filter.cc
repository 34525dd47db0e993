#include "filters/breaker/breaker_filter.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <utility>

#include "filters/common/endpoint.h"
#include "filters/common/rollout.h"

namespace deferd::filters::breaker {
namespace {

void increment(prometheus::Counter* counter) {
  if (counter != nullptr) {
    counter->Increment();
  }
}

CallCount callCount(Outcome outcome) {
  switch (outcome) {
  case Outcome::kSuccess:
    return CallCount::kSuccess;
  case Outcome::kSlow:
    return CallCount::kSlow;
  case Outcome::kFailure:
    break;
  }
  return CallCount::kFailure;
}

void countCall(const BreakerTarget& target, CallCount count) {
  if (target.stats != nullptr) {
    increment(target.stats->calls[static_cast<size_t>(count)]);
  }
}

std::optional<int> grpcStatus(const HeaderMap& headers) {
  std::optional<std::string_view> value = headers.get("grpc-status");
  if (!value) {
    return std::nullopt;
  }
  int code = 0;
  auto [end, error] = std::from_chars(value->data(), value->data() + value->size(), code);
  if (error != std::errc() || end != value->data() + value->size()) {
    return std::nullopt;
  }
  return code;
}

} // namespace

std::string_view callCountName(CallCount count) {
  switch (count) {
  case CallCount::kSuccess:
    return "success";
  case CallCount::kFailure:
    return "failure";
  case CallCount::kSlow:
    return "slow";
  case CallCount::kRejected:
  case CallCount::kCount:
    break;
  }
  return "rejected";
}

BreakerOptions breakerOptions(const config::BreakerPolicy& policy, bool shadow) {
  BreakerOptions options;
  if (policy.window_type == config::BreakerWindowType::kTime) {
    options.window.kind = WindowOptions::Kind::kTime;
    options.window.duration = policy.window_duration;
  } else {
    options.window.kind = WindowOptions::Kind::kCount;
    options.window.size = policy.window_calls;
  }
  options.min_requests = policy.min_requests;
  options.failure_rate_threshold = policy.failure_rate;
  options.slow_call_rate_threshold = policy.slow_call_rate;
  options.consecutive_failures = policy.consecutive_failures;
  options.probes = policy.probes;
  options.probe_timeout = policy.probe_timeout;
  options.base_cooldown = policy.cooldown;
  options.cooldown_multiplier = policy.cooldown_multiplier;
  options.max_cooldown = policy.max_cooldown;
  options.jitter = policy.jitter;
  options.shadow = shadow;

  ClassifierOptions& classifier = options.classifier;
  classifier.failure_status_classes = policy.failure_status_classes;
  classifier.failure_statuses = policy.failure_statuses;
  classifier.failure_on_connect_failure = policy.failure_connect_failure;
  classifier.failure_on_reset = policy.failure_reset;
  classifier.failure_on_timeout = policy.failure_timeout;
  classifier.failure_grpc_statuses = policy.failure_grpc;
  classifier.slow_call = policy.slow_call.value_or(std::chrono::milliseconds(0));
  return options;
}

OutlierOptions outlierOptions(const config::OutlierPolicy& policy) {
  OutlierOptions options;
  options.consecutive_failures = policy.consecutive_failures;
  options.base_ejection_time = policy.base_ejection;
  options.max_ejection_time = policy.max_ejection;
  options.max_ejection_percent = static_cast<uint32_t>(policy.max_ejection_percent * 100.0 + 0.5);
  return options;
}

FallbackCapacityOptions capacityOptions(const config::Capacity& capacity) {
  FallbackCapacityOptions options;
  // An unset limit is off: the loader only accepts a fallback that declares at least one.
  options.max_concurrent = capacity.max_concurrent.value_or(0);
  options.max_rps = capacity.max_rps.value_or(0);
  return options;
}

CircuitBreaker::Listener transitionListener(std::string policy, std::string cluster,
                                            BreakerStats* stats) {
  return [policy = std::move(policy), cluster = std::move(cluster),
          stats](const BreakerTransition& transition) {
    spdlog::info("breaker of policy {} on cluster {}: {} -> {}, cause {}{}", policy, cluster,
                 toString(transition.from), toString(transition.to), toString(transition.cause),
                 transition.shadow ? " (shadow mode: requests still pass)" : "");
    if (stats == nullptr) {
      return;
    }
    auto to = static_cast<size_t>(transition.to);
    auto cause = static_cast<size_t>(transition.cause);
    if (to < kBreakerStates && cause < kTransitionCauses) {
      increment(stats->transitions[to][cause]);
    }
  };
}

std::optional<CallResult> callResult(int status, const HeaderMap& headers,
                                     std::optional<LocalReplyReason> local_reply) {
  CallResult result;
  if (!local_reply) {
    result.http_status = status;
    result.grpc_status = grpcStatus(headers);
    return result;
  }
  switch (*local_reply) {
  case LocalReplyReason::kConnectFailed:
  case LocalReplyReason::kConnectTimeout:
  case LocalReplyReason::kNoHealthyEndpoint:
    result.local_failure = LocalFailure::kConnectFailure;
    return result;
  case LocalReplyReason::kUpstreamTimeout:
    result.local_failure = LocalFailure::kTimeout;
    return result;
  case LocalReplyReason::kUpstreamReset:
  case LocalReplyReason::kBadUpstreamResponse:
    result.local_failure = LocalFailure::kReset;
    return result;
  default:
    // A filter's reply, or the connection limit's, is no outcome of the upstream.
    return std::nullopt;
  }
}

FilterStatus BreakerFilter::onRequestHeaders(HeaderMap& headers) {
  RequestInfo& info = callbacks().requestInfo();
  MonotonicTime now = callbacks().dispatcher().now();
  const BreakerTarget& primary = config_.primary;

  Admission admission = primary.breaker->allow(now);
  if (admission.verdict() == Admission::Verdict::kAllowed && config_.fallback &&
      config_.fallback_when_deferring && config_.endpoints != nullptr &&
      config_.endpoints->allDeferring(primary.cluster) &&
      inRollout(info.request_id, config_.rollout * 100.0)) {
    // The primary is healthy but loaded: move what the fallback can take, keep the rest.
    if (std::optional<FilterStatus> moved = redirectWhileDeferring(headers, now)) {
      return *moved;
    }
  }
  if (admission.sendToPrimary()) {
    if (admission.verdict() == Admission::Verdict::kRejected) {
      // Shadow mode: the breaker counted the would-be rejection, and the filter exports it.
      increment(primary.stats ? primary.stats->shadow_rejections : nullptr);
      info.decision = "breaker-shadow";
    }
    admission_ = std::move(admission);
    letThrough(primary, now);
    startProbeTimer(admission_);
    return FilterStatus::kContinue;
  }

  if (!inRollout(info.request_id, config_.rollout * 100.0)) {
    // Outside the rollout the breaker only watches. The rejected admission records nothing,
    // so the machine runs as if the request had been rejected.
    increment(primary.stats ? primary.stats->shadow_rejections : nullptr);
    info.decision = "breaker-shadow";
    admission_ = std::move(admission);
    letThrough(primary, now);
    return FilterStatus::kContinue;
  }

  countCall(primary, CallCount::kRejected);
  if (!config_.fallback) {
    return rejectOpen(admission);
  }
  return redirect(headers, admission, now);
}

FilterStatus BreakerFilter::redirect(HeaderMap& headers, const Admission& rejected,
                                     MonotonicTime now) {
  RequestInfo& info = callbacks().requestInfo();
  BreakerStats* stats = config_.primary.stats;

  LoopCheck loop = checkFallbackLoop(headers, config_.service, config_.on_loop);
  if (loop.verdict != LoopVerdict::kRedirect) {
    increment(stats ? stats->fallback_loop : nullptr);
    if (loop.verdict == LoopVerdict::kReject) {
      info.decision = "fallback-loop";
      callbacks().sendLocalReply(LocalReplyReason::kFallbackLoop);
      return FilterStatus::kStop;
    }
    // The policy sends a looping request to the primary despite its open breaker. Its result
    // is not recorded: the breaker did not admit it.
    info.decision = "fallback-loop-primary";
    letThrough(config_.primary, now);
    return FilterStatus::kContinue;
  }

  FallbackDecision decision = admitFallback(now);
  if (!decision.granted()) {
    auto reason = static_cast<size_t>(decision.rejection);
    if (stats != nullptr && reason < kFallbackRejections) {
      increment(stats->fallback_rejections[reason]);
    }
    if (decision.rejection == FallbackRejection::kFallbackOpen) {
      // Neither cluster takes the request, so reply as an open breaker without a fallback.
      return rejectOpen(rejected);
    }
    info.decision = "fallback-capacity";
    callbacks().sendLocalReply(LocalReplyReason::kFallbackCapacity);
    return FilterStatus::kStop;
  }

  if (!sendToFallback(headers, loop, decision, "fallback", now)) {
    return rejectOpen(rejected);
  }
  return FilterStatus::kContinue;
}

std::optional<FilterStatus> BreakerFilter::redirectWhileDeferring(HeaderMap& headers,
                                                                  MonotonicTime now) {
  LoopCheck loop = checkFallbackLoop(headers, config_.service, LoopPolicy::kSendToPrimary);
  if (loop.verdict != LoopVerdict::kRedirect) {
    return std::nullopt;
  }
  FallbackDecision decision = admitFallback(now);
  if (!decision.granted() || !sendToFallback(headers, loop, decision, "fallback-deferring", now)) {
    return std::nullopt;
  }
  return FilterStatus::kContinue;
}

FallbackDecision BreakerFilter::admitFallback(MonotonicTime now) {
  const BreakerTarget& fallback = *config_.fallback;
  if (config_.endpoints != nullptr) {
    config_.capacity->setAllEndpointsDeferring(config_.endpoints->allDeferring(fallback.cluster));
  }
  return admitToFallback(*fallback.breaker, *config_.capacity, now);
}

bool BreakerFilter::sendToFallback(HeaderMap& headers, const LoopCheck& loop,
                                   FallbackDecision& decision, std::string_view decision_name,
                                   MonotonicTime now) {
  const BreakerTarget& fallback = *config_.fallback;
  if (!callbacks().routeToCluster(fallback.cluster_index)) {
    // The request never reaches the fallback, so a probe ticket it took goes back.
    decision.grant->admission.giveBack();
    return false;
  }
  headers.set(kFallbackPathHeader, loop.fallback_path);
  grant_ = std::move(decision.grant);
  increment(config_.fallback_requests);
  callbacks().requestInfo().decision = decision_name;
  letThrough(fallback, now);
  startProbeTimer(grant_->admission);
  return true;
}

FilterStatus BreakerFilter::rejectOpen(const Admission& rejected) {
  RequestInfo& info = callbacks().requestInfo();
  // Whole seconds, rounded up, and at least one: a client must not retry before the probe.
  int64_t milliseconds = rejected.retryAfter().count();
  info.retry_after = std::chrono::seconds(std::max<int64_t>(1, (milliseconds + 999) / 1000));
  info.decision = "breaker-open";
  callbacks().sendLocalReply(LocalReplyReason::kBreakerOpen);
  return FilterStatus::kStop;
}

void BreakerFilter::letThrough(const BreakerTarget& target, MonotonicTime now) {
  target_ = &target;
  let_through_at_ = now;
}

void BreakerFilter::startProbeTimer(const Admission& admission) {
  if (admission.verdict() != Admission::Verdict::kProbe) {
    return;
  }
  probe_timer_ = callbacks().dispatcher().createTimer([this] { onProbeTimeout(); });
  probe_timer_->enableTimer(config_.probe_timeout);
}

void BreakerFilter::onProbeTimeout() {
  if (recorded_ || target_ == nullptr) {
    return;
  }
  recorded_ = true;
  admission().recordTimeout(callbacks().dispatcher().now());
  countCall(*target_, CallCount::kFailure);
}

void BreakerFilter::onResponseHeaders(int status, HeaderMap& headers) {
  if (recorded_ || target_ == nullptr) {
    return;
  }
  std::optional<CallResult> result =
      callResult(status, headers, callbacks().requestInfo().local_reply);
  if (!result) {
    return; // onStreamEnd frees the unrecorded admission and its probe ticket
  }
  finish(*result, callbacks().dispatcher().now());
}

void BreakerFilter::onStreamEnd(StreamEnd end) {
  probe_timer_.reset();
  if (!recorded_ && target_ != nullptr && end == StreamEnd::kUpstreamFailed) {
    CallResult reset;
    reset.local_failure = LocalFailure::kReset;
    finish(reset, callbacks().dispatcher().now());
  }
  // A request that ends unrecorded before it reached an endpoint (another filter replied to it)
  // gives its probe ticket back. One that reached an endpoint keeps it, since the primary may
  // still be working on it, until the probe times out. A fallback request also ends its share
  // of the fallback's concurrency here.
  if (!recorded_ && callbacks().requestInfo().upstream == nullptr) {
    admission_.giveBack();
    if (grant_) {
      grant_->admission.giveBack();
    }
  }
  admission_ = Admission();
  grant_.reset();
}

void BreakerFilter::finish(CallResult result, MonotonicTime now) {
  recorded_ = true;
  probe_timer_.reset();
  result.latency = now - let_through_at_;
  Outcome outcome = target_->breaker->classifier().classify(result);
  admission().record(result, now);
  countCall(*target_, callCount(outcome));
  recordOutlier(outcome, now);
}

void BreakerFilter::recordOutlier(Outcome outcome, MonotonicTime now) {
  const SharedEndpoint* endpoint = callbacks().requestInfo().upstream;
  if (!target_->outlier || endpoint == nullptr || endpoint->cluster != target_->cluster) {
    return;
  }
  OutlierDetector& detector = *target_->outlier;
  if (endpoint->id >= detector.endpointCount()) {
    // Ids are dense and never reused, so the detector grows with the cluster's endpoints.
    detector.resize(endpoint->id + 1, now);
  }
  detector.record(endpoint->id, outcome, now);
  if (std::optional<MonotonicTime> until = detector.ejectedUntil(endpoint->id, now)) {
    // The registry owns every SharedEndpoint as a mutable object; RequestInfo only hands out
    // a read-only view. Its atomics are meant to be written from any worker.
    auto* shared = const_cast<SharedEndpoint*>(endpoint);
    shared->ejectUntil(*until);
  }
}

} // namespace deferd::filters::breaker
