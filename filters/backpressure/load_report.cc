#include "filters/backpressure/load_report.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace deferd::filters::backpressure {

namespace {

constexpr std::string_view kTextPrefix = "TEXT ";
constexpr std::string_view kUtilization = "application_utilization";
constexpr std::string_view kCpuUtilization = "cpu_utilization";
constexpr std::string_view kQueue = "named_metrics.queue";
constexpr std::string_view kDefer = "named_metrics.defer";

// ORCA fields that are validated and ignored.
constexpr std::array<std::string_view, 3> kIgnoredFields = {"mem_utilization", "rps_fractional",
                                                            "eps"};
constexpr std::array<std::string_view, 3> kIgnoredMapPrefixes = {"named_metrics.", "utilization.",
                                                                 "request_cost."};

std::string_view trim(std::string_view text) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t'; };
  while (!text.empty() && is_space(text.front())) {
    text.remove_prefix(1);
  }
  while (!text.empty() && is_space(text.back())) {
    text.remove_suffix(1);
  }
  return text;
}

bool isNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

bool validName(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), isNameChar);
}

bool knownIgnoredName(std::string_view name) {
  if (std::find(kIgnoredFields.begin(), kIgnoredFields.end(), name) != kIgnoredFields.end()) {
    return true;
  }
  return std::any_of(kIgnoredMapPrefixes.begin(), kIgnoredMapPrefixes.end(),
                     [&](std::string_view prefix) {
                       return name.size() > prefix.size() && name.starts_with(prefix);
                     });
}

// Parses a plain decimal number: digits, an optional fraction and exponent. from_chars would
// also take "nan", "inf" and hexadecimal forms, which are rejected first.
std::optional<double> parseNumber(std::string_view text) {
  if (text.empty() ||
      !(std::isdigit(static_cast<unsigned char>(text.front())) || text.front() == '.')) {
    return std::nullopt;
  }
  double value = 0.0;
  const auto [end, error] =
      std::from_chars(text.data(), text.data() + text.size(), value, std::chars_format::general);
  if (error != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) {
    return std::nullopt;
  }
  return value;
}

struct Fields {
  std::optional<double> utilization;
  std::optional<double> cpu_utilization;
  std::optional<double> queue;
  std::optional<double> defer;
};

// Stores one known field. Returns an error message, or empty on success.
std::string_view storeField(Fields& fields, std::string_view name, double value) {
  if (name == kUtilization || name == kCpuUtilization) {
    if (value > kMaxReportedUtilization) {
      return "utilization is out of range";
    }
    (name == kUtilization ? fields.utilization : fields.cpu_utilization) = value;
  } else if (name == kQueue) {
    if (value != std::floor(value) || value > static_cast<double>(kMaxReportedQueue)) {
      return "named_metrics.queue is not a whole number in range";
    }
    fields.queue = value;
  } else if (name == kDefer) {
    if (value != 0.0 && value != 1.0) {
      return "named_metrics.defer is not 0 or 1";
    }
    fields.defer = value;
  } else if (!knownIgnoredName(name)) {
    return "unknown field name";
  }
  return {};
}

LoadReportParse failure(std::string_view error) { return LoadReportParse{std::nullopt, error}; }

} // namespace

std::string formatLoadReport(const LoadReport& report) {
  double utilization = report.utilization;
  if (!(utilization >= 0.0)) {
    utilization = 0.0;
  }
  utilization = std::min(utilization, kMaxReportedUtilization);
  const unsigned long long queue = std::min(report.queue, kMaxReportedQueue);

  std::array<char, 160> buffer{};
  const int length = std::snprintf(buffer.data(), buffer.size(),
                                   "TEXT application_utilization=%.3f, named_metrics.queue=%llu, "
                                   "named_metrics.defer=%d",
                                   utilization, queue, report.defer ? 1 : 0);
  return std::string(buffer.data(), static_cast<size_t>(std::max(length, 0)));
}

LoadReportParse parseLoadReport(std::string_view value) noexcept {
  if (value.size() > kMaxLoadReportLength) {
    return failure("header is longer than 1024 bytes");
  }
  value = trim(value);
  if (!value.starts_with(kTextPrefix)) {
    return failure("header does not start with \"TEXT \"");
  }
  value.remove_prefix(kTextPrefix.size());

  Fields fields;
  std::array<std::string_view, kMaxLoadReportFields> seen{};
  size_t count = 0;
  while (true) {
    const size_t comma = value.find(',');
    const std::string_view field = trim(value.substr(0, comma));
    const size_t equals = field.find('=');
    if (field.empty() || equals == std::string_view::npos) {
      return failure("field is not name=value");
    }
    const std::string_view name = trim(field.substr(0, equals));
    const std::optional<double> number = parseNumber(trim(field.substr(equals + 1)));
    if (!validName(name)) {
      return failure("field name is invalid");
    }
    if (!number) {
      return failure("field value is not a finite non-negative number");
    }
    if (count == kMaxLoadReportFields) {
      return failure("header has too many fields");
    }
    if (std::find(seen.begin(), seen.begin() + count, name) != seen.begin() + count) {
      return failure("field name is repeated");
    }
    seen[count++] = name;
    if (std::string_view error = storeField(fields, name, *number); !error.empty()) {
      return failure(error);
    }
    if (comma == std::string_view::npos) {
      break;
    }
    value.remove_prefix(comma + 1);
  }

  if (!fields.utilization && !fields.cpu_utilization && !fields.queue && !fields.defer) {
    return failure("header has no utilization, queue or defer field");
  }
  LoadReport report;
  report.utilization = fields.utilization.value_or(fields.cpu_utilization.value_or(0.0));
  report.queue = static_cast<uint64_t>(fields.queue.value_or(0.0));
  report.defer = fields.defer.value_or(0.0) == 1.0;
  return LoadReportParse{report, {}};
}

} // namespace deferd::filters::backpressure
