#include "proxy/snapshot.h"

#include <optional>
#include <random>
#include <string>

#include "filters/backpressure/backpressure_filter.h"
#include "filters/breaker/breaker_filter.h"
#include "filters/fault/fault_filter.h"
#include "filters/headers/header_mutation.h"
#include "filters/priority/priority_filter.h"

namespace deferd {
namespace {

const config::Policy* policyOf(const config::Config& config, const config::Route& route) {
  if (!route.policy) {
    return nullptr;
  }
  auto policy = config.policies.find(*route.policy);
  return policy == config.policies.end() ? nullptr : &policy->second;
}

// A uniform draw in [0, 1) from a generator per thread, so workers never share one.
double uniformDraw() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(engine);
}

// The fault filter runs first: an injected abort or delay happens before any other policy
// takes a slot or records an urgency, as a failure in front of the service would.
void addFaultFilter(const config::Config& config, const config::Listener& listener,
                    const config::Route& route, RouteRuntime& runtime, Metrics& metrics) {
  const config::Policy* policy = policyOf(config, route);
  if (policy == nullptr || !policy->fault || policy->mode == config::PolicyMode::kOff) {
    return;
  }
  const config::FaultPolicy& fault = *policy->fault;
  filters::fault::FaultRouteConfig filter;
  filter.delay_share = fault.delay_share;
  filter.delay = fault.delay;
  filter.abort_share = fault.abort_share;
  filter.abort_status = fault.abort_status;
  filter.grpc_status = fault.grpc_status;
  // Outside callers on an untrusted listener must not be able to inject faults.
  filter.header_control = fault.header_control && listener.trust == config::Trust::kTrusted;
  filter.enforce = policy->mode == config::PolicyMode::kEnforce;
  filter.random = uniformDraw;
  filter.stats = metrics.fault(*route.policy);
  runtime.filters.push_back(
      std::make_shared<filters::fault::FaultFilterFactory>(std::move(filter)));
}

// The priority filter runs right after the fault filter, so every later filter reads the
// request's effective urgency.
void addPriorityFilter(const config::Config& config, const config::Listener& listener,
                       const config::Route& route, RouteRuntime& runtime, Metrics& metrics,
                       FilterState& state) {
  const config::Policy* policy = policyOf(config, route);
  if (policy == nullptr || !policy->priority || policy->mode == config::PolicyMode::kOff) {
    return;
  }
  const config::PriorityPolicy& priority = *policy->priority;

  filters::priority::PriorityRouteConfig filter;
  filter.policy = &priority;
  filter.direction = listener.direction;
  filter.default_urgency = route.urgency.value_or(priority.default_urgency);
  filter.trust.listener = listener.trust == config::Trust::kTrusted
                              ? filters::priority::ListenerTrust::kTrusted
                              : filters::priority::ListenerTrust::kUntrusted;
  filter.trust.untrusted_floor = listener.priority_floor;
  filter.trusted_cidrs = &listener.trusted_cidrs;
  filter.enforce = policy->mode == config::PolicyMode::kEnforce;
  filter.rollout = policy->rollout;
  if (priority.inherit) {
    filter.correlation = filters::priority::correlationSources(priority.correlation);
    filter.table = state.inheritanceTable(config.inheritance);
  }
  filter.stats = metrics.priority(listener.name);
  runtime.filters.push_back(
      std::make_shared<filters::priority::PriorityFilterFactory>(std::move(filter)));
}

// Backpressure runs after priority, so it queues and sheds by the effective urgency.
void addBackpressureFilter(const config::Config& config, const config::Listener& listener,
                           const config::Route& route, RouteRuntime& runtime, Metrics& metrics,
                           FilterState& state) {
  const config::Policy* policy = policyOf(config, route);
  if (policy == nullptr || !policy->backpressure || policy->mode == config::PolicyMode::kOff) {
    return;
  }

  filters::backpressure::BackpressureRouteConfig filter;
  filter.shared = state.backpressure(policy->name, route.cluster, *policy->backpressure, metrics);
  filter.direction = listener.direction;
  filter.enforce = policy->mode == config::PolicyMode::kEnforce;
  filter.rollout = policy->rollout;
  if (policy->priority && policy->priority->boost_after) {
    filter.table = state.inheritanceTable(config.inheritance);
    filter.boost_after = *policy->priority->boost_after;
  }
  filter.endpoints = &state.endpoints();
  runtime.filters.push_back(
      std::make_shared<filters::backpressure::BackpressureFilterFactory>(std::move(filter)));
}

std::optional<size_t> clusterIndex(const config::Config& config, const std::string& name) {
  for (size_t i = 0; i < config.clusters.size(); i++) {
    if (config.clusters[i].name == name) {
      return i;
    }
  }
  return std::nullopt;
}

filters::breaker::BreakerTarget breakerTarget(const config::Config& config,
                                              const config::Policy& policy, size_t cluster_index,
                                              Metrics& metrics, FilterState& state) {
  const config::Cluster& cluster = config.clusters[cluster_index];
  filters::breaker::BreakerTarget target;
  target.cluster = cluster.name;
  target.cluster_index = cluster_index;
  target.stats = metrics.breaker(policy.name, cluster.name);
  FilterState::ClusterBreaker shared =
      state.clusterBreaker(policy.name, cluster, *policy.breaker,
                           policy.mode == config::PolicyMode::kShadow, target.stats);
  target.breaker = std::move(shared.breaker);
  target.outlier = std::move(shared.outlier);
  return target;
}

// The breaker runs after the priority filter, so its local replies are logged with the
// request's urgency, and before the header mutations, which a rejected request never needs.
void addBreakerFilter(const config::Config& config, const config::Route& route,
                      RouteRuntime& runtime, Metrics& metrics, FilterState& state) {
  const config::Policy* policy = policyOf(config, route);
  if (policy == nullptr || !policy->breaker || policy->mode == config::PolicyMode::kOff) {
    return;
  }
  const config::BreakerPolicy& breaker = *policy->breaker;

  filters::breaker::BreakerRouteConfig filter;
  filter.primary = breakerTarget(config, *policy, runtime.cluster_index, metrics, state);
  std::optional<size_t> fallback =
      breaker.fallback ? clusterIndex(config, *breaker.fallback) : std::nullopt;
  if (fallback && *fallback != runtime.cluster_index) {
    filter.fallback = breakerTarget(config, *policy, *fallback, metrics, state);
    filter.capacity = state.fallbackCapacity(config.clusters[*fallback]);
    filter.fallback_requests =
        metrics.breakerFallback(policy->name, route.cluster, *breaker.fallback);
  }
  filter.on_loop = breaker.on_loop == config::LoopAction::kReject
                       ? filters::breaker::LoopPolicy::kReject
                       : filters::breaker::LoopPolicy::kSendToPrimary;
  filter.service = config.service;
  filter.rollout = policy->rollout;
  filter.probe_timeout = breaker.probe_timeout;
  filter.fallback_when_deferring = breaker.fallback_when_deferring;
  filter.endpoints = &state.endpoints();
  runtime.filters.push_back(
      std::make_shared<filters::breaker::BreakerFilterFactory>(std::move(filter)));
}

// The policy's header mutations run first, then the route's, so a route can override a
// policy. A policy in shadow or off mode changes no headers.
void addHeaderFilters(const config::Config& config, const config::Route& route,
                      RouteRuntime& runtime) {
  if (route.policy) {
    auto policy = config.policies.find(*route.policy);
    if (policy != config.policies.end() && policy->second.mode == config::PolicyMode::kEnforce) {
      const config::Policy& p = policy->second;
      if (!filters::HeaderMutationFactory::empty(p.request_headers) ||
          !filters::HeaderMutationFactory::empty(p.response_headers)) {
        runtime.filters.push_back(std::make_shared<filters::HeaderMutationFactory>(
            p.request_headers, p.response_headers));
      }
    }
  }
  if (!filters::HeaderMutationFactory::empty(route.request_headers) ||
      !filters::HeaderMutationFactory::empty(route.response_headers)) {
    runtime.filters.push_back(std::make_shared<filters::HeaderMutationFactory>(
        route.request_headers, route.response_headers));
  }
}

} // namespace

std::shared_ptr<const Snapshot> Snapshot::build(std::shared_ptr<const config::Config> config,
                                                Metrics& metrics, FilterState& state) {
  auto snapshot = std::make_shared<Snapshot>();
  snapshot->config = config;
  snapshot->state = &state;
  state.beginBuild();

  for (const config::Cluster& cluster : config->clusters) {
    snapshot->clusters.push_back(ClusterRuntime{&cluster, metrics.cluster(cluster.name)});
  }

  for (const config::Listener& listener : config->listeners) {
    ListenerRuntime runtime;
    runtime.config = &listener;
    runtime.stats = metrics.listener(listener.name);
    for (const config::Route& route : listener.routes) {
      RouteRuntime route_runtime;
      route_runtime.config = &route;
      for (size_t i = 0; i < config->clusters.size(); i++) {
        if (config->clusters[i].name == route.cluster) {
          route_runtime.cluster_index = i;
        }
      }
      route_runtime.stats = metrics.route(listener.name, route.cluster);
      addFaultFilter(*config, listener, route, route_runtime, metrics);
      addPriorityFilter(*config, listener, route, route_runtime, metrics, state);
      addBreakerFilter(*config, route, route_runtime, metrics, state);
      addBackpressureFilter(*config, listener, route, route_runtime, metrics, state);
      addHeaderFilters(*config, route, route_runtime);
      runtime.routes.push_back(std::move(route_runtime));
    }
    snapshot->listeners.push_back(std::move(runtime));
  }
  state.endBuild();
  return snapshot;
}

} // namespace deferd
