#include "filters/priority/correlation_id.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::priority {
namespace {

using deferd::testing::TestHeaderMap;

constexpr std::string_view kTraceId = "4bf92f3577b34da6a3ce929d0e0e4736";
constexpr std::string_view kValidTraceparent =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceparentTest, ExtractsTraceIdFromVersion00) {
  EXPECT_EQ(traceIdFromTraceparent(kValidTraceparent), kTraceId);
  EXPECT_EQ(traceIdFromTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            kTraceId);
}

TEST(TraceparentTest, AcceptsLaterVersions) {
  EXPECT_EQ(traceIdFromTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            kTraceId);
  EXPECT_EQ(
      traceIdFromTraceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"),
      kTraceId);
}

TEST(TraceparentTest, RejectsInvalidValues) {
  struct Case {
    std::string_view value;
    std::string_view why;
  };
  const Case cases[] = {
      {"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"},
      {"0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version not hex"},
      {"0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version uppercase"},
      {"00-00000000000000000000000000000000-00f067aa0ba902b7-01", "all-zero trace-id"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "all-zero parent-id"},
      {"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "uppercase trace-id"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", "uppercase parent-id"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", "uppercase flags"},
      {"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", "trace-id 31 characters"},
      {"00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01", "trace-id 33 characters"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", "parent-id 15 characters"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b77-01", "parent-id 17 characters"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", "flags 1 character"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011", "flags 3 characters"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", "version 00 with extra"},
      {"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", "wrong separators"},
      {"0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version 1 character"},
      {"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "later version, no '-'"},
      {" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "leading space"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ", "trailing space"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01", "parent-id not hex"},
      {"", "empty"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.why));
    EXPECT_EQ(traceIdFromTraceparent(c.value), std::nullopt);
  }
}

TEST(PriorityCorrelationIdTest, UsesFirstUsableSource) {
  const std::vector<CorrelationSource> sources = {
      CorrelationSource::traceparent(), CorrelationSource::header(std::string(kRequestIdHeader))};

  TestHeaderMap both{{"traceparent", std::string(kValidTraceparent)}, {"x-request-id", "req-1"}};
  EXPECT_EQ(extractCorrelationId(both, sources), std::string(kTraceId));

  TestHeaderMap request_id_only{{"X-Request-Id", "req-1"}};
  EXPECT_EQ(extractCorrelationId(request_id_only, sources), "req-1");

  TestHeaderMap invalid_traceparent{{"traceparent", "ff-bogus"}, {"x-request-id", "req-1"}};
  EXPECT_EQ(extractCorrelationId(invalid_traceparent, sources), "req-1");

  TestHeaderMap neither{{"x-other", "1"}};
  EXPECT_EQ(extractCorrelationId(neither, sources), std::nullopt);
}

TEST(PriorityCorrelationIdTest, FollowsConfiguredOrder) {
  const std::vector<CorrelationSource> request_id_first = {
      CorrelationSource::header("x-request-id"), CorrelationSource::traceparent()};
  TestHeaderMap both{{"traceparent", std::string(kValidTraceparent)}, {"x-request-id", "req-1"}};
  EXPECT_EQ(extractCorrelationId(both, request_id_first), "req-1");

  EXPECT_EQ(extractCorrelationId(both, {}), std::nullopt);
}

TEST(PriorityCorrelationIdTest, SkipsRepeatedOrInvalidHeaders) {
  const std::vector<CorrelationSource> sources = {CorrelationSource::traceparent(),
                                                  CorrelationSource::header("x-request-id"),
                                                  CorrelationSource::header("x-correlation-id")};

  TestHeaderMap two_traceparents{{"traceparent", std::string(kValidTraceparent)},
                                 {"traceparent", std::string(kValidTraceparent)},
                                 {"x-correlation-id", "corr-1"}};
  EXPECT_EQ(extractCorrelationId(two_traceparents, sources), "corr-1");

  TestHeaderMap two_request_ids{
      {"x-request-id", "a"}, {"x-request-id", "b"}, {"x-correlation-id", "corr-1"}};
  EXPECT_EQ(extractCorrelationId(two_request_ids, sources), "corr-1");

  const std::string too_long(kMaxCorrelationIdLength + 1, 'a');
  const std::string longest(kMaxCorrelationIdLength, 'a');
  const std::string_view invalid_ids[] = {"", "has space", "tab\there", too_long};
  for (std::string_view id : invalid_ids) {
    SCOPED_TRACE(std::string(id));
    TestHeaderMap headers{{"x-request-id", std::string(id)}, {"x-correlation-id", "corr-1"}};
    EXPECT_EQ(extractCorrelationId(headers, sources), "corr-1");
  }

  TestHeaderMap longest_id{{"x-request-id", longest}};
  EXPECT_EQ(extractCorrelationId(longest_id, sources), longest);
}

} // namespace
} // namespace deferd::filters::priority
