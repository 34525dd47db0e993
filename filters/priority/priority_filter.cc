#include "filters/priority/priority_filter.h"

#include "filters/common/rollout.h"

namespace deferd::filters::priority {

std::string_view prioritySourceName(PrioritySource source) {
  switch (source) {
  case PrioritySource::kHeader:
    return "header";
  case PrioritySource::kInherited:
    return "inherited";
  case PrioritySource::kBoosted:
    return "boosted";
  case PrioritySource::kDefault:
  case PrioritySource::kCount:
    break;
  }
  return "default";
}

std::vector<CorrelationSource> correlationSources(const std::vector<std::string>& names) {
  std::vector<CorrelationSource> sources;
  for (const std::string& name : names) {
    sources.push_back(name == kTraceparentHeader ? CorrelationSource::traceparent()
                                                 : CorrelationSource::header(name));
  }
  return sources;
}

FilterStatus PriorityFilter::onRequestHeaders(HeaderMap& headers) {
  Priority effective = decide(headers);

  RequestInfo& info = callbacks().requestInfo();
  info.urgency = effective.urgency;
  info.priority_source = prioritySourceName(source_);
  count(effective);

  bool enforced = config_.enforce && inRollout(info.request_id, config_.rollout * 100.0);
  if (enforced) {
    headers.set(config_.policy->header, serializePriority(effective));
  }
  return FilterStatus::kContinue;
}

void PriorityFilter::onStreamEnd(StreamEnd /*end*/) {
  if (recorded_id_ && config_.table) {
    config_.table->release(*recorded_id_);
    recorded_id_.reset();
  }
}

Priority PriorityFilter::decide(HeaderMap& headers) {
  std::vector<std::string_view> lines = fieldLines(headers, config_.policy->header);
  PriorityParseResult parsed = parsePriority(lines);
  RequestInfo& info = callbacks().requestInfo();

  if (parsed.status == PriorityParseStatus::kMalformed) {
    config_.stats->malformed->Increment();
  } else if (parsed.urgency) {
    info.requested_urgency = *parsed.urgency;
  }

  bool peer_trusted = config_.trust.listener == ListenerTrust::kTrusted || peerTrusted();
  TrustDecision trusted = applyTrust(parsed, config_.default_urgency, config_.trust, peer_trusted);
  if (trusted.outcome != TrustOutcome::kUnchanged) {
    config_.stats->clamped->Increment();
  }

  std::optional<std::string> correlation_id;
  if (config_.table) {
    correlation_id = extractCorrelationId(headers, config_.correlation);
    if (correlation_id) {
      info.correlation_id = *correlation_id;
    }
  }

  if (config_.direction == config::Direction::kOutbound) {
    return decideOutbound(parsed, trusted, correlation_id);
  }

  // An urgency that survived the trust rules came from the header; a clamped one still did,
  // at the floor. A stripped or absent one is the route default.
  bool from_header = parsed.urgency && trusted.outcome != TrustOutcome::kStripped;
  source_ = from_header ? PrioritySource::kHeader : PrioritySource::kDefault;
  if (correlation_id) {
    config_.table->record(*correlation_id, trusted.priority.urgency, trusted.priority.hop);
    recorded_id_ = std::move(correlation_id);
  }
  return trusted.priority;
}

Priority PriorityFilter::decideOutbound(const PriorityParseResult& parsed,
                                        const TrustDecision& trusted,
                                        const std::optional<std::string>& correlation_id) {
  if (parsed.urgency && trusted.outcome != TrustOutcome::kStripped) {
    source_ = PrioritySource::kHeader;
    return trusted.priority;
  }

  source_ = PrioritySource::kDefault;
  Priority fallback{.urgency = config_.default_urgency, .hop = 0};
  if (!correlation_id) {
    return fallback;
  }

  OutboundPriority inherited = config_.table->lookupForOutbound(
      *correlation_id, static_cast<int>(config_.policy->max_depth));
  switch (inherited.status) {
  case InheritanceStatus::kInherited:
    source_ = inherited.boosted ? PrioritySource::kBoosted : PrioritySource::kInherited;
    return inherited.priority;
  case InheritanceStatus::kDepthExceeded:
    // The chain ends: the callee gets the route default with the hop it would have had, so
    // its own sub-calls are past the depth as well.
    config_.stats->depth_exceeded->Increment();
    fallback.hop = std::min(inherited.priority.hop, kMaxHop);
    return fallback;
  case InheritanceStatus::kNotFound:
    break;
  }
  return fallback;
}

bool PriorityFilter::peerTrusted() {
  if (config_.trusted_cidrs == nullptr || config_.trusted_cidrs->empty()) {
    return false;
  }
  std::optional<IpAddress> peer = IpAddress::parse(callbacks().requestInfo().downstream_address);
  return peer && cidrListContains(*config_.trusted_cidrs, *peer);
}

void PriorityFilter::count(const Priority& effective) {
  prometheus::Counter* counter =
      config_.stats->requests[static_cast<size_t>(effective.urgency)][static_cast<size_t>(source_)];
  counter->Increment();
}

} // namespace deferd::filters::priority
