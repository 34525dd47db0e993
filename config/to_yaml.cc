// toYaml(): the effective configuration as YAML that loadString() accepts again.
//
// Every field is written, defaults included, with the key names of the input language. Only
// values that have no default and were not given are left out: a route's policy, a match's
// authority, a header matcher's exact value and the two capacity limits.

#include <yaml-cpp/yaml.h>

#include "config/loader.h"
#include "config/values.h"

namespace deferd::config {
namespace {

std::string_view directionName(Direction direction) {
  return direction == Direction::kInbound ? "inbound" : "outbound";
}

std::string_view trustName(Trust trust) {
  return trust == Trust::kTrusted ? "trusted" : "untrusted";
}

std::string_view protocolName(UpstreamProtocol protocol) {
  return protocol == UpstreamProtocol::kHttp1 ? "http1" : "http2";
}

std::string_view lbName(LbPolicy lb) {
  switch (lb) {
  case LbPolicy::kRoundRobin:
    return "round_robin";
  case LbPolicy::kLeastRequest:
    return "least_request";
  case LbPolicy::kEwma:
    return "ewma"; // the loader rejects it, so only a hand-built Config can contain it
  }
  return "round_robin";
}

std::string_view modeName(PolicyMode mode) {
  switch (mode) {
  case PolicyMode::kEnforce:
    return "enforce";
  case PolicyMode::kShadow:
    return "shadow";
  case PolicyMode::kOff:
    return "off";
  }
  return "enforce";
}

// Empty collections read better as "{}" or "[]" on the key's line.
template <typename Container> YAML::EMITTER_MANIP flowIfEmpty(const Container& container) {
  return container.empty() ? YAML::Flow : YAML::Block;
}

// yaml-cpp's emitter takes std::string but not std::string_view.
void emitPair(YAML::Emitter& out, std::string_view key, std::string_view value) {
  out << YAML::Key << std::string(key) << YAML::Value << std::string(value);
}

void emitPair(YAML::Emitter& out, std::string_view key, uint32_t value) {
  out << YAML::Key << std::string(key) << YAML::Value << value;
}

void emitPair(YAML::Emitter& out, std::string_view key, Duration value) {
  emitPair(out, key, formatDuration(value));
}

void emitMutation(YAML::Emitter& out, std::string_view key, const HeaderMutation& mutation) {
  out << YAML::Key << std::string(key) << YAML::Value << YAML::BeginMap;

  out << YAML::Key << "add" << YAML::Value << flowIfEmpty(mutation.add) << YAML::BeginMap;
  for (const auto& [name, value] : mutation.add) {
    emitPair(out, name, value);
  }
  out << YAML::EndMap;

  out << YAML::Key << "remove" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const std::string& name : mutation.remove) {
    out << name;
  }
  out << YAML::EndSeq;

  out << YAML::EndMap;
}

void emitRoute(YAML::Emitter& out, const Route& route) {
  out << YAML::BeginMap;

  out << YAML::Key << "match" << YAML::Value << YAML::BeginMap;
  emitPair(out, "prefix", route.match.prefix);
  if (route.match.authority) {
    emitPair(out, "authority", *route.match.authority);
  }
  out << YAML::Key << "headers" << YAML::Value << flowIfEmpty(route.match.headers)
      << YAML::BeginSeq;
  for (const HeaderMatcher& matcher : route.match.headers) {
    out << YAML::BeginMap;
    emitPair(out, "name", matcher.name);
    if (matcher.exact) {
      emitPair(out, "exact", *matcher.exact);
    }
    out << YAML::Key << "invert" << YAML::Value << matcher.invert;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;

  emitPair(out, "cluster", route.cluster);
  if (route.policy) {
    emitPair(out, "policy", *route.policy);
  }
  if (route.urgency) {
    emitPair(out, "priority", static_cast<uint32_t>(*route.urgency));
  }
  emitPair(out, "timeout", route.timeout);
  emitMutation(out, "request_headers", route.request_headers);
  emitMutation(out, "response_headers", route.response_headers);

  out << YAML::EndMap;
}

void emitListener(YAML::Emitter& out, const Listener& listener) {
  out << YAML::BeginMap;
  emitPair(out, "name", listener.name);
  emitPair(out, "address", listener.address.toString());
  emitPair(out, "direction", directionName(listener.direction));
  emitPair(out, "trust", trustName(listener.trust));
  out << YAML::Key << "trusted_cidrs" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const CidrRange& range : listener.trusted_cidrs) {
    out << range.toString();
  }
  out << YAML::EndSeq;
  if (listener.priority_floor) {
    emitPair(out, "priority_floor", static_cast<uint32_t>(*listener.priority_floor));
  } else {
    emitPair(out, "priority_floor", "strip");
  }
  out << YAML::Key << "generate_request_id" << YAML::Value << listener.generate_request_id;

  const ListenerLimits& limits = listener.limits;
  out << YAML::Key << "limits" << YAML::Value << YAML::BeginMap;
  emitPair(out, "max_connections", limits.max_connections);
  emitPair(out, "max_header_bytes", limits.max_header_bytes);
  emitPair(out, "max_header_count", limits.max_header_count);
  emitPair(out, "header_timeout", limits.header_timeout);
  emitPair(out, "idle_timeout", limits.idle_timeout);
  emitPair(out, "stream_idle_timeout", limits.stream_idle_timeout);
  out << YAML::EndMap;

  const Http2Limits& http2 = listener.http2;
  out << YAML::Key << "http2" << YAML::Value << YAML::BeginMap;
  emitPair(out, "max_concurrent_streams", http2.max_concurrent_streams);
  emitPair(out, "initial_window_size", http2.initial_window_size);
  emitPair(out, "connection_window_size", http2.connection_window_size);
  emitPair(out, "reset_burst", http2.reset_burst);
  emitPair(out, "reset_rate", http2.reset_rate);
  emitPair(out, "max_control_frames", http2.max_control_frames);
  emitPair(out, "max_continuations", http2.max_continuations);
  emitPair(out, "max_empty_frames", http2.max_empty_frames);
  out << YAML::EndMap;

  out << YAML::Key << "routes" << YAML::Value << YAML::BeginSeq;
  for (const Route& route : listener.routes) {
    emitRoute(out, route);
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
}

void emitCluster(YAML::Emitter& out, const Cluster& cluster) {
  out << YAML::BeginMap;
  emitPair(out, "name", cluster.name);
  out << YAML::Key << "endpoints" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const Address& endpoint : cluster.endpoints) {
    out << endpoint.toString();
  }
  out << YAML::EndSeq;
  emitPair(out, "protocol", protocolName(cluster.protocol));
  emitPair(out, "lb", lbName(cluster.lb));
  emitPair(out, "connect_timeout", cluster.connect_timeout);
  emitPair(out, "resolve_every", cluster.resolve_every);
  emitPair(out, "max_connections", cluster.max_connections);
  emitPair(out, "idle_timeout", cluster.pool_idle_timeout);

  out << YAML::Key << "capacity" << YAML::Value << YAML::Flow << YAML::BeginMap;
  if (cluster.capacity.max_concurrent) {
    emitPair(out, "max_concurrent", *cluster.capacity.max_concurrent);
  }
  if (cluster.capacity.max_rps) {
    emitPair(out, "max_rps", formatDecimal(*cluster.capacity.max_rps));
  }
  out << YAML::EndMap;
  out << YAML::EndMap;
}

void emitPriority(YAML::Emitter& out, const PriorityPolicy& priority) {
  out << YAML::Key << "priority" << YAML::Value << YAML::BeginMap;
  emitPair(out, "header", priority.header);
  emitPair(out, "default", static_cast<uint32_t>(priority.default_urgency));
  out << YAML::Key << "classes" << YAML::Value << YAML::Flow << YAML::BeginMap;
  for (const auto& [name, urgency] : priority.classes) {
    emitPair(out, name, static_cast<uint32_t>(urgency));
  }
  out << YAML::EndMap;
  if (priority.inherit) {
    out << YAML::Key << "inherit" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "from" << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (const std::string& source : priority.correlation) {
      out << source;
    }
    out << YAML::EndSeq;
    emitPair(out, "max_depth", priority.max_depth);
    out << YAML::EndMap;
  } else {
    out << YAML::Key << "inherit" << YAML::Value << false;
  }
  if (priority.boost_after) {
    out << YAML::Key << "boost" << YAML::Value << YAML::BeginMap;
    emitPair(out, "after", *priority.boost_after);
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
}

void emitBackpressure(YAML::Emitter& out, const BackpressurePolicy& bp) {
  static constexpr std::string_view kLimiterNames[] = {"gradient", "aimd", "fixed"};
  out << YAML::Key << "backpressure" << YAML::Value << YAML::BeginMap;
  emitPair(out, "limiter", kLimiterNames[static_cast<int>(bp.limiter)]);
  emitPair(out, "initial_limit", bp.initial_limit);
  emitPair(out, "min_limit", bp.min_limit);
  emitPair(out, "max_limit", bp.max_limit);

  out << YAML::Key << "gradient" << YAML::Value << YAML::Flow << YAML::BeginMap;
  emitPair(out, "tolerance", formatDecimal(bp.tolerance));
  emitPair(out, "smoothing", formatDecimal(bp.smoothing));
  out << YAML::EndMap;

  out << YAML::Key << "aimd" << YAML::Value << YAML::Flow << YAML::BeginMap;
  emitPair(out, "increase", bp.increase);
  emitPair(out, "backoff", formatDecimal(bp.backoff));
  if (bp.latency_threshold) {
    emitPair(out, "latency_threshold", *bp.latency_threshold);
  }
  out << YAML::EndMap;

  out << YAML::Key << "queue" << YAML::Value << YAML::Flow << YAML::BeginMap;
  emitPair(out, "max_length", bp.queue_max_length);
  emitPair(out, "max_wait", bp.max_wait);
  emitPair(out, "aging", bp.aging);
  emitPair(out, "on_max_wait", bp.on_max_wait == MaxWaitAction::kReject ? "reject" : "proceed");
  out << YAML::Key << "predict_wait" << YAML::Value << bp.predict_wait;
  out << YAML::EndMap;

  if (bp.deadline_header) {
    emitPair(out, "deadline_header", *bp.deadline_header);
  }
  out << YAML::Key << "emit_signal" << YAML::Value << bp.emit_signal;
  if (bp.signal) {
    const SignalPolicy& signal = *bp.signal;
    out << YAML::Key << "signal" << YAML::Value << YAML::BeginMap;
    emitPair(out, "ttl", signal.ttl);
    emitPair(out, "ewma_half_life", signal.ewma_half_life);
    emitPair(out, "defer_above", formatDecimal(signal.defer_above));
    emitPair(out, "hold_above", signal.hold_above);
    emitPair(out, "resume_below", formatDecimal(signal.resume_below));
    emitPair(out, "hold_below", signal.hold_below);
    out << YAML::EndMap;
  }
  emitPair(out, "all_deferring_scale", formatDecimal(bp.all_deferring_scale));
  out << YAML::EndMap;
}

void emitBreaker(YAML::Emitter& out, const BreakerPolicy& b) {
  static constexpr std::string_view kGrpcNames[] = {"OK",
                                                    "CANCELLED",
                                                    "UNKNOWN",
                                                    "INVALID_ARGUMENT",
                                                    "DEADLINE_EXCEEDED",
                                                    "NOT_FOUND",
                                                    "ALREADY_EXISTS",
                                                    "PERMISSION_DENIED",
                                                    "RESOURCE_EXHAUSTED",
                                                    "FAILED_PRECONDITION",
                                                    "ABORTED",
                                                    "OUT_OF_RANGE",
                                                    "UNIMPLEMENTED",
                                                    "INTERNAL",
                                                    "UNAVAILABLE",
                                                    "DATA_LOSS",
                                                    "UNAUTHENTICATED"};
  out << YAML::Key << "breaker" << YAML::Value << YAML::BeginMap;

  out << YAML::Key << "window" << YAML::Value << YAML::Flow << YAML::BeginMap;
  if (b.window_type == BreakerWindowType::kTime) {
    emitPair(out, "type", "time");
    emitPair(out, "size", b.window_duration);
  } else {
    emitPair(out, "type", "count");
    emitPair(out, "size", b.window_calls);
  }
  emitPair(out, "min_requests", b.min_requests);
  out << YAML::EndMap;

  out << YAML::Key << "open_when" << YAML::Value << YAML::Flow << YAML::BeginMap;
  emitPair(out, "failure_rate", formatPercent(b.failure_rate));
  emitPair(out, "slow_call_rate", formatPercent(b.slow_call_rate));
  if (b.slow_call) {
    emitPair(out, "slow_call", *b.slow_call);
  }
  emitPair(out, "consecutive_failures", b.consecutive_failures);
  out << YAML::EndMap;

  out << YAML::Key << "failure" << YAML::Value << YAML::Flow << YAML::BeginMap;
  out << YAML::Key << "status" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (int status_class : b.failure_status_classes) {
    out << std::to_string(status_class) + "xx";
  }
  for (int status : b.failure_statuses) {
    out << status;
  }
  out << YAML::EndSeq;
  out << YAML::Key << "connect_failure" << YAML::Value << b.failure_connect_failure;
  out << YAML::Key << "reset" << YAML::Value << b.failure_reset;
  out << YAML::Key << "timeout" << YAML::Value << b.failure_timeout;
  out << YAML::Key << "grpc" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (int code : b.failure_grpc) {
    out << std::string(kGrpcNames[code]);
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;

  emitPair(out, "cooldown", b.cooldown);
  emitPair(out, "max_cooldown", b.max_cooldown);
  emitPair(out, "cooldown_multiplier", formatDecimal(b.cooldown_multiplier));
  emitPair(out, "jitter", formatPercent(b.jitter));

  out << YAML::Key << "half_open" << YAML::Value << YAML::Flow << YAML::BeginMap;
  emitPair(out, "probes", b.probes);
  emitPair(out, "timeout", b.probe_timeout);
  out << YAML::EndMap;

  if (b.fallback) {
    out << YAML::Key << "fallback" << YAML::Value << YAML::Flow << YAML::BeginMap;
    emitPair(out, "cluster", *b.fallback);
    emitPair(out, "on_loop", b.on_loop == LoopAction::kReject ? "reject" : "primary");
    out << YAML::Key << "when_deferring" << YAML::Value << b.fallback_when_deferring;
    out << YAML::EndMap;
  }
  if (b.outlier) {
    out << YAML::Key << "outlier" << YAML::Value << YAML::Flow << YAML::BeginMap;
    emitPair(out, "consecutive_failures", b.outlier->consecutive_failures);
    emitPair(out, "base_ejection", b.outlier->base_ejection);
    emitPair(out, "max_ejection", b.outlier->max_ejection);
    emitPair(out, "max_ejection_percent", formatPercent(b.outlier->max_ejection_percent));
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
}

void emitFault(YAML::Emitter& out, const FaultPolicy& fault) {
  out << YAML::Key << "fault" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "delay" << YAML::Value << YAML::Flow << YAML::BeginMap;
  emitPair(out, "percent", formatPercent(fault.delay_share));
  emitPair(out, "duration", fault.delay);
  out << YAML::EndMap;
  out << YAML::Key << "abort" << YAML::Value << YAML::Flow << YAML::BeginMap;
  emitPair(out, "percent", formatPercent(fault.abort_share));
  emitPair(out, "status", fault.abort_status);
  if (fault.grpc_status) {
    emitPair(out, "grpc_status", *fault.grpc_status);
  }
  out << YAML::EndMap;
  out << YAML::Key << "header_control" << YAML::Value << fault.header_control;
  out << YAML::EndMap;
}

void emitPolicy(YAML::Emitter& out, const Policy& policy) {
  out << YAML::Key << policy.name << YAML::Value << YAML::BeginMap;
  emitPair(out, "mode", modeName(policy.mode));
  emitPair(out, "rollout", formatPercent(policy.rollout));
  emitMutation(out, "request_headers", policy.request_headers);
  emitMutation(out, "response_headers", policy.response_headers);
  if (policy.priority) {
    emitPriority(out, *policy.priority);
  }
  if (policy.backpressure) {
    emitBackpressure(out, *policy.backpressure);
  }
  if (policy.breaker) {
    emitBreaker(out, *policy.breaker);
  }
  if (policy.fault) {
    emitFault(out, *policy.fault);
  }
  out << YAML::EndMap;
}

} // namespace

std::string toYaml(const Config& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;

  out << YAML::Key << "node" << YAML::Value << YAML::BeginMap;
  emitPair(out, "service", config.service);
  out << YAML::EndMap;

  out << YAML::Key << "admin" << YAML::Value << YAML::BeginMap;
  emitPair(out, "address", config.admin.address.toString());
  if (config.admin.token_file) {
    emitPair(out, "token_file", *config.admin.token_file);
  }
  out << YAML::EndMap;

  if (config.workers == 0) {
    emitPair(out, "workers", "auto");
  } else {
    emitPair(out, "workers", config.workers);
  }
  emitPair(out, "drain_timeout", config.drain_timeout);

  out << YAML::Key << "log" << YAML::Value << YAML::BeginMap;
  emitPair(out, "level", config.log.level);
  out << YAML::EndMap;

  out << YAML::Key << "access_log" << YAML::Value;
  if (config.access_log.enabled) {
    out << YAML::BeginMap;
    emitPair(out, "path", config.access_log.path);
    out << YAML::EndMap;
  } else {
    out << false;
  }

  out << YAML::Key << "inheritance" << YAML::Value << YAML::BeginMap;
  emitPair(out, "max_entries", config.inheritance.max_entries);
  emitPair(out, "ttl", config.inheritance.ttl);
  emitPair(out, "release_grace", config.inheritance.release_grace);
  out << YAML::EndMap;

  out << YAML::Key << "listeners" << YAML::Value << YAML::BeginSeq;
  for (const Listener& listener : config.listeners) {
    emitListener(out, listener);
  }
  out << YAML::EndSeq;

  out << YAML::Key << "clusters" << YAML::Value << YAML::BeginSeq;
  for (const Cluster& cluster : config.clusters) {
    emitCluster(out, cluster);
  }
  out << YAML::EndSeq;

  out << YAML::Key << "policies" << YAML::Value << flowIfEmpty(config.policies) << YAML::BeginMap;
  for (const auto& [name, policy] : config.policies) {
    emitPolicy(out, policy);
  }
  out << YAML::EndMap;

  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

} // namespace deferd::config
