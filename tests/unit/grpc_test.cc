#include "proxy/grpc.h"

#include <gtest/gtest.h>

namespace deferd {
namespace {

using std::chrono::nanoseconds;

TEST(GrpcTimeoutTest, ParsesEveryUnit) {
  EXPECT_EQ(parseGrpcTimeout("2H"), std::chrono::hours(2));
  EXPECT_EQ(parseGrpcTimeout("3M"), std::chrono::minutes(3));
  EXPECT_EQ(parseGrpcTimeout("10S"), std::chrono::seconds(10));
  EXPECT_EQ(parseGrpcTimeout("250m"), std::chrono::milliseconds(250));
  EXPECT_EQ(parseGrpcTimeout("7u"), std::chrono::microseconds(7));
  EXPECT_EQ(parseGrpcTimeout("99999999n"), nanoseconds(99999999));
}

TEST(GrpcTimeoutTest, ClampsBeyondRepresentable) {
  // 2562048 hours is the first whole number of hours past a 64-bit count of nanoseconds.
  EXPECT_EQ(parseGrpcTimeout("2562048H"), filters::kMaxHeaderTimeout);
  EXPECT_EQ(parseGrpcTimeout("99999999H"), filters::kMaxHeaderTimeout);
  EXPECT_EQ(parseGrpcTimeout("99999999M"), filters::kMaxHeaderTimeout);
  EXPECT_EQ(parseGrpcTimeout("876000H"), std::chrono::hours(876000));
  EXPECT_EQ(parseGrpcTimeout("876001H"), filters::kMaxHeaderTimeout);
  EXPECT_EQ(formatGrpcTimeout(filters::kMaxHeaderTimeout), "52560000M"); // 8 digits at most
  EXPECT_EQ(filters::parseDeadlineDuration("999999999999h"), filters::kMaxHeaderTimeout);
}

TEST(GrpcTimeoutTest, RejectsInvalidValues) {
  EXPECT_FALSE(parseGrpcTimeout(""));
  EXPECT_FALSE(parseGrpcTimeout("S"));
  EXPECT_FALSE(parseGrpcTimeout("10"));
  EXPECT_FALSE(parseGrpcTimeout("10s"));        // units are case-sensitive: 's' is not one
  EXPECT_FALSE(parseGrpcTimeout("123456789S")); // nine digits
  EXPECT_FALSE(parseGrpcTimeout("-1S"));
  EXPECT_FALSE(parseGrpcTimeout("1 S"));
}

TEST(GrpcTimeoutTest, FormatsInFinestUnitThatFits) {
  EXPECT_EQ(formatGrpcTimeout(nanoseconds(500)), "500n");
  EXPECT_EQ(formatGrpcTimeout(std::chrono::milliseconds(250)), "250000u");
  EXPECT_EQ(formatGrpcTimeout(std::chrono::seconds(30)), "30000000u");
  EXPECT_EQ(formatGrpcTimeout(std::chrono::seconds(300)), "300000m");
  EXPECT_EQ(formatGrpcTimeout(std::chrono::hours(30)), "108000S");
}

TEST(GrpcTimeoutTest, FormatRoundsDown) {
  // 10 s and 1 ns take 11 digits in nanoseconds, so microseconds are used and the nanosecond
  // is dropped, never rounded up.
  EXPECT_EQ(formatGrpcTimeout(std::chrono::seconds(10) + nanoseconds(1)), "10000000u");
  EXPECT_EQ(formatGrpcTimeout(nanoseconds(-5)), "0n");
}

TEST(GrpcTimeoutTest, FormatThenParseNeverGrows) {
  for (int64_t value : {1LL, 999LL, 123456789LL, 987654321012LL, 7200000000000LL}) {
    nanoseconds timeout(value);
    std::optional<nanoseconds> parsed = parseGrpcTimeout(formatGrpcTimeout(timeout));
    ASSERT_TRUE(parsed) << value;
    EXPECT_LE(*parsed, timeout) << value;
  }
}

TEST(GrpcContentTypeTest, RecognisesGrpcVariants) {
  EXPECT_TRUE(isGrpcContentType("application/grpc"));
  EXPECT_TRUE(isGrpcContentType("application/grpc+proto"));
  EXPECT_TRUE(isGrpcContentType("Application/GRPC;charset=utf-8"));
  EXPECT_FALSE(isGrpcContentType("application/grpc-web"));
  EXPECT_FALSE(isGrpcContentType("application/json"));
  EXPECT_FALSE(isGrpcContentType("application/grp"));
}

TEST(GrpcStatusTest, MapsEachKindOfLocalReply) {
  EXPECT_EQ(grpcStatusFor(LocalReplyReason::kConnectFailed), GrpcStatus::kUnavailable);
  EXPECT_EQ(grpcStatusFor(LocalReplyReason::kNoHealthyEndpoint), GrpcStatus::kUnavailable);
  EXPECT_EQ(grpcStatusFor(LocalReplyReason::kUpstreamTimeout), GrpcStatus::kDeadlineExceeded);
  EXPECT_EQ(grpcStatusFor(LocalReplyReason::kDeadlineExceeded), GrpcStatus::kDeadlineExceeded);
  EXPECT_EQ(grpcStatusFor(LocalReplyReason::kBadUpstreamResponse), GrpcStatus::kInternal);
  EXPECT_EQ(grpcStatusFor(LocalReplyReason::kNoRoute), GrpcStatus::kUnimplemented);
}

TEST(GrpcStatusTest, EveryReasonHasAStatus) {
  for (size_t i = 0; i < static_cast<size_t>(LocalReplyReason::kCount); i++) {
    EXPECT_NE(grpcStatusFor(static_cast<LocalReplyReason>(i)), GrpcStatus::kUnknown) << i;
    EXPECT_NE(grpcStatusFor(static_cast<LocalReplyReason>(i)), GrpcStatus::kOk) << i;
  }
}

} // namespace
} // namespace deferd
