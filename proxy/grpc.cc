#include "proxy/grpc.h"

#include <array>
#include <cctype>

namespace deferd {

bool isGrpcContentType(std::string_view content_type) {
  static constexpr std::string_view kGrpc = "application/grpc";
  if (content_type.size() < kGrpc.size()) {
    return false;
  }
  for (size_t i = 0; i < kGrpc.size(); i++) {
    if (std::tolower(static_cast<unsigned char>(content_type[i])) != kGrpc[i]) {
      return false;
    }
  }
  return content_type.size() == kGrpc.size() || content_type[kGrpc.size()] == '+' ||
         content_type[kGrpc.size()] == ';';
}

std::string formatGrpcTimeout(std::chrono::nanoseconds timeout) {
  struct Unit {
    int64_t nanoseconds;
    char symbol;
  };
  static constexpr std::array<Unit, 6> kUnits{{
      {1, 'n'},
      {1'000, 'u'},
      {1'000'000, 'm'},
      {1'000'000'000, 'S'},
      {60'000'000'000, 'M'},
      {3'600'000'000'000, 'H'},
  }};
  static constexpr int64_t kMaxCount = 99'999'999;

  int64_t total = timeout.count() < 0 ? 0 : timeout.count();
  for (const Unit& unit : kUnits) {
    int64_t count = total / unit.nanoseconds;
    if (count <= kMaxCount) {
      return std::to_string(count) + unit.symbol;
    }
  }
  return std::to_string(kMaxCount) + 'H';
}

} // namespace deferd
