#include "proxy/metrics.h"

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tests/unit/metrics_text.h"

namespace deferd {
namespace {

using testing::sampleValue;

struct CommandResult {
  int exit_code = -1;
  std::string output; // standard output and standard error together
};

// Runs `promtool check metrics` on `text`. promtool is part of Debian's `prometheus` package.
CommandResult promtoolCheckMetrics(const std::string& text) {
  char path[] = "/tmp/deferd_metrics_XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) {
    return {-1, "mkstemp failed"};
  }
  FILE* file = ::fdopen(fd, "w");
  std::fwrite(text.data(), 1, text.size(), file);
  std::fclose(file);

  std::string command = std::string("promtool check metrics < ") + path + " 2>&1";
  CommandResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ::unlink(path);
    return {-1, "popen failed"};
  }
  char chunk[4096];
  size_t read = 0;
  while ((read = std::fread(chunk, 1, sizeof(chunk), pipe)) > 0) {
    result.output.append(chunk, read);
  }
  int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  ::unlink(path);
  return result;
}

bool promtoolInstalled() { return std::system("command -v promtool > /dev/null 2>&1") == 0; }

TEST(MetricsTest, SameHandleForSameNames) {
  Metrics metrics;

  EXPECT_EQ(metrics.listener("in"), metrics.listener("in"));
  EXPECT_NE(metrics.listener("in"), metrics.listener("out"));
  EXPECT_EQ(metrics.cluster("backend"), metrics.cluster("backend"));
  EXPECT_NE(metrics.cluster("backend"), metrics.cluster("other"));
  EXPECT_EQ(metrics.route("in", "backend"), metrics.route("in", "backend"));
  EXPECT_NE(metrics.route("in", "backend"), metrics.route("out", "backend"));
  EXPECT_EQ(metrics.route("in", "backend")->duration, metrics.route("in", "backend")->duration);
}

TEST(MetricsTest, ListenerCountersAndGaugesSerialized) {
  Metrics metrics;
  ListenerStats* stats = metrics.listener("in");
  stats->connections_total->Increment(3);
  stats->connections_active->Set(2);
  stats->requests_in_flight->Increment();
  stats->localReply(Protocol::kHttp1, LocalReplyReason::kNoRoute)->Increment();
  stats->localReply(Protocol::kHttp2, LocalReplyReason::kNoRoute)->Increment(2);

  std::string text = metrics.serialize();

  EXPECT_EQ(sampleValue(text, "deferd_downstream_connections_total{listener=\"in\"}"), 3);
  EXPECT_EQ(sampleValue(text, "deferd_downstream_connections_active{listener=\"in\"}"), 2);
  EXPECT_EQ(sampleValue(text, "deferd_requests_in_flight{listener=\"in\"}"), 1);
  EXPECT_EQ(sampleValue(text, "deferd_local_replies_total{listener=\"in\",protocol=\"http1\","
                              "reason=\"no-route\"}"),
            1);
  EXPECT_EQ(sampleValue(text, "deferd_local_replies_total{listener=\"in\",protocol=\"http2\","
                              "reason=\"no-route\"}"),
            2);
  EXPECT_NE(text.find("# TYPE deferd_downstream_connections_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE deferd_downstream_connections_active gauge\n"), std::string::npos);
}

TEST(MetricsTest, LocalReplyReasonsCreatedUpFront) {
  Metrics metrics;
  metrics.listener("in");

  std::string text = metrics.serialize();

  for (const char* protocol : {"http1", "http2"}) {
    for (const LocalReplySpec& spec : kLocalReplies) {
      std::string series = "deferd_local_replies_total{listener=\"in\",protocol=\"" +
                           std::string(protocol) + "\",reason=\"" + std::string(spec.reason) +
                           "\"}";
      EXPECT_EQ(sampleValue(text, series), 0) << series;
    }
  }
}

TEST(MetricsTest, ClusterStatsSerialized) {
  Metrics metrics;
  ClusterStats* stats = metrics.cluster("backend");
  stats->connections_active->Set(4);
  stats->connections_created->Increment(5);
  stats->failures[static_cast<size_t>(UpstreamFailure::kConnectTimeout)]->Increment();

  std::string text = metrics.serialize();

  EXPECT_EQ(sampleValue(text, "deferd_upstream_connections_active{cluster=\"backend\"}"), 4);
  EXPECT_EQ(sampleValue(text, "deferd_upstream_connections_created_total{cluster=\"backend\"}"), 5);
  EXPECT_EQ(
      sampleValue(text,
                  "deferd_upstream_failures_total{cluster=\"backend\",reason=\"connect-timeout\"}"),
      1);
  for (size_t i = 0; i < static_cast<size_t>(UpstreamFailure::kCount); ++i) {
    std::string series = "deferd_upstream_failures_total{cluster=\"backend\",reason=\"" +
                         std::string(upstreamFailureName(static_cast<UpstreamFailure>(i))) + "\"}";
    EXPECT_TRUE(sampleValue(text, series).has_value()) << series;
  }
}

TEST(MetricsTest, BreakerSeriesPerPolicyAndCluster) {
  using filters::breaker::CallCount;
  Metrics metrics;
  filters::breaker::BreakerStats* first = metrics.breaker("br", "grpc");
  filters::breaker::BreakerStats* second = metrics.breaker("br2", "grpc");
  ASSERT_NE(first, second);
  EXPECT_EQ(first, metrics.breaker("br", "grpc"));
  first->calls[static_cast<size_t>(CallCount::kFailure)]->Increment(3);
  second->calls[static_cast<size_t>(CallCount::kSuccess)]->Increment(2);
  second->shadow_rejections->Increment();
  metrics.breakerFallback("br", "grpc", "cache")->Increment(4);

  std::string text = metrics.serialize();

  for (const char* policy : {"br", "br2"}) {
    std::string labels = "cluster=\"grpc\",policy=\"" + std::string(policy) + "\"";
    EXPECT_EQ(sampleValue(text, "deferd_breaker_state{" + labels + ",state=\"closed\"}"), 1)
        << policy;
    EXPECT_EQ(sampleValue(text, "deferd_breaker_state{" + labels + ",state=\"open\"}"), 0)
        << policy;
    EXPECT_EQ(sampleValue(text, "deferd_outlier_ejected_endpoints{" + labels + "}"), 0) << policy;
    EXPECT_EQ(sampleValue(text, "deferd_breaker_fallback_rejections_total{" + labels +
                                    ",reason=\"fallback_loop\"}"),
              0)
        << policy;
  }
  EXPECT_EQ(sampleValue(text, "deferd_breaker_calls_total{cluster=\"grpc\",outcome=\"failure\","
                              "policy=\"br\"}"),
            3);
  EXPECT_EQ(sampleValue(text, "deferd_breaker_calls_total{cluster=\"grpc\",outcome=\"failure\","
                              "policy=\"br2\"}"),
            0);
  EXPECT_EQ(sampleValue(text, "deferd_breaker_calls_total{cluster=\"grpc\",outcome=\"success\","
                              "policy=\"br2\"}"),
            2);
  EXPECT_EQ(
      sampleValue(text, "deferd_breaker_shadow_rejections_total{cluster=\"grpc\",policy=\"br2\"}"),
      1);
  EXPECT_EQ(sampleValue(text, "deferd_breaker_fallback_requests_total{cluster=\"grpc\","
                              "fallback=\"cache\",policy=\"br\"}"),
            4);
}

TEST(MetricsTest, UpstreamFailureNamesDistinctKebabCase) {
  std::set<std::string_view> names;
  for (size_t i = 0; i < static_cast<size_t>(UpstreamFailure::kCount); ++i) {
    std::string_view name = upstreamFailureName(static_cast<UpstreamFailure>(i));
    EXPECT_EQ(name.find_first_not_of("abcdefghijklmnopqrstuvwxyz-"), std::string_view::npos)
        << name;
    EXPECT_NE(name, "unknown");
    names.insert(name);
  }
  EXPECT_EQ(names.size(), static_cast<size_t>(UpstreamFailure::kCount));
}

TEST(MetricsTest, RequestsCountedByStatusClass) {
  Metrics metrics;
  RouteStats* route = metrics.route("in", "backend");
  route->recordRequest(Protocol::kHttp1, 200, 0.01);
  route->recordRequest(Protocol::kHttp1, 204, 0.01);
  route->recordRequest(Protocol::kHttp1, 503, 0.01);
  route->recordRequest(Protocol::kHttp1, 101, 0.01);
  route->recordRequest(Protocol::kHttp1, 0, 0.01);   // no response sent: not counted
  route->recordRequest(Protocol::kHttp1, 600, 0.01); // not a valid status: not counted

  std::string text = metrics.serialize();
  auto series = [](const char* status_class) {
    return std::string(
               "deferd_requests_total{cluster=\"backend\",listener=\"in\",protocol=\"http1\","
               "status_class=\"") +
           status_class + "\"}";
  };

  EXPECT_EQ(sampleValue(text, series("1xx")), 1);
  EXPECT_EQ(sampleValue(text, series("2xx")), 2);
  EXPECT_EQ(sampleValue(text, series("3xx")), 0);
  EXPECT_EQ(sampleValue(text, series("4xx")), 0);
  EXPECT_EQ(sampleValue(text, series("5xx")), 1);
  EXPECT_EQ(sampleValue(text,
                        "deferd_request_duration_seconds_count{cluster=\"backend\",listener=\"in\","
                        "protocol=\"http1\"}"),
            4);
}

TEST(MetricsTest, HistogramBucketsCumulativeWithInf) {
  Metrics metrics;
  RouteStats* route = metrics.route("in", "backend");
  route->recordRequest(Protocol::kHttp1, 200, 0.0003);
  route->recordRequest(Protocol::kHttp1, 200, 0.003);
  route->recordRequest(Protocol::kHttp1, 200, 0.3);
  route->recordRequest(Protocol::kHttp1, 200, 20);

  std::string text = metrics.serialize();
  const std::string labels = "cluster=\"backend\",listener=\"in\",protocol=\"http1\"";
  auto bucket = [&](const std::string& le) {
    return sampleValue(text,
                       "deferd_request_duration_seconds_bucket{" + labels + ",le=\"" + le + "\"}");
  };

  EXPECT_NE(text.find("# TYPE deferd_request_duration_seconds histogram\n"), std::string::npos);
  EXPECT_NE(text.find("# HELP deferd_request_duration_seconds "), std::string::npos);
  EXPECT_EQ(bucket("0.0005"), 1);
  EXPECT_EQ(bucket("0.001"), 1);
  EXPECT_EQ(bucket("0.005"), 2);
  EXPECT_EQ(bucket("0.25"), 2);
  EXPECT_EQ(bucket("0.5"), 3);
  EXPECT_EQ(bucket("10"), 3);
  EXPECT_EQ(bucket("+Inf"), 4);
  EXPECT_EQ(sampleValue(text, "deferd_request_duration_seconds_count{" + labels + "}"), 4);
  auto sum = sampleValue(text, "deferd_request_duration_seconds_sum{" + labels + "}");
  ASSERT_TRUE(sum.has_value());
  EXPECT_NEAR(*sum, 20.3033, 1e-6);

  // Each bucket of the series contains every bucket before it, and +Inf is the last one.
  std::istringstream lines(text);
  std::string line;
  double previous = 0;
  std::string last_le;
  while (std::getline(lines, line)) {
    if (line.rfind("deferd_request_duration_seconds_bucket{" + labels, 0) != 0) {
      continue;
    }
    double value = std::stod(line.substr(line.rfind(' ') + 1));
    EXPECT_GE(value, previous) << line;
    previous = value;
    last_le = line.substr(line.find("le=\""));
  }
  EXPECT_EQ(last_le.rfind("le=\"+Inf\"", 0), 0u) << last_le;
}

TEST(MetricsTest, HistogramBoundaryInclusive) {
  LatencyHistogram histogram;
  histogram.observe(0.001); // exactly a bound: counted in le="0.001"
  histogram.observe(-1);    // a clock error: counted as zero

  LatencyHistogram::Snapshot snapshot = histogram.snapshot();

  EXPECT_EQ(snapshot.cumulative[0], 1u); // le=0.0005 contains the negative one
  EXPECT_EQ(snapshot.cumulative[1], 2u); // le=0.001
  EXPECT_EQ(snapshot.cumulative.back(), 2u);
  EXPECT_EQ(snapshot.count, 2u);
  EXPECT_DOUBLE_EQ(snapshot.sum, 0.001);
}

TEST(MetricsTest, HistogramInfiniteObservationClamped) {
  LatencyHistogram histogram;
  histogram.observe(std::numeric_limits<double>::infinity());

  LatencyHistogram::Snapshot snapshot = histogram.snapshot();

  EXPECT_EQ(snapshot.cumulative[LatencyHistogram::kBuckets.size() - 1], 0u);
  EXPECT_EQ(snapshot.cumulative.back(), 1u);
  EXPECT_DOUBLE_EQ(snapshot.sum, 1e9);
}

TEST(MetricsTest, HistogramConcurrentObservations) {
  LatencyHistogram histogram;
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100000;

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&histogram] {
      for (int i = 0; i < kPerThread; ++i) {
        histogram.observe(0.002);
      }
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }

  LatencyHistogram::Snapshot snapshot = histogram.snapshot();
  EXPECT_EQ(snapshot.count, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_NEAR(snapshot.sum, 0.002 * kThreads * kPerThread, 1e-6);
}

TEST(MetricsTest, ReloadResultsCreatedUpFront) {
  Metrics metrics;
  std::string before = metrics.serialize();

  EXPECT_EQ(sampleValue(before, "deferd_config_reloads_total{result=\"success\"}"), 0);
  EXPECT_EQ(sampleValue(before, "deferd_config_reloads_total{result=\"failure\"}"), 0);

  metrics.recordReload(true);
  metrics.recordReload(true);
  metrics.recordReload(false);
  std::string after = metrics.serialize();

  EXPECT_EQ(sampleValue(after, "deferd_config_reloads_total{result=\"success\"}"), 2);
  EXPECT_EQ(sampleValue(after, "deferd_config_reloads_total{result=\"failure\"}"), 1);
}

TEST(MetricsTest, ReadyGaugeFollowsSetReady) {
  Metrics metrics;
  EXPECT_EQ(sampleValue(metrics.serialize(), "deferd_ready"), 0);

  metrics.setReady(true);
  EXPECT_EQ(sampleValue(metrics.serialize(), "deferd_ready"), 1);

  metrics.setReady(false);
  EXPECT_EQ(sampleValue(metrics.serialize(), "deferd_ready"), 0);
}

TEST(MetricsTest, PromtoolAcceptsOutput) {
  ASSERT_TRUE(promtoolInstalled())
      << "promtool not found in PATH; install Debian's `prometheus` package to run this test";

  Metrics metrics;
  metrics.listener("in")->connections_total->Increment();
  metrics.cluster("backend")->connections_created->Increment();
  metrics.route("in", "backend")->recordRequest(Protocol::kHttp1, 200, 0.02);
  metrics.route("in", "other")->recordRequest(Protocol::kHttp2, 503, 1.5);
  metrics.recordReload(true);
  metrics.setReady(true);

  CommandResult result = promtoolCheckMetrics(metrics.serialize());

  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output, "");
}

TEST(MetricsTest, PromtoolAcceptsEmptyMetrics) {
  ASSERT_TRUE(promtoolInstalled())
      << "promtool not found in PATH; install Debian's `prometheus` package to run this test";

  CommandResult result = promtoolCheckMetrics(Metrics().serialize());

  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output, "");
}

} // namespace
} // namespace deferd
