#include "filters/priority/correlation_id.h"

#include <algorithm>

#include "filters/priority/priority_header.h"

namespace deferd::filters::priority {
namespace {

constexpr size_t kTraceparentV00Length = 55;
constexpr size_t kTraceIdOffset = 3;
constexpr size_t kTraceIdLength = 32;
constexpr size_t kParentIdOffset = 36;
constexpr size_t kParentIdLength = 16;
constexpr size_t kFlagsOffset = 53;

// HEXDIGLC in the specification: lowercase only.
bool isLowerHexChar(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

bool isLowerHex(std::string_view text) {
  return std::all_of(text.begin(), text.end(), isLowerHexChar);
}

bool isAllZeros(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c == '0'; });
}

// A header value usable as an id as it is: visible ASCII without spaces.
bool isPlainId(std::string_view value) {
  return !value.empty() && value.size() <= kMaxCorrelationIdLength &&
         std::all_of(value.begin(), value.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// Returns the value of the only field line with that name, or nullopt when there is none or
// more than one.
std::optional<std::string_view> singleFieldLine(const HeaderMap& headers, std::string_view name) {
  std::vector<std::string_view> lines = fieldLines(headers, name);
  if (lines.size() != 1) {
    return std::nullopt;
  }
  return lines.front();
}

} // namespace

std::optional<std::string_view> traceIdFromTraceparent(std::string_view value) {
  if (value.size() < kTraceparentV00Length) {
    return std::nullopt;
  }

  std::string_view version = value.substr(0, 2);
  if (!isLowerHex(version) || version == "ff" || value[2] != '-') {
    return std::nullopt;
  }
  if (version == "00" && value.size() != kTraceparentV00Length) {
    return std::nullopt;
  }

  std::string_view trace_id = value.substr(kTraceIdOffset, kTraceIdLength);
  std::string_view parent_id = value.substr(kParentIdOffset, kParentIdLength);
  std::string_view flags = value.substr(kFlagsOffset, 2);
  if (!isLowerHex(trace_id) || value[kParentIdOffset - 1] != '-' || !isLowerHex(parent_id) ||
      value[kFlagsOffset - 1] != '-' || !isLowerHex(flags)) {
    return std::nullopt;
  }
  if (isAllZeros(trace_id) || isAllZeros(parent_id)) {
    return std::nullopt;
  }

  // A later version may append fields, each introduced by '-'.
  if (value.size() > kTraceparentV00Length && value[kTraceparentV00Length] != '-') {
    return std::nullopt;
  }
  return trace_id;
}

std::optional<std::string> extractCorrelationId(const HeaderMap& headers,
                                                std::span<const CorrelationSource> sources) {
  for (const CorrelationSource& source : sources) {
    if (source.kind == CorrelationSource::Kind::kTraceparent) {
      std::optional<std::string_view> value = singleFieldLine(headers, kTraceparentHeader);
      if (!value) {
        continue;
      }
      if (std::optional<std::string_view> trace_id = traceIdFromTraceparent(*value)) {
        return std::string(*trace_id);
      }
      continue;
    }

    std::optional<std::string_view> value = singleFieldLine(headers, source.header_name);
    if (value && isPlainId(*value)) {
      return std::string(*value);
    }
  }
  return std::nullopt;
}

} // namespace deferd::filters::priority
