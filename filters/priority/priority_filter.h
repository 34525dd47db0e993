#pragma once

// The priority filter: decides each request's effective urgency and carries it to the next hop.
//
// Inbound (the mesh calls the local app):
//   1. Read the priority header; a malformed one counts and falls back to the route default.
//   2. Apply the trust boundary: on an untrusted listener, a peer outside trusted_cidrs has its
//      urgency clamped to the listener's floor (or its header stripped) and its hop reset.
//   3. Record the result in the inheritance table under the request's correlation id, until
//      the stream ends, so the app's sub-calls made for this request can inherit it.
//   4. Rewrite the header to the effective value, so the app gets exactly what deferd decided.
//
// Outbound (the local app calls another service):
//   1. A priority header set by the app wins, after the listener's trust rules.
//   2. Otherwise, a call whose correlation id is in the table inherits that urgency with
//      hop + 1; a boosted entry passes on its boosted urgency. When hop + 1 would exceed the
//      policy's max_depth, the call gets the route default and the chain ends there.
//   3. Otherwise the route default applies.
//   4. The effective value is written to the header, for the callee's deferd.
//
// The effective urgency, the urgency the header asked for and where the effective one came
// from are written to RequestInfo, for the backpressure queue, the access log and metrics.
//
// Shadow: a request outside the policy's rollout, or under mode shadow, is decided and counted
// the same way, but its headers are left as they came. The inheritance table is recorded in
// every mode, since it changes no request by itself.
//
// Threading: a filter belongs to one stream on one worker. The factory, its config and the
// table are shared by all workers; the table locks itself, the rest is read-only.

#include <prometheus/counter.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "filters/filter.h"
#include "filters/priority/correlation_id.h"
#include "filters/priority/inheritance_table.h"
#include "filters/priority/trust.h"

namespace deferd::filters::priority {

// The origin of a request's effective urgency.
enum class PrioritySource : uint8_t { kHeader, kInherited, kBoosted, kDefault, kCount };

std::string_view prioritySourceName(PrioritySource source);

// Counters of one listener. Every pointer is set by the metrics registry.
struct PriorityStats {
  // deferd_priority_requests_total{listener,urgency,source}
  std::array<std::array<prometheus::Counter*, static_cast<size_t>(PrioritySource::kCount)>, 8>
      requests{};
  prometheus::Counter* clamped = nullptr;        // clamped or stripped at the trust boundary
  prometheus::Counter* malformed = nullptr;      // header present but invalid
  prometheus::Counter* depth_exceeded = nullptr; // inheritance cut off by max_depth
};

// Everything one route's priority filters need, built once per config snapshot.
struct PriorityRouteConfig {
  const config::PriorityPolicy* policy = nullptr; // owned by the snapshot's config
  config::Direction direction = config::Direction::kInbound;
  int default_urgency = kDefaultUrgency; // the route's, else the policy's
  TrustPolicy trust;
  const std::vector<CidrRange>* trusted_cidrs = nullptr; // owned by the snapshot's config
  std::vector<CorrelationSource> correlation;
  bool enforce = true;  // mode enforce; shadow and rollout are decided per request
  double rollout = 1.0; // share of requests enforced, 0..1
  std::shared_ptr<InheritanceTable> table; // null when the policy does not inherit
  PriorityStats* stats = nullptr;
};

class PriorityFilter : public StreamFilter {
public:
  explicit PriorityFilter(const PriorityRouteConfig& config) : config_(config) {}

  FilterStatus onRequestHeaders(HeaderMap& headers) override;
  void onStreamEnd(StreamEnd end) override;

private:
  // Decides the effective priority; sets source_ and the requested urgency in RequestInfo.
  Priority decide(HeaderMap& headers);
  Priority decideOutbound(const PriorityParseResult& parsed, const TrustDecision& trusted,
                          const std::optional<std::string>& correlation_id);
  bool peerTrusted();
  void count(const Priority& effective);

  const PriorityRouteConfig& config_;
  PrioritySource source_ = PrioritySource::kDefault;
  // Set while this inbound request holds an entry in the inheritance table.
  std::optional<std::string> recorded_id_;
};

class PriorityFilterFactory : public FilterFactory {
public:
  explicit PriorityFilterFactory(PriorityRouteConfig config) : config_(std::move(config)) {}

  std::unique_ptr<StreamFilter> createFilter() const override {
    return std::make_unique<PriorityFilter>(config_);
  }

private:
  PriorityRouteConfig config_;
};

// Turns a policy's correlation sources ("traceparent" or a header name) into the filter's form.
std::vector<CorrelationSource> correlationSources(const std::vector<std::string>& names);

} // namespace deferd::filters::priority
