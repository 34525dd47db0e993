#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "config/loader.h"

namespace deferd::config {
namespace {

using Lines = std::vector<std::string>;
using namespace std::chrono_literals;

// Returns the diagnostics of loading `yaml` as "test.yaml", one "file:line:column: message"
// string each, so a failing test prints them all.
Lines errors(const std::string& yaml) {
  LoadResult result = loadString(yaml, "test.yaml");
  Lines lines;
  for (const Diagnostic& diagnostic : result.diagnostics) {
    lines.push_back(diagnostic.toString());
  }
  if (result.ok() != lines.empty()) {
    lines.push_back("result.ok() disagrees with the diagnostics");
  }
  return lines;
}

// Loads `yaml` that must be valid. A failure lists the diagnostics and returns an empty config.
std::shared_ptr<const Config> loadValid(const std::string& yaml) {
  LoadResult result = loadString(yaml, "test.yaml");
  for (const Diagnostic& diagnostic : result.diagnostics) {
    ADD_FAILURE() << diagnostic.toString();
  }
  return result.ok() ? result.config : std::make_shared<const Config>();
}

// The smallest valid config. Tests that need one more key put it above these lines.
const std::string kMinimal = R"(node: { service: demo }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    routes: [ { cluster: app } ]
clusters:
  - name: app
    endpoints: [127.0.0.1:8080]
)";

// A config whose route timeout (line 8, column 18) is `value`.
std::string withRouteTimeout(const std::string& value) {
  return "node: { service: demo }\n"
         "clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]\n"
         "listeners:\n"
         "  - name: inbound\n"
         "    address: 127.0.0.1:15006\n"
         "    routes:\n"
         "      - cluster: app\n"
         "        timeout: " +
         value + "\n";
}

// A config whose policy rollout (line 6, column 14) is `value`.
std::string withRollout(const std::string& value) {
  return "node: { service: demo }\n"
         "clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]\n"
         "listeners: [ { name: in, address: 127.0.0.1:15006, routes: [ { cluster: app } ] } ]\n"
         "policies:\n"
         "  p:\n"
         "    rollout: " +
         value + "\n";
}

// A config whose single cluster endpoint (line 3, column 38) is `value`.
std::string withEndpoint(const std::string& value) {
  return "node: { service: demo }\n"
         "listeners: [ { name: in, address: 127.0.0.1:15006, routes: [ { cluster: app } ] } ]\n"
         "clusters: [ { name: app, endpoints: [" +
         value + "] } ]\n";
}

// A config whose listener address (line 2, column 65) is `value`.
std::string withListenerAddress(const std::string& value) {
  return "node: { service: demo }\n"
         "listeners: [ { name: in, routes: [ { cluster: app } ], address: " +
         value + " } ]\n" + "clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]\n";
}

// A config whose route has `mutation` as request_headers, starting on line 8.
std::string withRequestHeaders(const std::string& mutation) {
  return "node: { service: demo }\n"
         "clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]\n"
         "listeners:\n"
         "  - name: inbound\n"
         "    address: 127.0.0.1:15006\n"
         "    routes:\n"
         "      - cluster: app\n"
         "        request_headers:\n" +
         mutation;
}

// --- Valid configs ---------------------------------------------------------------------------

TEST(ConfigTest, LoadsBenchCandidate) {
  std::shared_ptr<const Config> config = loadValid(R"(
node: { service: bench }
admin: { address: 127.0.0.1:18199 }
workers: 1
access_log: false
listeners:
  - name: h1
    address: 127.0.0.1:18096
    direction: inbound
    routes: [ { match: { prefix: / }, cluster: fast-h1 } ]
  - name: h2c
    address: 127.0.0.1:18097
    direction: inbound
    routes: [ { match: { prefix: / }, cluster: fast-h1 } ]
  - name: h2h2
    address: 127.0.0.1:18098
    direction: inbound
    routes: [ { match: { prefix: / }, cluster: fast-h2 } ]
clusters:
  - { name: fast-h1, endpoints: [127.0.0.1:18080], protocol: http1 }
  - { name: fast-h2, endpoints: [127.0.0.1:18081], protocol: http1 }
)");

  EXPECT_EQ(config->service, "bench");
  EXPECT_EQ(config->admin.address.toString(), "127.0.0.1:18199");
  EXPECT_EQ(config->workers, 1u);
  EXPECT_FALSE(config->access_log.enabled);
  ASSERT_EQ(config->listeners.size(), 3u);
  EXPECT_EQ(config->listeners[0].name, "h1");
  EXPECT_EQ(config->listeners[0].address.port, 18096);
  EXPECT_EQ(config->listeners[2].routes.at(0).cluster, "fast-h2");
  EXPECT_EQ(config->listeners[2].routes.at(0).match.prefix, "/");
  ASSERT_EQ(config->clusters.size(), 2u);
  EXPECT_EQ(config->clusters[1].protocol, UpstreamProtocol::kHttp1);
  EXPECT_EQ(config->clusters[1].endpoints.at(0).toString(), "127.0.0.1:18081");
}

TEST(ConfigTest, AppliesDefaults) {
  std::shared_ptr<const Config> config = loadValid(kMinimal);

  EXPECT_EQ(config->source, "test.yaml");
  EXPECT_EQ(config->admin.address.toString(), "127.0.0.1:9901");
  EXPECT_EQ(config->workers, 0u);
  EXPECT_EQ(config->drain_timeout, 20s);
  EXPECT_EQ(config->log.level, "info");
  EXPECT_TRUE(config->access_log.enabled);
  EXPECT_EQ(config->access_log.path, "-");
  EXPECT_TRUE(config->policies.empty());

  ASSERT_EQ(config->listeners.size(), 1u);
  const Listener& listener = config->listeners[0];
  EXPECT_EQ(listener.direction, Direction::kInbound);
  EXPECT_EQ(listener.trust, Trust::kTrusted);
  EXPECT_EQ(listener.limits.max_connections, 10000u);
  EXPECT_EQ(listener.limits.max_header_bytes, 61440u);
  EXPECT_EQ(listener.limits.max_header_count, 100u);
  EXPECT_EQ(listener.limits.header_timeout, 10s);
  EXPECT_EQ(listener.limits.idle_timeout, 60s);
  EXPECT_EQ(listener.limits.stream_idle_timeout, 300s);
  EXPECT_EQ(listener.location.line, 3);
  EXPECT_EQ(listener.location.column, 5);

  ASSERT_EQ(listener.routes.size(), 1u);
  const Route& route = listener.routes[0];
  EXPECT_EQ(route.match.prefix, "/");
  EXPECT_FALSE(route.match.authority.has_value());
  EXPECT_TRUE(route.match.headers.empty());
  EXPECT_FALSE(route.policy.has_value());
  EXPECT_EQ(route.timeout, 15s);
  EXPECT_TRUE(route.request_headers.add.empty());
  EXPECT_TRUE(route.response_headers.remove.empty());

  ASSERT_EQ(config->clusters.size(), 1u);
  const Cluster& cluster = config->clusters[0];
  EXPECT_EQ(cluster.protocol, UpstreamProtocol::kHttp1);
  EXPECT_EQ(cluster.lb, LbPolicy::kRoundRobin);
  EXPECT_EQ(cluster.connect_timeout, 1s);
  EXPECT_EQ(cluster.resolve_every, 5s);
  EXPECT_EQ(cluster.max_connections, 1024u);
  EXPECT_EQ(cluster.pool_idle_timeout, 60s);
  EXPECT_FALSE(cluster.capacity.max_concurrent.has_value());
  EXPECT_FALSE(cluster.capacity.max_rps.has_value());
}

// Every key of the language with a value other than its default.
const std::string kFull = R"(node: { service: checkout }
admin: { address: "[::1]:0" }
workers: 4
drain_timeout: 45s
log: { level: debug }
access_log: { path: /var/log/deferd/access.log }
listeners:
  - name: inbound
    address: 0.0.0.0:15006
    direction: inbound
    trust: untrusted
    limits:
      max_connections: 500
      max_header_bytes: 8192
      max_header_count: 50
      header_timeout: 2s
      idle_timeout: 30s
      stream_idle_timeout: 1m
    routes:
      - match:
          prefix: /api/
          authority: Inventory.Shop.svc
          headers:
            - { name: X-Canary, exact: "yes" }
            - { name: x-debug }
            - { name: x-tenant, exact: internal, invert: true }
        cluster: inventory
        policy: call-inventory
        timeout: 1500ms
        request_headers:
          add: { X-Caller: checkout, x-empty: "" }
          remove: [X-Debug-Token]
        response_headers:
          add: { x-served-by: deferd }
          remove: [server]
  - name: outbound
    address: "[::1]:15001"
    direction: outbound
    routes: [ { cluster: inventory } ]
clusters:
  - name: inventory
    endpoints: [inventory.shop.svc.cluster.local:8080, "[FD00:0::7]:8080", 10.0.0.7:8080]
    protocol: http1
    lb: least_request
    connect_timeout: 250ms
    resolve_every: 10s
    max_connections: 64
    idle_timeout: 2m
    capacity: { max_concurrent: 50, max_rps: 12.5 }
policies:
  call-inventory:
    mode: shadow
    rollout: 12.5%
    request_headers: { add: { x-policy: call-inventory } }
    response_headers: { remove: [x-internal] }
  idle:
    mode: off
    rollout: 0%
)";

// Priority options in every position: listener trust, route default, policy section, table.
const std::string kPriority = R"(node: { service: checkout }
inheritance: { max_entries: 1000, ttl: 2m, release_grace: 500ms }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    trust: untrusted
    trusted_cidrs: [10.0.0.0/8, "fd00::/8", "::ffff:192.168.0.0/112"]
    priority_floor: low
    routes:
      - { match: { prefix: /admin }, cluster: app, policy: classes, priority: urgent }
      - { cluster: app, policy: defaults }
  - name: outbound
    address: 127.0.0.1:15001
    direction: outbound
    priority_floor: strip
    generate_request_id: false
    routes: [ { cluster: app, policy: classes, priority: 6 } ]
clusters:
  - name: app
    endpoints: [127.0.0.1:8080]
policies:
  defaults:
    priority:
  classes:
    priority:
      header: X-Urgency
      classes: { urgent: 0, bulk: 6 }
      default: bulk
      inherit: { from: [x-request-id, traceparent], max_depth: 2 }
      boost: { after: 50ms }
)";

TEST(ConfigTest, LoadsPrioritySections) {
  std::shared_ptr<const Config> config = loadValid(kPriority);
  ASSERT_EQ(config->listeners.size(), 2u);

  EXPECT_EQ(config->inheritance.max_entries, 1000u);
  EXPECT_EQ(config->inheritance.ttl, 120s);
  EXPECT_EQ(config->inheritance.release_grace, 500ms);

  const Listener& inbound = config->listeners[0];
  ASSERT_EQ(inbound.trusted_cidrs.size(), 3u);
  EXPECT_EQ(inbound.trusted_cidrs[0].toString(), "10.0.0.0/8");
  EXPECT_EQ(inbound.trusted_cidrs[1].toString(), "fd00::/8");
  EXPECT_EQ(inbound.trusted_cidrs[2].toString(), "192.168.0.0/16");
  EXPECT_EQ(inbound.priority_floor, 5);
  EXPECT_EQ(inbound.routes[0].urgency, 0);
  EXPECT_EQ(inbound.routes[1].urgency, std::nullopt);
  EXPECT_EQ(config->listeners[1].priority_floor, std::nullopt);
  EXPECT_EQ(config->listeners[1].routes[0].urgency, 6);
  EXPECT_TRUE(inbound.generate_request_id);
  EXPECT_FALSE(config->listeners[1].generate_request_id);
  EXPECT_NE(toYaml(*config).find("generate_request_id: false"), std::string::npos);

  const PriorityPolicy& defaults = *config->policies.at("defaults").priority;
  EXPECT_EQ(defaults.header, "deferd-priority");
  EXPECT_EQ(defaults.default_urgency, 3);
  EXPECT_EQ(defaults.classes.at("sheddable"), 7);
  EXPECT_TRUE(defaults.inherit);
  EXPECT_EQ(defaults.correlation, (std::vector<std::string>{"traceparent", "x-request-id"}));
  EXPECT_EQ(defaults.max_depth, 3u);
  EXPECT_EQ(defaults.boost_after, std::nullopt);

  const PriorityPolicy& classes = *config->policies.at("classes").priority;
  EXPECT_EQ(classes.header, "x-urgency");
  EXPECT_EQ(classes.classes, (std::map<std::string, int>{{"bulk", 6}, {"urgent", 0}}));
  EXPECT_EQ(classes.default_urgency, 6);
  EXPECT_EQ(classes.correlation, (std::vector<std::string>{"x-request-id", "traceparent"}));
  EXPECT_EQ(classes.max_depth, 2u);
  EXPECT_EQ(classes.boost_after, 50ms);
}

TEST(ConfigTest, PriorityDefaultsWithoutSection) {
  std::shared_ptr<const Config> config = loadValid(kMinimal);
  EXPECT_EQ(config->listeners.at(0).priority_floor, 3);
  EXPECT_TRUE(config->listeners.at(0).trusted_cidrs.empty());
  EXPECT_EQ(config->inheritance.max_entries, 65536u);
  EXPECT_EQ(config->inheritance.ttl, 30s);
}

TEST(ConfigTest, PriorityRoundTrips) {
  std::shared_ptr<const Config> first = loadValid(kPriority);
  std::string yaml = toYaml(*first);
  std::shared_ptr<const Config> second = loadValid(yaml);
  EXPECT_EQ(toYaml(*second), yaml);
  EXPECT_EQ(second->listeners.at(0).routes.at(0).urgency, 0);
  EXPECT_EQ(second->policies.at("classes").priority->default_urgency, 6);
}

const std::string kBackpressure = kMinimal + R"(policies:
  defaults:
    backpressure:
  tuned:
    backpressure:
      limiter: aimd
      min_limit: 4
      max_limit: 512
      gradient: { tolerance: 2, smoothing: 0.5 }
      aimd: { increase: 2, backoff: 0.8, latency_threshold: 250ms }
      queue: { max_length: 50, max_wait: 200ms, aging: 100ms, on_max_wait: proceed,
               predict_wait: false }
      deadline_header: X-Deadline
      emit_signal: true
      signal:
        ttl: 5s
        ewma_half_life: 2s
        defer_above: 0.9
        hold_above: 30s
        resume_below: 0.6
        hold_below: 15s
      all_deferring_scale: 0.25
)";

TEST(ConfigTest, LoadsBackpressureSections) {
  std::shared_ptr<const Config> config = loadValid(kBackpressure);

  const BackpressurePolicy& defaults = *config->policies.at("defaults").backpressure;
  EXPECT_EQ(defaults.limiter, LimiterKind::kGradient);
  EXPECT_EQ(defaults.initial_limit, 20u);
  EXPECT_EQ(defaults.queue_max_length, 1000u);
  EXPECT_EQ(defaults.max_wait, 1s);
  EXPECT_EQ(defaults.tolerance, 1.15);
  EXPECT_TRUE(defaults.predict_wait);
  EXPECT_FALSE(defaults.emit_signal);
  EXPECT_FALSE(defaults.signal.has_value());

  const BackpressurePolicy& tuned = *config->policies.at("tuned").backpressure;
  EXPECT_EQ(tuned.limiter, LimiterKind::kAimd);
  EXPECT_EQ(tuned.min_limit, 4u);
  EXPECT_EQ(tuned.max_limit, 512u);
  EXPECT_EQ(tuned.initial_limit, 20u);
  EXPECT_EQ(tuned.tolerance, 2.0);
  EXPECT_EQ(tuned.smoothing, 0.5);
  EXPECT_EQ(tuned.increase, 2u);
  EXPECT_EQ(tuned.backoff, 0.8);
  EXPECT_EQ(tuned.latency_threshold, 250ms);
  EXPECT_EQ(tuned.queue_max_length, 50u);
  EXPECT_EQ(tuned.max_wait, 200ms);
  EXPECT_EQ(tuned.aging, 100ms);
  EXPECT_EQ(tuned.on_max_wait, MaxWaitAction::kProceed);
  EXPECT_FALSE(tuned.predict_wait);
  EXPECT_EQ(tuned.deadline_header, "x-deadline");
  EXPECT_TRUE(tuned.emit_signal);
  ASSERT_TRUE(tuned.signal.has_value());
  EXPECT_EQ(tuned.signal->ttl, 5s);
  EXPECT_EQ(tuned.signal->ewma_half_life, 2s);
  EXPECT_EQ(tuned.signal->defer_above, 0.9);
  EXPECT_EQ(tuned.signal->hold_above, 30s);
  EXPECT_EQ(tuned.signal->resume_below, 0.6);
  EXPECT_EQ(tuned.signal->hold_below, 15s);
  EXPECT_EQ(tuned.all_deferring_scale, 0.25);
}

TEST(ConfigTest, BackpressureRoundTrips) {
  std::shared_ptr<const Config> first = loadValid(kBackpressure);
  std::string yaml = toYaml(*first);
  std::shared_ptr<const Config> second = loadValid(yaml);
  EXPECT_EQ(toYaml(*second), yaml);
  EXPECT_EQ(second->policies.at("tuned").backpressure->signal->hold_below, 15s);
}

TEST(ConfigTest, AdminTokenFileRoundTrips) {
  std::shared_ptr<const Config> config = loadValid(
      "admin: { address: 0.0.0.0:9901, token_file: /etc/deferd/admin-token }\n" + kMinimal);
  ASSERT_TRUE(config->admin.token_file.has_value());
  EXPECT_EQ(*config->admin.token_file, "/etc/deferd/admin-token");

  std::string yaml = toYaml(*config);
  EXPECT_NE(yaml.find("token_file: /etc/deferd/admin-token"), std::string::npos) << yaml;
  EXPECT_EQ(loadValid(yaml)->admin.token_file, config->admin.token_file);
  EXPECT_FALSE(loadValid(kMinimal)->admin.token_file.has_value());
}

TEST(ConfigTest, AdminTokenFileErrors) {
  EXPECT_EQ(errors("admin: { token_file: \"\" }\n" + kMinimal),
            (Lines{"test.yaml:1:22: admin.token_file: must not be empty; give the path of a file "
                   "that contains the token"}));
}

TEST(ConfigTest, FaultSectionRoundTrips) {
  std::shared_ptr<const Config> config = loadValid(kMinimal + R"(policies:
  p:
    fault:
      delay: { percent: 10%, duration: 200ms }
      abort: { percent: 5%, status: 429, grpc_status: 8 }
      header_control: true
)");
  const FaultPolicy& fault = *config->policies.at("p").fault;
  EXPECT_DOUBLE_EQ(fault.delay_share, 0.1);
  EXPECT_EQ(fault.delay, 200ms);
  EXPECT_DOUBLE_EQ(fault.abort_share, 0.05);
  EXPECT_EQ(fault.abort_status, 429);
  EXPECT_EQ(fault.grpc_status, 8u);
  EXPECT_TRUE(fault.header_control);

  std::string yaml = toYaml(*config);
  EXPECT_EQ(toYaml(*loadValid(yaml)), yaml);
  EXPECT_EQ(*loadValid(yaml)->policies.at("p").fault, fault);
}

TEST(ConfigTest, FaultErrors) {
  Lines found = errors(kMinimal + R"(policies:
  p:
    fault:
      abort: { percent: 5%, status: 200 }
      delay: { duration: 1s }
)");
  ASSERT_EQ(found.size(), 2u) << ::testing::PrintToString(found);
  EXPECT_NE(found[0].find("test.yaml:12:"), std::string::npos) << found[0];
  EXPECT_NE(found[1].find("test.yaml:13:"), std::string::npos) << found[1];
}

TEST(ConfigTest, BackpressureErrors) {
  EXPECT_EQ(errors(kMinimal + R"(policies:
  p:
    backpressure:
      limiter: vegas
      min_limit: 10
      max_limit: 5
      gradient: { tolerance: 0.5 }
      aimd: { backoff: 1.5 }
      queue: { on_max_wait: wait, max_lenght: 3 }
      signal: { defer_above: 0.5, resume_below: 0.8 }
  q:
    backpressure: { min_limit: 10, initial_limit: 2 }
)"),
            (Lines{"test.yaml:12:16: policies.p.backpressure.limiter: invalid value 'vegas'; "
                   "expected gradient, aimd or fixed",
                   "test.yaml:14:18: policies.p.backpressure.max_limit: max_limit 5 is below "
                   "min_limit 10",
                   "test.yaml:15:30: policies.p.backpressure.gradient.tolerance: 0.5 is out of "
                   "range; expected 1 to 100",
                   "test.yaml:16:24: policies.p.backpressure.aimd.backoff: 1.5 is out of range; "
                   "expected 0.1 to 0.99",
                   "test.yaml:17:29: policies.p.backpressure.queue.on_max_wait: invalid value "
                   "'wait'; expected reject or proceed",
                   "test.yaml:17:35: unknown key 'max_lenght' in policies.p.backpressure.queue; "
                   "did you mean 'max_length'?",
                   "test.yaml:18:49: policies.p.backpressure.signal.resume_below: resume_below "
                   "0.8 is above defer_above 0.5; hysteresis needs resume_below <= defer_above",
                   "test.yaml:20:51: policies.q.backpressure.initial_limit: initial_limit 2 is "
                   "outside 10 to 1000"}));
}

const std::string kBreaker = R"(node: { service: checkout }
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    routes:
      - { cluster: inventory, policy: tuned }
      - { cluster: app, policy: defaults }
clusters:
  - name: app
    endpoints: [127.0.0.1:8080]
  - name: inventory
    endpoints: [127.0.0.1:8081]
  - name: inventory-cache
    endpoints: [127.0.0.1:9090]
    capacity: { max_concurrent: 50, max_rps: 200 }
policies:
  defaults:
    breaker:
  tuned:
    breaker:
      window: { type: time, size: 10s, min_requests: 40 }
      open_when:
        failure_rate: 25%
        slow_call_rate: 80%
        slow_call: 500ms
        consecutive_failures: 0
      failure: { status: [5xx, 429], connect_failure: false, reset: true, timeout: false,
                 grpc: [UNAVAILABLE, RESOURCE_EXHAUSTED] }
      cooldown: 30s
      max_cooldown: 10m
      cooldown_multiplier: 1.5
      jitter: 20%
      half_open: { probes: 5, timeout: 2s }
      fallback: { cluster: inventory-cache, on_loop: primary }
      outlier: { consecutive_failures: 3, base_ejection: 10s, max_ejection_percent: 50% }
)";

TEST(ConfigTest, LoadsBreakerSections) {
  std::shared_ptr<const Config> config = loadValid(kBreaker);

  const BreakerPolicy& defaults = *config->policies.at("defaults").breaker;
  EXPECT_EQ(defaults.window_type, BreakerWindowType::kCount);
  EXPECT_EQ(defaults.window_calls, 100u);
  EXPECT_EQ(defaults.min_requests, 20u);
  EXPECT_EQ(defaults.failure_rate, 0.5);
  EXPECT_EQ(defaults.slow_call_rate, 1.0);
  EXPECT_EQ(defaults.slow_call, std::nullopt);
  EXPECT_EQ(defaults.consecutive_failures, 5u);
  EXPECT_EQ(defaults.failure_status_classes, std::vector<int>{5});
  EXPECT_TRUE(defaults.failure_statuses.empty());
  EXPECT_TRUE(defaults.failure_connect_failure);
  EXPECT_EQ(defaults.failure_grpc, (std::vector<int>{14, 4}));
  EXPECT_EQ(defaults.cooldown, 5s);
  EXPECT_EQ(defaults.max_cooldown, 5min);
  EXPECT_EQ(defaults.probes, 3u);
  EXPECT_EQ(defaults.probe_timeout, 5s);
  EXPECT_EQ(defaults.fallback, std::nullopt);
  EXPECT_EQ(defaults.outlier, std::nullopt);

  const BreakerPolicy& tuned = *config->policies.at("tuned").breaker;
  EXPECT_EQ(tuned.window_type, BreakerWindowType::kTime);
  EXPECT_EQ(tuned.window_duration, 10s);
  EXPECT_EQ(tuned.min_requests, 40u);
  EXPECT_EQ(tuned.failure_rate, 0.25);
  EXPECT_EQ(tuned.slow_call_rate, 0.8);
  EXPECT_EQ(tuned.slow_call, 500ms);
  EXPECT_EQ(tuned.consecutive_failures, 0u);
  EXPECT_EQ(tuned.failure_status_classes, std::vector<int>{5});
  EXPECT_EQ(tuned.failure_statuses, std::vector<int>{429});
  EXPECT_FALSE(tuned.failure_connect_failure);
  EXPECT_TRUE(tuned.failure_reset);
  EXPECT_FALSE(tuned.failure_timeout);
  EXPECT_EQ(tuned.failure_grpc, (std::vector<int>{14, 8}));
  EXPECT_EQ(tuned.cooldown, 30s);
  EXPECT_EQ(tuned.max_cooldown, 10min);
  EXPECT_EQ(tuned.cooldown_multiplier, 1.5);
  EXPECT_EQ(tuned.jitter, 0.2);
  EXPECT_EQ(tuned.probes, 5u);
  EXPECT_EQ(tuned.probe_timeout, 2s);
  EXPECT_EQ(tuned.fallback, "inventory-cache");
  EXPECT_EQ(tuned.on_loop, LoopAction::kPrimary);
  ASSERT_TRUE(tuned.outlier.has_value());
  EXPECT_EQ(tuned.outlier->consecutive_failures, 3u);
  EXPECT_EQ(tuned.outlier->base_ejection, 10s);
  EXPECT_EQ(tuned.outlier->max_ejection, 5min);
  EXPECT_EQ(tuned.outlier->max_ejection_percent, 0.5);
}

TEST(ConfigTest, BreakerRoundTrips) {
  std::shared_ptr<const Config> first = loadValid(kBreaker);
  std::string yaml = toYaml(*first);
  std::shared_ptr<const Config> second = loadValid(yaml);
  EXPECT_EQ(toYaml(*second), yaml);
  EXPECT_EQ(*second->policies.at("tuned").breaker, *first->policies.at("tuned").breaker);
  EXPECT_EQ(*second->policies.at("defaults").breaker, *first->policies.at("defaults").breaker);
}

TEST(ConfigTest, BreakerErrors) {
  EXPECT_EQ(errors(R"(node: { service: checkout }
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    routes: [ { cluster: app, policy: p }, { cluster: app, policy: q } ]
clusters:
  - { name: app, endpoints: [127.0.0.1:8080], capacity: { max_rps: 10 } }
  - { name: bare, endpoints: [127.0.0.1:8081] }
policies:
  p:
    breaker:
      window: { type: sliding, size: 0 }
      open_when: { failure_rate: 150%, slow_cal: 1s }
      failure: { status: [5xx, 99], grpc: [UNAVAILABLE, NOPE] }
      cooldown: 1m
      max_cooldown: 10s
      half_open: { probes: 0 }
      fallback: { cluster: bare, on_loop: bounce }
  q:
    breaker: { fallback: { cluster: app } }
  r:
    breaker: { fallback: { cluster: missing } }
)"),
            (Lines{"test.yaml:5:44: listeners[0].routes[1]: policy 'q' falls back to cluster "
                   "'app', the route's own cluster; a fallback must be another cluster",
                   "test.yaml:12:23: policies.p.breaker.window.type: invalid value 'sliding'; "
                   "expected count or time",
                   "test.yaml:12:38: policies.p.breaker.window.size: 0 is out of range; expected "
                   "1 to 100000",
                   "test.yaml:13:34: policies.p.breaker.open_when.failure_rate: invalid "
                   "percentage '150%': must be from 0% to 100%",
                   "test.yaml:13:40: unknown key 'slow_cal' in policies.p.breaker.open_when; did "
                   "you mean 'slow_call'?",
                   "test.yaml:14:32: policies.p.breaker.failure.status[1]: 99 is out of range; "
                   "expected 100 to 599",
                   "test.yaml:14:57: policies.p.breaker.failure.grpc[1]: invalid value 'NOPE'; "
                   "expected OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, "
                   "NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, "
                   "FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, "
                   "UNAVAILABLE, DATA_LOSS or UNAUTHENTICATED",
                   "test.yaml:16:21: policies.p.breaker.max_cooldown: max_cooldown 10s is below "
                   "cooldown 1m",
                   "test.yaml:17:28: policies.p.breaker.half_open.probes: 0 is out of range; "
                   "expected 1 to 1000",
                   "test.yaml:18:28: policies.p.breaker.fallback.cluster: fallback cluster "
                   "'bare' declares no capacity; give it 'capacity: { max_concurrent, max_rps }' "
                   "so the breaker knows how much traffic it may send there",
                   "test.yaml:18:43: policies.p.breaker.fallback.on_loop: invalid value "
                   "'bounce'; expected reject or primary",
                   "test.yaml:22:37: policies.r.breaker.fallback.cluster: cluster 'missing' not "
                   "found in 'clusters'"}));
}

TEST(ConfigTest, PriorityErrors) {
  EXPECT_EQ(errors(R"(node: { service: demo }
inheritance: { ttl: 0s, max_entries: 0 }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    trusted_cidrs: [10.0.0.1/8, nonsense, 7]
    priority_floor: urgent
    routes:
      - { cluster: app, policy: p, priority: 9 }
      - { cluster: app, priority: high }
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
policies:
  p:
    priority:
      classes: { gold: 8, silver: 1 }
      default: bronze
      inherit: { from: [], max_depth: 100, ttl: 5s }
      boost: {}
)"),
            (Lines{"test.yaml:2:21: inheritance.ttl: invalid duration '0s': must be greater "
                   "than 0",
                   "test.yaml:2:38: inheritance.max_entries: 0 is out of range; expected 1 to "
                   "16777216",
                   "test.yaml:6:21: listeners[0].trusted_cidrs[0]: invalid CIDR range "
                   "'10.0.0.1/8': bits past the prefix length are set; did you mean 10.0.0.0/8?",
                   "test.yaml:6:33: listeners[0].trusted_cidrs[1]: invalid CIDR range "
                   "'nonsense': missing prefix length; write a single address as /32 (IPv4) or "
                   "/128 (IPv6)",
                   "test.yaml:6:43: listeners[0].trusted_cidrs[2]: invalid CIDR range '7': "
                   "missing prefix length; write a single address as /32 (IPv4) or /128 (IPv6)",
                   "test.yaml:7:21: listeners[0].priority_floor: expected a class (critical, high, "
                   "low, normal, sheddable) or an urgency from 0 to 7, found 'urgent'",
                   "test.yaml:9:46: listeners[0].routes[0].priority: expected a class (silver) or "
                   "an urgency from 0 to 7, found '9'",
                   "test.yaml:10:25: listeners[0].routes[1].priority: a route's priority needs a "
                   "policy with a 'priority' section, which reads and uses it",
                   "test.yaml:15:24: policies.p.priority.classes.gold: 8 is out of range; "
                   "expected 0 to 7",
                   "test.yaml:16:16: policies.p.priority.default: expected a class (silver) or an "
                   "urgency from 0 to 7, found 'bronze'",
                   "test.yaml:17:24: policies.p.priority.inherit.from: must name at least one "
                   "source, such as traceparent or x-request-id",
                   "test.yaml:17:39: policies.p.priority.inherit.max_depth: 100 is out of range; "
                   "expected 0 to 64",
                   "test.yaml:17:44: policies.p.priority.inherit.ttl: one inheritance table "
                   "serves every policy; set its ttl in the top-level 'inheritance' section",
                   "test.yaml:18:14: missing required key 'after' in policies.p.priority.boost"}));
}

TEST(ConfigTest, LoadsEveryKey) {
  std::shared_ptr<const Config> config = loadValid(kFull);

  EXPECT_EQ(config->service, "checkout");
  EXPECT_EQ(config->admin.address.host, "::1");
  EXPECT_EQ(config->admin.address.port, 0);
  EXPECT_EQ(config->workers, 4u);
  EXPECT_EQ(config->drain_timeout, 45s);
  EXPECT_EQ(config->log.level, "debug");
  EXPECT_TRUE(config->access_log.enabled);
  EXPECT_EQ(config->access_log.path, "/var/log/deferd/access.log");

  ASSERT_EQ(config->listeners.size(), 2u);
  const Listener& inbound = config->listeners[0];
  EXPECT_EQ(inbound.address.toString(), "0.0.0.0:15006");
  EXPECT_EQ(inbound.trust, Trust::kUntrusted);
  EXPECT_EQ(inbound.limits.max_connections, 500u);
  EXPECT_EQ(inbound.limits.max_header_bytes, 8192u);
  EXPECT_EQ(inbound.limits.max_header_count, 50u);
  EXPECT_EQ(inbound.limits.header_timeout, 2s);
  EXPECT_EQ(inbound.limits.idle_timeout, 30s);
  EXPECT_EQ(inbound.limits.stream_idle_timeout, 60s);
  EXPECT_EQ(config->listeners[1].direction, Direction::kOutbound);
  EXPECT_EQ(config->listeners[1].address.toString(), "[::1]:15001");

  ASSERT_EQ(inbound.routes.size(), 1u);
  const Route& route = inbound.routes[0];
  EXPECT_EQ(route.match.prefix, "/api/");
  EXPECT_EQ(route.match.authority, "inventory.shop.svc");
  ASSERT_EQ(route.match.headers.size(), 3u);
  EXPECT_EQ(route.match.headers[0].name, "x-canary");
  EXPECT_EQ(route.match.headers[0].exact, "yes");
  EXPECT_FALSE(route.match.headers[0].invert);
  EXPECT_FALSE(route.match.headers[1].exact.has_value());
  EXPECT_TRUE(route.match.headers[2].invert);
  EXPECT_EQ(route.policy, "call-inventory");
  EXPECT_EQ(route.timeout, 1500ms);
  using Header = std::pair<std::string, std::string>;
  EXPECT_EQ(route.request_headers.add,
            (std::vector<Header>{{"x-caller", "checkout"}, {"x-empty", ""}}));
  EXPECT_EQ(route.request_headers.remove, std::vector<std::string>{"x-debug-token"});
  EXPECT_EQ(route.response_headers.add, (std::vector<Header>{{"x-served-by", "deferd"}}));
  EXPECT_EQ(route.response_headers.remove, std::vector<std::string>{"server"});

  const Cluster* cluster = config->findCluster("inventory");
  ASSERT_NE(cluster, nullptr);
  ASSERT_EQ(cluster->endpoints.size(), 3u);
  EXPECT_EQ(cluster->endpoints[0].host, "inventory.shop.svc.cluster.local");
  EXPECT_EQ(cluster->endpoints[1].host, "fd00::7");
  EXPECT_EQ(cluster->endpoints[2].toString(), "10.0.0.7:8080");
  EXPECT_EQ(cluster->protocol, UpstreamProtocol::kHttp1);
  EXPECT_EQ(cluster->lb, LbPolicy::kLeastRequest);
  EXPECT_EQ(cluster->connect_timeout, 250ms);
  EXPECT_EQ(cluster->resolve_every, 10s);
  EXPECT_EQ(cluster->max_connections, 64u);
  EXPECT_EQ(cluster->pool_idle_timeout, 120s);
  EXPECT_EQ(cluster->capacity.max_concurrent, 50u);
  EXPECT_EQ(cluster->capacity.max_rps, 12.5);

  ASSERT_EQ(config->policies.size(), 2u);
  const Policy& policy = config->policies.at("call-inventory");
  EXPECT_EQ(policy.name, "call-inventory");
  EXPECT_EQ(policy.mode, PolicyMode::kShadow);
  EXPECT_DOUBLE_EQ(policy.rollout, 0.125);
  EXPECT_EQ(policy.request_headers.add, (std::vector<Header>{{"x-policy", "call-inventory"}}));
  EXPECT_EQ(policy.response_headers.remove, std::vector<std::string>{"x-internal"});
  EXPECT_EQ(policy.location.line, 52);
  EXPECT_EQ(config->policies.at("idle").mode, PolicyMode::kOff);
  EXPECT_EQ(config->policies.at("idle").rollout, 0.0);
}

TEST(ConfigTest, WorkersAutoMeansOnePerCore) {
  EXPECT_EQ(loadValid("workers: auto\n" + kMinimal)->workers, 0u);
  EXPECT_EQ(loadValid("workers: 0\n" + kMinimal)->workers, 0u);
  EXPECT_EQ(loadValid("workers: 256\n" + kMinimal)->workers, 256u);
}

TEST(ConfigTest, AccessLogForms) {
  std::shared_ptr<const Config> on = loadValid("access_log: true\n" + kMinimal);
  EXPECT_TRUE(on->access_log.enabled);
  EXPECT_EQ(on->access_log.path, "-");

  std::shared_ptr<const Config> off = loadValid("access_log: false\n" + kMinimal);
  EXPECT_FALSE(off->access_log.enabled);

  std::shared_ptr<const Config> file = loadValid("access_log: { path: /tmp/a.log }\n" + kMinimal);
  EXPECT_TRUE(file->access_log.enabled);
  EXPECT_EQ(file->access_log.path, "/tmp/a.log");

  std::shared_ptr<const Config> stdout_path = loadValid("access_log: { path: '-' }\n" + kMinimal);
  EXPECT_TRUE(stdout_path->access_log.enabled);
  EXPECT_EQ(stdout_path->access_log.path, "-");
}

TEST(ConfigTest, AddressToString) {
  EXPECT_EQ((Address{"127.0.0.1", 8080}).toString(), "127.0.0.1:8080");
  EXPECT_EQ((Address{"::1", 9901}).toString(), "[::1]:9901");
  EXPECT_EQ((Address{"inventory", 0}).toString(), "inventory:0");
}

TEST(ConfigTest, FindClusterByName) {
  std::shared_ptr<const Config> config = loadValid(kFull);
  EXPECT_NE(config->findCluster("inventory"), nullptr);
  EXPECT_EQ(config->findCluster("missing"), nullptr);
}

TEST(ConfigTest, ListenerPortZeroAllowed) {
  std::shared_ptr<const Config> config = loadValid(R"(node: { service: demo }
admin: { address: 127.0.0.1:0 }
listeners:
  - { name: a, address: 127.0.0.1:0, routes: [ { cluster: app } ] }
  - { name: b, address: 127.0.0.1:0, routes: [ { cluster: app } ] }
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
)");
  EXPECT_EQ(config->admin.address.port, 0);
  EXPECT_EQ(config->listeners.at(1).address.port, 0);
}

// --- Files -----------------------------------------------------------------------------------

TEST(ConfigTest, LoadFileReportsMissingFile) {
  LoadResult result = loadFile("/nonexistent/deferd.yaml");
  EXPECT_FALSE(result.ok());
  ASSERT_EQ(result.diagnostics.size(), 1u);
  EXPECT_EQ(result.diagnostics[0].toString(),
            "/nonexistent/deferd.yaml: failed to open file: No such file or directory");
}

TEST(ConfigTest, LoadFileNamesFileInDiagnostics) {
  std::filesystem::path path = std::filesystem::temp_directory_path() /
                               ("config_test_" + std::to_string(getpid()) + ".yaml");
  {
    std::ofstream file(path);
    file << "wokers: 2\n" << kMinimal;
  }
  LoadResult result = loadFile(path.string());
  std::filesystem::remove(path);

  ASSERT_EQ(result.diagnostics.size(), 1u);
  EXPECT_EQ(result.diagnostics[0].toString(),
            path.string() + ":1:1: unknown key 'wokers' in the top-level map; did you mean "
                            "'workers'?");
}

// The examples shipped in config/examples, found next to this source file.
TEST(ConfigTest, ExamplesValidate) {
  std::filesystem::path examples =
      std::filesystem::path(__FILE__).parent_path() / "../../config/examples";
  for (const char* name : {"demo.yaml", "bench.yaml", "split/deferd.yaml"}) {
    LoadResult result = loadFile((examples / name).string());
    EXPECT_TRUE(result.ok()) << name;
    for (const Diagnostic& diagnostic : result.diagnostics) {
      ADD_FAILURE() << diagnostic.toString();
    }
  }
}

// --- toYaml ----------------------------------------------------------------------------------

TEST(ConfigTest, ToYamlRoundTrips) {
  std::shared_ptr<const Config> first = loadValid(kFull);
  std::string yaml = toYaml(*first);
  std::shared_ptr<const Config> second = loadValid(yaml);

  EXPECT_EQ(toYaml(*second), yaml);
  EXPECT_EQ(second->admin.address.toString(), "[::1]:0");
  EXPECT_EQ(second->listeners.at(0).routes.at(0).match.headers.at(2).invert, true);
  EXPECT_EQ(second->listeners.at(0).routes.at(0).request_headers.add.at(1).second, "");
  EXPECT_EQ(second->clusters.at(0).capacity.max_rps, 12.5);
  EXPECT_EQ(second->policies.at("call-inventory").rollout,
            first->policies.at("call-inventory").rollout);
}

TEST(ConfigTest, ToYamlSpellsOutDefaults) {
  std::string yaml = toYaml(*loadValid(kMinimal));

  for (const char* line : {"workers: auto",
                           "drain_timeout: 20s",
                           "level: info",
                           "access_log:\n  path: \"-\"",
                           "address: 127.0.0.1:9901",
                           "direction: inbound",
                           "trust: trusted",
                           "max_connections: 10000",
                           "max_header_bytes: 61440",
                           "max_header_count: 100",
                           "header_timeout: 10s",
                           "idle_timeout: 1m",
                           "stream_idle_timeout: 5m",
                           "prefix: /",
                           "timeout: 15s",
                           "protocol: http1",
                           "lb: round_robin",
                           "connect_timeout: 1s",
                           "resolve_every: 5s",
                           "max_connections: 1024",
                           "capacity: {}",
                           "policies: {}"}) {
    EXPECT_NE(yaml.find(line), std::string::npos) << line << "\n" << yaml;
  }
  EXPECT_EQ(toYaml(*loadValid(yaml)), yaml);
}

TEST(ConfigTest, ToYamlWritesDisabledAccessLog) {
  std::string yaml = toYaml(*loadValid("access_log: false\n" + kMinimal));
  EXPECT_NE(yaml.find("access_log: false\n"), std::string::npos) << yaml;
}

TEST(ConfigTest, ToYamlKeepsOddPercentagesExact) {
  for (const char* rollout : {"7%", "33.3%", "0.01%", "99.99%", "100%"}) {
    std::shared_ptr<const Config> first =
        loadValid(kMinimal + "policies: { p: { rollout: " + rollout + " } }\n");
    std::shared_ptr<const Config> second = loadValid(toYaml(*first));
    EXPECT_EQ(second->policies.at("p").rollout, first->policies.at("p").rollout) << rollout;
  }
}

// --- Structure errors ------------------------------------------------------------------------

TEST(ConfigTest, InvalidYamlPointsAtMark) {
  EXPECT_EQ(errors("node: [1\nworkers: 2\n"),
            Lines{"test.yaml:2:8: invalid YAML: end of sequence flow not found"});
}

TEST(ConfigTest, EmptyFileIsInvalid) {
  EXPECT_EQ(errors(""), Lines{"test.yaml:1:1: the file contains no configuration"});
  EXPECT_EQ(errors("# only a comment\n"),
            Lines{"test.yaml:1:1: the file contains no configuration"});
}

TEST(ConfigTest, SecondDocumentIsInvalid) {
  EXPECT_EQ(errors(kMinimal + "---\nworkers: 1\n"),
            Lines{"test.yaml:10:1: the file contains 2 YAML documents; a configuration is "
                  "exactly one document"});
}

TEST(ConfigTest, SecondDocumentKeepsFirstChecked) {
  EXPECT_EQ(errors("wokers: 2\n" + kMinimal + "---\nworkers: 1\n"),
            (Lines{"test.yaml:1:1: unknown key 'wokers' in the top-level map; did you mean "
                   "'workers'?",
                   "test.yaml:11:1: the file contains 2 YAML documents; a configuration is "
                   "exactly one document"}));
}

TEST(ConfigTest, TopLevelMustBeMap) {
  EXPECT_EQ(errors("- node\n"), Lines{"test.yaml:1:1: expected a map, found a list"});
}

TEST(ConfigTest, UnknownKeySuggestsNearest) {
  EXPECT_EQ(errors("wokers: 2\n" + kMinimal),
            Lines{"test.yaml:1:1: unknown key 'wokers' in the top-level map; did you mean "
                  "'workers'?"});
  EXPECT_EQ(errors(R"(node: { service: demo }
listeners:
  - name: inbound
    adress: 127.0.0.1:15006
    address: 127.0.0.1:15006
    routes: [ { cluster: app, Timeout: 1s } ]
clusters: [ { name: app, endpoints: [127.0.0.1:8080], lb_policy: round_robin } ]
)"),
            (Lines{"test.yaml:4:5: unknown key 'adress' in listeners[0]; did you mean 'address'?",
                   "test.yaml:6:31: unknown key 'Timeout' in listeners[0].routes[0]; did you mean "
                   "'timeout'?",
                   "test.yaml:7:55: unknown key 'lb_policy' in clusters[0]"}));
}

TEST(ConfigTest, UnknownKeyWithoutCloseMatch) {
  EXPECT_EQ(errors("tracing: { sample: 1% }\n" + kMinimal),
            Lines{"test.yaml:1:1: unknown key 'tracing' in the top-level map"});
}

TEST(ConfigTest, DuplicateKeyPointsAtSecond) {
  EXPECT_EQ(errors("workers: 1\nworkers: 2\n" + kMinimal),
            Lines{"test.yaml:2:1: duplicate key 'workers' in the top-level map; first defined "
                  "at line 1"});
}

TEST(ConfigTest, MissingRequiredKeys) {
  EXPECT_EQ(errors("workers: 1\n"),
            (Lines{"test.yaml:1:1: missing required key 'node' in the top-level map",
                   "test.yaml:1:1: missing required key 'listeners' in the top-level map"}));
  EXPECT_EQ(errors(R"(node: {}
listeners:
  - routes: [ { match: { prefix: / } } ]
clusters:
  - protocol: http1
)"),
            (Lines{"test.yaml:1:7: missing required key 'service' in node",
                   "test.yaml:3:5: missing required key 'name' in listeners[0]",
                   "test.yaml:3:5: missing required key 'address' in listeners[0]",
                   "test.yaml:3:15: missing required key 'cluster' in listeners[0].routes[0]",
                   "test.yaml:5:5: missing required key 'name' in clusters[0]",
                   "test.yaml:5:5: missing required key 'endpoints' in clusters[0]"}));
}

TEST(ConfigTest, WrongTypes) {
  EXPECT_EQ(errors(R"(node: checkout
listeners: { name: inbound }
clusters: [ { name: app, endpoints: 127.0.0.1:8080 } ]
policies: [ p ]
)"),
            (Lines{"test.yaml:1:7: node: expected a map, found 'checkout'",
                   "test.yaml:2:12: listeners: expected a list of listeners, found a map",
                   "test.yaml:3:37: clusters[0].endpoints: expected a list of host:port "
                   "endpoints, found '127.0.0.1:8080'",
                   "test.yaml:4:11: policies: expected a map of policy names to policies, found "
                   "a list"}));
  EXPECT_EQ(errors(R"(node: { service: [a, b] }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    limits: [ 100 ]
    routes: { cluster: app }
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
)"),
            (Lines{"test.yaml:1:18: node.service: expected a string, found a list",
                   "test.yaml:5:13: listeners[0].limits: expected a map, found a list",
                   "test.yaml:6:13: listeners[0].routes: expected a list of routes, found a map"}));
}

TEST(ConfigTest, EmptyValueReportsKey) {
  EXPECT_EQ(errors("log:\n" + kMinimal), Lines{"test.yaml:1:1: log: expected a map, found an "
                                               "empty value"});
}

TEST(ConfigTest, EmptyListsAreInvalid) {
  EXPECT_EQ(errors("node: { service: demo }\nlisteners: []\n"),
            Lines{"test.yaml:2:12: listeners: must contain at least one listener"});
  EXPECT_EQ(errors(R"(node: { service: demo }
listeners: [ { name: in, address: 127.0.0.1:15006, routes: [] } ]
clusters: [ { name: app, endpoints: [] } ]
)"),
            (Lines{"test.yaml:2:60: listeners[0].routes: must contain at least one route",
                   "test.yaml:3:37: clusters[0].endpoints: must contain at least one endpoint"}));
}

TEST(ConfigTest, ReportsAllProblemsInOrder) {
  EXPECT_EQ(errors(R"(node: { service: demo }
workers: many
listeners:
  - name: inbound
    address: 127.0.0.1:99999
    routes: [ { cluster: app, timeout: 5 } ]
clusters: [ { name: app, endpoints: [127.0.0.1:8080], lb: ewma } ]
drain_timeout: soon
)"),
            (Lines{"test.yaml:2:10: workers: expected 'auto' or a whole number from 0 to 256, "
                   "found 'many'",
                   "test.yaml:5:14: listeners[0].address: invalid address '127.0.0.1:99999': "
                   "invalid port '99999'; expected 0 to 65535",
                   "test.yaml:6:40: listeners[0].routes[0].timeout: invalid duration '5': "
                   "missing unit; expected a number with unit ms, s, m or h, such as 250ms, "
                   "1.5s, 2m or 1h",
                   "test.yaml:7:59: clusters[0].lb: 'ewma' is not supported yet; use round_robin "
                   "or least_request",
                   "test.yaml:8:16: drain_timeout: invalid duration 'soon': expected a number "
                   "with unit ms, s, m or h, such as 250ms, 1.5s, 2m or 1h"}));
}

TEST(ConfigTest, DiagnosticWithoutPosition) {
  Diagnostic diagnostic{Location{"a.yaml", 0, 0}, "failed to open file"};
  EXPECT_EQ(diagnostic.toString(), "a.yaml: failed to open file");
  Diagnostic positioned{Location{"a.yaml", 3, 7}, "bad"};
  EXPECT_EQ(positioned.toString(), "a.yaml:3:7: bad");
}

// --- Scalars ---------------------------------------------------------------------------------

struct DurationCase {
  std::string text;
  Duration expected;
};

TEST(ConfigTest, ValidDurations) {
  for (const DurationCase& c : std::vector<DurationCase>{{"250ms", 250ms},
                                                         {"1ms", 1ms},
                                                         {"1s", 1s},
                                                         {"1.5s", 1500ms},
                                                         {"0.25s", 250ms},
                                                         {"1.000s", 1s},
                                                         {"2m", 120s},
                                                         {"1.5m", 90s},
                                                         {"1h", 3600s},
                                                         {"0.001s", 1ms},
                                                         {"007s", 7s},
                                                         {"\"30s\"", 30s},
                                                         {"720h", 720h}}) {
    std::shared_ptr<const Config> config = loadValid(withRouteTimeout(c.text));
    EXPECT_EQ(config->listeners.at(0).routes.at(0).timeout, c.expected) << c.text;
  }
}

struct ErrorCase {
  std::string text;
  std::string message; // after "test.yaml:line:column: path: "
};

TEST(ConfigTest, InvalidDurations) {
  const std::string form =
      "expected a number with unit ms, s, m or h, such as 250ms, 1.5s, 2m or 1h";
  for (const ErrorCase& c : std::vector<ErrorCase>{
           {"5", "invalid duration '5': missing unit; " + form},
           {"1.5", "invalid duration '1.5': missing unit; " + form},
           {"-1s", "invalid duration '-1s': must not be negative; " + form},
           {"soon", "invalid duration 'soon': " + form},
           {"1 s", "invalid duration '1 s': unknown unit ' s'; " + form},
           {"1S", "invalid duration '1S': unknown unit 'S'; " + form},
           {"1d", "invalid duration '1d': unknown unit 'd'; " + form},
           {"1.s", "invalid duration '1.s': " + form},
           {".5s", "invalid duration '.5s': " + form},
           {"1.5ms", "invalid duration '1.5ms': not a whole number of milliseconds"},
           {"0.0001s", "invalid duration '0.0001s': not a whole number of milliseconds"},
           {"1.0000000001h", "invalid duration '1.0000000001h': not a whole number of "
                             "milliseconds"},
           {"0s", "invalid duration '0s': must be greater than 0"},
           {"0ms", "invalid duration '0ms': must be greater than 0"},
           {"721h", "invalid duration '721h': must be at most 720h"},
           {"99999999999999999999h", "invalid duration '99999999999999999999h': must be at most "
                                     "720h"},
           {"\"\"", "invalid duration '': " + form},
       }) {
    EXPECT_EQ(errors(withRouteTimeout(c.text)),
              Lines{"test.yaml:8:18: listeners[0].routes[0].timeout: " + c.message})
        << c.text;
  }
  EXPECT_EQ(errors(withRouteTimeout("[1s]")),
            Lines{"test.yaml:8:18: listeners[0].routes[0].timeout: expected a string, found a "
                  "list"});
}

TEST(ConfigTest, ValidPercentages) {
  struct PercentCase {
    std::string text;
    double expected;
  };
  for (const PercentCase& c : std::vector<PercentCase>{{"0%", 0.0},
                                                       {"50%", 0.5},
                                                       {"12.5%", 0.125},
                                                       {"100%", 1.0},
                                                       {"100.0%", 1.0},
                                                       {"0.1%", 0.001}}) {
    std::shared_ptr<const Config> config = loadValid(withRollout(c.text));
    EXPECT_DOUBLE_EQ(config->policies.at("p").rollout, c.expected) << c.text;
  }
}

TEST(ConfigTest, InvalidPercentages) {
  const std::string form =
      "expected a number from 0% to 100% with a '%' sign, such as 50% or 12.5%";
  for (const ErrorCase& c : std::vector<ErrorCase>{
           {"150%", "invalid percentage '150%': must be from 0% to 100%"},
           {"100.01%", "invalid percentage '100.01%': must be from 0% to 100%"},
           {"abc", "invalid percentage 'abc': " + form},
           {"50", "invalid percentage '50': missing '%'; " + form},
           {"0.5", "invalid percentage '0.5': missing '%'; " + form},
           {"-5%", "invalid percentage '-5%': " + form},
           {"50 %", "invalid percentage '50 %': " + form},
           {"\"%\"", "invalid percentage '%': " + form},
       }) {
    EXPECT_EQ(errors(withRollout(c.text)),
              Lines{"test.yaml:6:14: policies.p.rollout: " + c.message})
        << c.text;
  }
}

TEST(ConfigTest, InvalidEndpoints) {
  const std::string form = "expected host:port, such as 127.0.0.1:8080 or [::1]:8080";
  for (const ErrorCase& c : std::vector<ErrorCase>{
           {"127.0.0.1", "invalid address '127.0.0.1': missing port; " + form},
           {"\"127.0.0.1:\"", "invalid address '127.0.0.1:': missing port; " + form},
           {":8080", "invalid address ':8080': missing host; " + form},
           {"127.0.0.1:65536",
            "invalid address '127.0.0.1:65536': invalid port '65536'; expected 0 to 65535"},
           {"127.0.0.1:http",
            "invalid address '127.0.0.1:http': invalid port 'http'; expected 0 to 65535"},
           {"127.0.0.1:0", "invalid address '127.0.0.1:0': port 0 is only allowed in listener "
                           "and admin addresses"},
           {"::1:8080",
            "invalid address '::1:8080': IPv6 addresses must be in brackets, such as [::1]:8080"},
           {"\"[::1:8080\"",
            "invalid address '[::1:8080': missing ']' after the IPv6 address; " + form},
           {"\"[::1]8080\"", "invalid address '[::1]8080': missing port; " + form},
           {"\"[::g]:8080\"", "invalid address '[::g]:8080': '::g' is not an IPv6 address"},
           {"300.0.0.1:8080", "invalid address '300.0.0.1:8080': '300.0.0.1' is not an IPv4 "
                              "address"},
           {"app_1:8080", "invalid address 'app_1:8080': 'app_1' is not a valid host name: use "
                          "labels of letters, digits and '-' separated by '.'"},
           {"-app:8080", "invalid address '-app:8080': '-app' is not a valid host name: use "
                         "labels of letters, digits and '-' separated by '.'"},
           {"a..b:8080", "invalid address 'a..b:8080': 'a..b' is not a valid host name: use "
                         "labels of letters, digits and '-' separated by '.'"},
       }) {
    EXPECT_EQ(errors(withEndpoint(c.text)),
              Lines{"test.yaml:3:38: clusters[0].endpoints[0]: " + c.message})
        << c.text;
  }
}

TEST(ConfigTest, EndpointsAcceptNamesAndIpv6) {
  for (const char* endpoint : {"inventory:8080", "Inventory.Shop.svc.cluster.local.:80",
                               "\"[fd00::1]:8080\"", "10.1.2.3:65535"}) {
    EXPECT_TRUE(loadString(withEndpoint(endpoint), "test.yaml").ok()) << endpoint;
  }
}

TEST(ConfigTest, ListenerAddressNeedsIpLiteral) {
  EXPECT_EQ(errors(withListenerAddress("localhost:15006")),
            Lines{"test.yaml:2:65: listeners[0].address: invalid address 'localhost:15006': a "
                  "listening address needs an IP address, not a host name"});
  EXPECT_EQ(errors("admin: { address: admin.local:9901 }\n" + kMinimal),
            Lines{"test.yaml:1:19: admin.address: invalid address 'admin.local:9901': a "
                  "listening address needs an IP address, not a host name"});
}

TEST(ConfigTest, IntegersAreStrict) {
  for (const ErrorCase& c : std::vector<ErrorCase>{
           {"0", "0 is out of range; expected 1 to 4294967295"},
           {"4294967296", "4294967296 is out of range; expected 1 to 4294967295"},
           {"99999999999999999999999", "99999999999999999999999 is out of range; expected 1 to "
                                       "4294967295"},
           {"-1", "expected a whole number from 1 to 4294967295, found '-1'"},
           {"1.5", "expected a whole number from 1 to 4294967295, found '1.5'"},
           {"1e3", "expected a whole number from 1 to 4294967295, found '1e3'"},
           {"0x10", "expected a whole number from 1 to 4294967295, found '0x10'"},
           {"many", "expected a whole number from 1 to 4294967295, found 'many'"},
           {"\"100\"", "expected a whole number from 1 to 4294967295, found the quoted string "
                       "'100'"},
           {"[1]", "expected a whole number from 1 to 4294967295, found a list"},
       }) {
    EXPECT_EQ(errors(withEndpoint("127.0.0.1:8080], max_connections: " + c.text + ", x: [1")),
              (Lines{"test.yaml:3:72: clusters[0].max_connections: " + c.message,
                     "test.yaml:3:" + std::to_string(74 + c.text.size()) +
                         ": unknown key 'x' in clusters[0]"}))
        << c.text;
  }
}

TEST(ConfigTest, ListenerLimitsMustBePositive) {
  EXPECT_EQ(errors(R"(node: { service: demo }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    routes: [ { cluster: app } ]
    limits:
      max_connections: 0
      max_header_bytes: 0
      max_header_count: 0
      header_timeout: 0s
      idle_timeout: 0ms
      stream_idle_timeout: 0m
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
)"),
            (Lines{"test.yaml:7:24: listeners[0].limits.max_connections: 0 is out of range; "
                   "expected 1 to 4294967295",
                   "test.yaml:8:25: listeners[0].limits.max_header_bytes: 0 is out of range; "
                   "expected 1 to 4294967295",
                   "test.yaml:9:25: listeners[0].limits.max_header_count: 0 is out of range; "
                   "expected 1 to 4294967295",
                   "test.yaml:10:23: listeners[0].limits.header_timeout: invalid duration '0s': "
                   "must be greater than 0",
                   "test.yaml:11:21: listeners[0].limits.idle_timeout: invalid duration '0ms': "
                   "must be greater than 0",
                   "test.yaml:12:28: listeners[0].limits.stream_idle_timeout: invalid duration "
                   "'0m': must be greater than 0"}));
}

TEST(ConfigTest, InvalidWorkers) {
  const std::string expected = "expected 'auto' or a whole number from 0 to 256, found ";
  EXPECT_EQ(errors("workers: 257\n" + kMinimal),
            Lines{"test.yaml:1:10: workers: " + expected + "'257'"});
  EXPECT_EQ(errors("workers: -1\n" + kMinimal),
            Lines{"test.yaml:1:10: workers: " + expected + "'-1'"});
  EXPECT_EQ(errors("workers: \"4\"\n" + kMinimal),
            Lines{"test.yaml:1:10: workers: " + expected + "'4'"});
  EXPECT_EQ(errors("workers: Auto\n" + kMinimal),
            Lines{"test.yaml:1:10: workers: " + expected + "'Auto'"});
}

TEST(ConfigTest, BooleansAreTrueOrFalse) {
  EXPECT_EQ(errors("access_log: yes\n" + kMinimal),
            Lines{"test.yaml:1:13: access_log: expected true or false, found 'yes'"});
  EXPECT_EQ(errors("access_log: \"false\"\n" + kMinimal),
            Lines{"test.yaml:1:13: access_log: expected true or false, found 'false'"});
  EXPECT_EQ(errors("access_log: [a]\n" + kMinimal),
            Lines{"test.yaml:1:13: access_log: expected true, false or a map with 'path', found "
                  "a list"});
}

TEST(ConfigTest, InvalidAccessLogMap) {
  EXPECT_EQ(errors("access_log: { path: \"\" }\n" + kMinimal),
            Lines{"test.yaml:1:21: access_log.path: must not be empty; write '-' for standard "
                  "output"});
  EXPECT_EQ(errors("access_log: { file: a.log }\n" + kMinimal),
            (Lines{"test.yaml:1:13: missing required key 'path' in access_log",
                   "test.yaml:1:15: unknown key 'file' in access_log"}));
}

// --- Enumerations ----------------------------------------------------------------------------

TEST(ConfigTest, InvalidEnumValues) {
  EXPECT_EQ(errors(R"(node: { service: demo }
log: { level: verbose }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    direction: in
    trust: maybe
    routes: [ { cluster: app } ]
clusters: [ { name: app, endpoints: [127.0.0.1:8080], protocol: grpc, lb: random } ]
policies: { p: { mode: enforcing } }
)"),
            (Lines{"test.yaml:2:15: log.level: invalid value 'verbose'; expected trace, debug, "
                   "info, warn, error, critical or off",
                   "test.yaml:6:16: listeners[0].direction: invalid value 'in'; expected inbound "
                   "or outbound",
                   "test.yaml:7:12: listeners[0].trust: invalid value 'maybe'; expected trusted "
                   "or untrusted",
                   "test.yaml:9:65: clusters[0].protocol: invalid value 'grpc'; expected http1 or "
                   "http2",
                   "test.yaml:9:75: clusters[0].lb: invalid value 'random'; expected round_robin "
                   "or least_request",
                   "test.yaml:10:24: policies.p.mode: invalid value 'enforcing'; expected "
                   "enforce, shadow or off"}));
}

TEST(ConfigTest, Http2ClusterAccepted) {
  auto config = loadValid("node: { service: demo }\n"
                          "listeners: [ { name: in, address: 127.0.0.1:15006, routes: [ { cluster: "
                          "app } ] } ]\n"
                          "clusters: [ { name: app, endpoints: [127.0.0.1:8080], protocol: http2 } "
                          "]\n");
  ASSERT_EQ(config->clusters.size(), 1u);
  EXPECT_EQ(config->clusters[0].protocol, UpstreamProtocol::kHttp2);
}

TEST(ConfigTest, EwmaNotSupportedYet) {
  EXPECT_EQ(errors(withEndpoint("127.0.0.1:8080], lb: ewma, x: [1")),
            (Lines{"test.yaml:3:59: clusters[0].lb: 'ewma' is not supported yet; use "
                   "round_robin or least_request",
                   "test.yaml:3:65: unknown key 'x' in clusters[0]"}));
}

// --- Names and references --------------------------------------------------------------------

TEST(ConfigTest, UnknownClusterReference) {
  EXPECT_EQ(errors(R"(node: { service: demo }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    routes: [ { cluster: inventroy }, { cluster: billing } ]
clusters: [ { name: inventory, endpoints: [127.0.0.1:8080] } ]
)"),
            (Lines{"test.yaml:5:26: listeners[0].routes[0].cluster: cluster 'inventroy' not "
                   "found in 'clusters'; did you mean 'inventory'?",
                   "test.yaml:5:50: listeners[0].routes[1].cluster: cluster 'billing' not found "
                   "in 'clusters'"}));
}

TEST(ConfigTest, UnknownPolicyReference) {
  EXPECT_EQ(errors(R"(node: { service: demo }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    routes: [ { cluster: app, policy: protect } ]
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
policies: { protect-app: { mode: shadow } }
)"),
            Lines{"test.yaml:5:39: listeners[0].routes[0].policy: policy 'protect' not found in "
                  "'policies'"});
  EXPECT_EQ(errors(R"(node: { service: demo }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    routes: [ { cluster: app, policy: protect-ap } ]
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
policies: { protect-app: { mode: shadow } }
)"),
            Lines{"test.yaml:5:39: listeners[0].routes[0].policy: policy 'protect-ap' not found "
                  "in 'policies'; did you mean 'protect-app'?"});
}

TEST(ConfigTest, DuplicateListenerNames) {
  EXPECT_EQ(errors(R"(node: { service: demo }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    routes: [ { cluster: app } ]
  - name: inbound
    address: 127.0.0.1:15007
    routes: [ { cluster: app } ]
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
)"),
            Lines{"test.yaml:6:11: listeners[1].name: duplicate listener name 'inbound'; first "
                  "defined at line 3"});
}

TEST(ConfigTest, DuplicateListenerAddresses) {
  EXPECT_EQ(errors(R"(node: { service: demo }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    routes: [ { cluster: app } ]
  - name: outbound
    address: 127.0.0.1:15006
    routes: [ { cluster: app } ]
  - name: v6
    address: "[::1]:15006"
    routes: [ { cluster: app } ]
  - name: v6-again
    address: "[0::1]:15006"
    routes: [ { cluster: app } ]
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
)"),
            (Lines{"test.yaml:7:14: listeners[1].address: address 127.0.0.1:15006 is already "
                   "used by listener 'inbound' at line 4",
                   "test.yaml:13:14: listeners[3].address: address [::1]:15006 is already used by "
                   "listener 'v6' at line 10"}));
}

TEST(ConfigTest, ListenerOnAdminAddress) {
  EXPECT_EQ(errors(withListenerAddress("127.0.0.1:9901")),
            Lines{"test.yaml:2:65: listeners[0].address: address 127.0.0.1:9901 is also the "
                  "admin address (the default)"});
  EXPECT_EQ(errors("admin: { address: 127.0.0.1:15006 }\n" + kMinimal),
            Lines{"test.yaml:5:14: listeners[0].address: address 127.0.0.1:15006 is also the "
                  "admin address at line 1"});
  EXPECT_EQ(errors("admin: { address: 127.0.0.1 }\n" + withListenerAddress("127.0.0.1:9901")),
            Lines{"test.yaml:1:19: admin.address: invalid address '127.0.0.1': missing port; "
                  "expected host:port, such as 127.0.0.1:8080 or [::1]:8080"});
}

TEST(ConfigTest, DuplicateClusterNames) {
  EXPECT_EQ(errors(R"(node: { service: demo }
listeners: [ { name: in, address: 127.0.0.1:15006, routes: [ { cluster: app } ] } ]
clusters:
  - name: app
    endpoints: [127.0.0.1:8080]
  - name: app
    endpoints: [127.0.0.1:8081]
)"),
            Lines{"test.yaml:6:11: clusters[1].name: duplicate cluster name 'app'; first defined "
                  "at line 4"});
}

TEST(ConfigTest, DuplicateEndpoints) {
  EXPECT_EQ(errors(withEndpoint("127.0.0.1:8080, 10.0.0.1:80, 127.0.0.1:8080")),
            Lines{"test.yaml:3:67: clusters[0].endpoints[2]: duplicate endpoint 127.0.0.1:8080; "
                  "first defined at line 3"});
}

TEST(ConfigTest, DuplicatePolicyNames) {
  EXPECT_EQ(errors(kMinimal + "policies:\n  p: { mode: off }\n  p: { mode: shadow }\n"),
            Lines{"test.yaml:11:3: duplicate policy name 'p'; first defined at line 10"});
}

TEST(ConfigTest, InvalidNames) {
  EXPECT_EQ(errors(R"(node: { service: "check out" }
listeners: [ { name: "in/1", address: 127.0.0.1:15006, routes: [ { cluster: app } ] } ]
clusters: [ { name: "", endpoints: [127.0.0.1:8080] }, { name: app, endpoints: [127.0.0.1:1] } ]
policies: { "p q": {} }
)"),
            (Lines{"test.yaml:1:18: node.service: invalid name 'check out': use only letters, "
                   "digits, '.', '_' and '-'",
                   "test.yaml:2:22: listeners[0].name: invalid name 'in/1': use only letters, "
                   "digits, '.', '_' and '-'",
                   "test.yaml:3:21: clusters[0].name: name must not be empty",
                   "test.yaml:4:13: policies: invalid name 'p q': use only letters, digits, '.', "
                   "'_' and '-'"}));
}

// --- Routes ----------------------------------------------------------------------------------

TEST(ConfigTest, InvalidMatch) {
  EXPECT_EQ(errors(R"(node: { service: demo }
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    routes:
      - { cluster: app, match: { prefix: api } }
      - { cluster: app, match: { prefix: "/a b" } }
      - { cluster: app, match: { prefix: "/a?b=1" } }
      - { cluster: app, match: { authority: "inventory:8080" } }
      - { cluster: app, match: { authority: inv_entory } }
      - { cluster: app, match: { path: /x } }
)"),
            (Lines{"test.yaml:7:42: listeners[0].routes[0].match.prefix: invalid prefix 'api': "
                   "must start with '/'",
                   "test.yaml:8:42: listeners[0].routes[1].match.prefix: invalid prefix '/a b': "
                   "must not contain whitespace, control characters, '?' or '#'",
                   "test.yaml:9:42: listeners[0].routes[2].match.prefix: invalid prefix "
                   "'/a?b=1': must not contain whitespace, control characters, '?' or '#'",
                   "test.yaml:10:45: listeners[0].routes[3].match.authority: invalid authority "
                   "'inventory:8080': write the host without port",
                   "test.yaml:11:45: listeners[0].routes[4].match.authority: 'inv_entory' is not "
                   "a valid host name: use labels of letters, digits and '-' separated by '.'",
                   "test.yaml:12:34: unknown key 'path' in listeners[0].routes[5].match"}));
}

TEST(ConfigTest, InvalidHeaderMatchers) {
  EXPECT_EQ(errors(R"(node: { service: demo }
clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    routes:
      - cluster: app
        match:
          headers:
            - { name: "x canary" }
            - { name: x-a, exact: "a\nb" }
            - { name: x-b, invert: yes }
            - { name: x-c, present: true }
            - { exact: v }
            - x-d
)"),
            (Lines{"test.yaml:10:23: listeners[0].routes[0].match.headers[0].name: invalid header "
                   "name 'x canary': use only letters, digits and !#$%&'*+-.^_`|~",
                   "test.yaml:11:35: listeners[0].routes[0].match.headers[1].exact: invalid "
                   "header value: contains LF (0x0a), which header values must not contain",
                   "test.yaml:12:36: listeners[0].routes[0].match.headers[2].invert: expected "
                   "true or false, found 'yes'",
                   "test.yaml:13:28: unknown key 'present' in "
                   "listeners[0].routes[0].match.headers[3]",
                   "test.yaml:14:15: missing required key 'name' in "
                   "listeners[0].routes[0].match.headers[4]",
                   "test.yaml:15:15: listeners[0].routes[0].match.headers[5]: expected a map, "
                   "found 'x-d'"}));
}

TEST(ConfigTest, InvalidHeaderMutationNames) {
  EXPECT_EQ(errors(withRequestHeaders(R"(          add: { "x foo": a, X-Dup: a, x-dup: b, Host: h }
          remove: [x-gone, "", X-GONE, Transfer-Encoding, x-dup, [x]]
)")),
            (Lines{"test.yaml:9:18: listeners[0].routes[0].request_headers.add: invalid header "
                   "name 'x foo': use only letters, digits and !#$%&'*+-.^_`|~",
                   "test.yaml:9:40: listeners[0].routes[0].request_headers.add: header 'x-dup' is "
                   "added twice; first defined at line 9",
                   "test.yaml:9:50: listeners[0].routes[0].request_headers.add: header 'host' is "
                   "set by the proxy from the connection or the framing and cannot be changed by "
                   "a header mutation",
                   "test.yaml:10:28: listeners[0].routes[0].request_headers.remove[1]: header "
                   "name must not be empty",
                   "test.yaml:10:32: listeners[0].routes[0].request_headers.remove[2]: header "
                   "'x-gone' is listed twice; first defined at line 10",
                   "test.yaml:10:40: listeners[0].routes[0].request_headers.remove[3]: header "
                   "'transfer-encoding' is set by the proxy from the connection or the framing "
                   "and cannot be changed by a header mutation",
                   "test.yaml:10:59: listeners[0].routes[0].request_headers.remove[4]: header "
                   "'x-dup' is both added (at line 9) and removed; adding already replaces its "
                   "value",
                   "test.yaml:10:66: listeners[0].routes[0].request_headers.remove[5]: expected a "
                   "string, found a list"}));
}

TEST(ConfigTest, InvalidHeaderMutationValues) {
  EXPECT_EQ(errors(withRequestHeaders(R"(          add:
            x-cr: "a\rb"
            x-lf: "a\nb"
            x-nul: "a\0b"
            x-bell: "a\ab"
            x-space: " a"
            x-null:
            x-list: [a]
            x-ok: "tab\tinside"
)")),
            (Lines{"test.yaml:10:19: listeners[0].routes[0].request_headers.add.x-cr: invalid "
                   "header value: contains CR (0x0d), which header values must not contain",
                   "test.yaml:11:19: listeners[0].routes[0].request_headers.add.x-lf: invalid "
                   "header value: contains LF (0x0a), which header values must not contain",
                   "test.yaml:12:20: listeners[0].routes[0].request_headers.add.x-nul: invalid "
                   "header value: contains NUL (0x00), which header values must not contain",
                   "test.yaml:13:21: listeners[0].routes[0].request_headers.add.x-bell: invalid "
                   "header value: contains control character 0x07, which header values must not "
                   "contain",
                   "test.yaml:14:22: listeners[0].routes[0].request_headers.add.x-space: invalid "
                   "header value: starts or ends with whitespace, which HTTP removes from header "
                   "values",
                   "test.yaml:15:13: listeners[0].routes[0].request_headers.add.x-null: expected "
                   "a string, found an empty value; write \"\" for an empty value",
                   "test.yaml:16:21: listeners[0].routes[0].request_headers.add.x-list: expected "
                   "a string, found a list; write \"\" for an empty value"}));
}

TEST(ConfigTest, HeaderMutationSectionTypes) {
  EXPECT_EQ(
      errors(withRequestHeaders("          add: [x-a]\n          remove: x-b\n"
                                "          set: {}\n")),
      (Lines{"test.yaml:9:16: listeners[0].routes[0].request_headers.add: expected a map of "
             "header names to values, found a list",
             "test.yaml:10:19: listeners[0].routes[0].request_headers.remove: expected a "
             "list of header names, found 'x-b'",
             "test.yaml:11:11: unknown key 'set' in listeners[0].routes[0].request_headers"}));
}

// --- Clusters and policies -------------------------------------------------------------------

TEST(ConfigTest, InvalidCapacity) {
  EXPECT_EQ(errors(withEndpoint("127.0.0.1:8080], capacity: { max_concurrent: 0, max_rps: 0 "
                                "}, x: [1")),
            (Lines{"test.yaml:3:83: clusters[0].capacity.max_concurrent: 0 is out of range; "
                   "expected 1 to 4294967295",
                   "test.yaml:3:95: clusters[0].capacity.max_rps: must be greater than 0",
                   "test.yaml:3:100: unknown key 'x' in clusters[0]"}));
  EXPECT_EQ(errors(withEndpoint("127.0.0.1:8080], capacity: { max_rps: 1e3, max_concurrency: 1 "
                                "}, x: [1")),
            (Lines{"test.yaml:3:76: clusters[0].capacity.max_rps: expected a number such as 200 "
                   "or 0.5, found '1e3'",
                   "test.yaml:3:81: unknown key 'max_concurrency' in clusters[0].capacity; did "
                   "you mean 'max_concurrent'?",
                   "test.yaml:3:103: unknown key 'x' in clusters[0]"}));
}

TEST(ConfigTest, PolicySectionsTypoSuggests) {
  EXPECT_EQ(errors(kMinimal + R"(policies:
  p:
    mode: enforce
    priority: { header: deferd-priority }
    backpressure: { limiter: gradient }
    breaker: { cooldown: 30s }
    fault: { abort: { percent: 1% } }
    backpresure: {}
)"),
            (Lines{"test.yaml:16:5: unknown key 'backpresure' in policies.p; did you mean "
                   "'backpressure'?"}));
}

TEST(ConfigTest, PolicyMustBeMap) {
  EXPECT_EQ(errors(kMinimal + "policies:\n  p:\n  q: shadow\n"),
            (Lines{"test.yaml:10:3: policies.p: expected a map, found an empty value",
                   "test.yaml:11:6: policies.q: expected a map, found 'shadow'"}));
}

// The design's full example, in short.
TEST(ConfigTest, TargetShapeLoads) {
  EXPECT_EQ(errors(R"(node:
  service: checkout
admin:
  address: 127.0.0.1:9901
workers: auto
listeners:
  - name: inbound
    address: 0.0.0.0:15006
    direction: inbound
    trust: untrusted
    routes:
      - match: { prefix: / }
        cluster: local-app
        policy: protect-app
  - name: outbound
    address: 127.0.0.1:15001
    direction: outbound
    routes:
      - match: { authority: inventory }
        cluster: inventory
        policy: call-inventory
clusters:
  - name: local-app
    endpoints: [127.0.0.1:8080]
    protocol: http1
    connect_timeout: 1s
  - name: inventory
    endpoints: [inventory.shop.svc.cluster.local:8080]
    resolve_every: 5s
    lb: least_request
    protocol: http2
  - name: inventory-cache
    endpoints: [127.0.0.1:9090]
    capacity: { max_concurrent: 50, max_rps: 200 }
policies:
  protect-app:
    mode: enforce
    rollout: 100%
    priority:
      header: deferd-priority
    backpressure:
      limiter: gradient
  call-inventory:
    mode: shadow
    breaker:
      cooldown: 30s
    backpressure:
      limiter: aimd
)"),
            (Lines{}));
}

} // namespace
} // namespace deferd::config

namespace deferd::config {
namespace {

TEST(DiagnosticTest, ControlCharactersEscaped) {
  Diagnostic diagnostic{Location{"test.yaml", 2, 5},
                        std::string("bad value 'a\nb\x1b[31m\0c'", 22)};

  EXPECT_EQ(diagnostic.toString(), "test.yaml:2:5: bad value 'a\\x0ab\\x1b[31m\\x00c'");
}

} // namespace
} // namespace deferd::config
