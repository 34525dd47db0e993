#include "filters/backpressure/load_report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace deferd::filters::backpressure {
namespace {

TEST(LoadReportTest, FormatsOrcaTextForm) {
  const LoadReport report{.utilization = 0.93, .queue = 12, .defer = true};
  EXPECT_EQ(formatLoadReport(report),
            "TEXT application_utilization=0.930, named_metrics.queue=12, named_metrics.defer=1");
}

TEST(LoadReportTest, RoundTrips) {
  const std::vector<LoadReport> reports = {
      {.utilization = 0.0, .queue = 0, .defer = false},
      {.utilization = 0.5, .queue = 3, .defer = false},
      {.utilization = 1.25, .queue = 999'999, .defer = true},
      {.utilization = kMaxReportedUtilization, .queue = kMaxReportedQueue, .defer = true},
  };
  for (const LoadReport& report : reports) {
    const std::string header = formatLoadReport(report);
    const LoadReportParse parsed = parseLoadReport(header);
    ASSERT_TRUE(parsed.report) << header << ": " << parsed.error;
    EXPECT_NEAR(parsed.report->utilization, report.utilization, 0.0005) << header;
    EXPECT_EQ(parsed.report->queue, report.queue) << header;
    EXPECT_EQ(parsed.report->defer, report.defer) << header;
  }
}

TEST(LoadReportTest, FormatsInvalidUtilizationAsZero) {
  const LoadReport nan{.utilization = std::nan(""), .queue = 0, .defer = false};
  const LoadReport negative{.utilization = -2.0, .queue = 0, .defer = false};
  EXPECT_NE(formatLoadReport(nan).find("application_utilization=0.000,"), std::string::npos);
  EXPECT_NE(formatLoadReport(negative).find("application_utilization=0.000,"), std::string::npos);
}

TEST(LoadReportTest, AcceptsSpacingAndOtherOrcaFields) {
  const LoadReportParse parsed = parseLoadReport(
      "  TEXT cpu_utilization=0.3,mem_utilization=0.8 ,\trps_fractional=10.0, eps=1, "
      "named_metrics.custom=4, utilization.gpu=0.2, request_cost.db=12, "
      "application_utilization = 0.75, named_metrics.queue=2e1  ");
  ASSERT_TRUE(parsed.report) << parsed.error;
  EXPECT_DOUBLE_EQ(parsed.report->utilization, 0.75);
  EXPECT_EQ(parsed.report->queue, 20u);
  EXPECT_FALSE(parsed.report->defer);
}

TEST(LoadReportTest, FallsBackToCpuUtilization) {
  const LoadReportParse parsed = parseLoadReport("TEXT cpu_utilization=0.4");
  ASSERT_TRUE(parsed.report) << parsed.error;
  EXPECT_DOUBLE_EQ(parsed.report->utilization, 0.4);
}

TEST(LoadReportTest, AcceptsDeferAlone) {
  const LoadReportParse parsed = parseLoadReport("TEXT named_metrics.defer=1");
  ASSERT_TRUE(parsed.report) << parsed.error;
  EXPECT_TRUE(parsed.report->defer);
  EXPECT_DOUBLE_EQ(parsed.report->utilization, 0.0);
}

TEST(LoadReportTest, RejectsMalformedInput) {
  const std::vector<std::string> malformed = {
      "",
      "TEXT",
      "TEXT ",
      "text application_utilization=0.5",
      "JSON {\"application_utilization\": 0.5}",
      "application_utilization=0.5",
      "TEXT application_utilization",
      "TEXT application_utilization=",
      "TEXT =0.5",
      "TEXT application_utilization=0.5,",
      "TEXT ,application_utilization=0.5",
      "TEXT application_utilization=0.5,,named_metrics.queue=1",
      "TEXT application_utilization=nan",
      "TEXT application_utilization=NaN",
      "TEXT application_utilization=inf",
      "TEXT application_utilization=-0.5",
      "TEXT application_utilization=+0.5",
      "TEXT application_utilization=1e999",
      "TEXT application_utilization=0x1p3",
      "TEXT application_utilization=0.5abc",
      "TEXT application_utilization=0.5 0.6",
      "TEXT application_utilization=101",
      "TEXT application_utilization=0.5, application_utilization=0.6",
      "TEXT named_metrics.queue=1, named_metrics.queue=1",
      "TEXT named_metrics.queue=1.5",
      "TEXT named_metrics.queue=2000000000",
      "TEXT named_metrics.defer=2",
      "TEXT named_metrics.defer=0.5",
      "TEXT unknown_field=1",
      "TEXT named_metrics.=1",
      "TEXT appl ication_utilization=0.5",
      "TEXT application_utilization:0.5",
      "TEXT mem_utilization=0.5",
      std::string("TEXT application_utilization=0.5\0, named_metrics.queue=1", 56),
      "TEXT " + std::string(2000, 'a') + "=1",
      "TEXT application_utilization=0." + std::string(1100, '1'),
  };
  for (const std::string& value : malformed) {
    const LoadReportParse parsed = parseLoadReport(value);
    EXPECT_FALSE(parsed.report) << "accepted: " << value.substr(0, 80);
    EXPECT_FALSE(parsed.error.empty()) << value.substr(0, 80);
  }
}

TEST(LoadReportTest, RejectsTooManyFields) {
  std::string value = "TEXT application_utilization=0.5";
  for (size_t i = 0; i < kMaxLoadReportFields; ++i) {
    value += ", named_metrics.m" + std::to_string(i) + "=1";
  }
  ASSERT_LE(value.size(), kMaxLoadReportLength);
  EXPECT_FALSE(parseLoadReport(value).report);
}

// Random mutations of a valid header must never crash the parser or yield values outside
// the documented ranges.
TEST(LoadReportTest, SurvivesRandomMutations) {
  const std::string valid = formatLoadReport({.utilization = 0.5, .queue = 7, .defer = true});
  const std::string alphabet = "TEXT ,=.-+e0123456789nafi_\t\"\\\x01\xff";
  std::mt19937 random(12345);
  size_t accepted = 0;
  for (int i = 0; i < 20'000; ++i) {
    std::string value = valid;
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = random() % (value.size() + 1);
      const char c = alphabet[random() % alphabet.size()];
      switch (random() % 3) {
      case 0:
        value.insert(value.begin() + static_cast<long>(at), c);
        break;
      case 1:
        if (at < value.size()) {
          value.erase(at, 1);
        }
        break;
      default:
        if (at < value.size()) {
          value[at] = c;
        }
        break;
      }
    }
    const LoadReportParse parsed = parseLoadReport(value);
    if (parsed.report) {
      ++accepted;
      ASSERT_TRUE(std::isfinite(parsed.report->utilization)) << value;
      ASSERT_GE(parsed.report->utilization, 0.0) << value;
      ASSERT_LE(parsed.report->utilization, kMaxReportedUtilization) << value;
      ASSERT_LE(parsed.report->queue, kMaxReportedQueue) << value;
    } else {
      ASSERT_FALSE(parsed.error.empty()) << value;
    }
  }
  EXPECT_GT(accepted, 0u);
}

} // namespace
} // namespace deferd::filters::backpressure
