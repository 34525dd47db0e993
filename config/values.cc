#include "config/values.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstdio>

namespace deferd::config {
namespace {

constexpr std::string_view kDurationForm =
    "expected a number with unit ms, s, m or h, such as 250ms, 1.5s, 2m or 1h";
constexpr std::string_view kPercentForm =
    "expected a number from 0% to 100% with a '%' sign, such as 50% or 12.5%";
constexpr std::string_view kAddressForm =
    "expected host:port, such as 127.0.0.1:8080 or [::1]:8080";

bool isDigit(char c) { return c >= '0' && c <= '9'; }

bool isAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Splits "12.5rest" into "12", "5" and "rest". Returns false when `text` does not start with a
// digit or a '.' is not followed by a digit.
bool splitDecimal(std::string_view text, std::string_view* whole, std::string_view* fraction,
                  std::string_view* rest) {
  size_t i = 0;
  while (i < text.size() && isDigit(text[i])) {
    ++i;
  }
  if (i == 0) {
    return false;
  }
  *whole = text.substr(0, i);
  *fraction = {};

  if (i < text.size() && text[i] == '.') {
    size_t start = ++i;
    while (i < text.size() && isDigit(text[i])) {
      ++i;
    }
    if (i == start) {
      return false;
    }
    *fraction = text.substr(start, i - start);
  }
  *rest = text.substr(i);
  return true;
}

std::optional<double> toDouble(std::string_view text) {
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return std::nullopt;
  }
  return value;
}

int64_t unitMilliseconds(std::string_view unit) {
  if (unit == "ms") {
    return 1;
  }
  if (unit == "s") {
    return 1000;
  }
  if (unit == "m") {
    return 60 * 1000;
  }
  if (unit == "h") {
    return 3600 * 1000;
  }
  return 0;
}

// Optimal string alignment distance: insertions, deletions, substitutions and transpositions
// of neighbours each cost 1.
size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) {
    d[i][0] = i;
  }
  for (size_t j = 0; j <= b.size(); ++j) {
    d[0][j] = j;
  }

  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

std::string checkDnsName(std::string_view host) {
  std::string_view name = host;
  if (name.ends_with('.')) {
    name.remove_suffix(1); // a fully qualified name may end with the root's dot
  }
  std::string invalid = "'" + std::string(host) +
                        "' is not a valid host name: use labels of letters, digits and '-' "
                        "separated by '.'";
  if (name.empty() || name.size() > 253) {
    return invalid;
  }

  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string_view::npos) {
      end = name.size();
    }
    std::string_view label = name.substr(start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return invalid;
    }
    for (char c : label) {
      if (!isAlpha(c) && !isDigit(c) && c != '-') {
        return invalid;
      }
    }
    start = end + 1;
  }
  return "";
}

} // namespace

std::optional<Duration> parseDuration(std::string_view text, std::string* error) {
  std::string prefix = "invalid duration '" + std::string(text) + "': ";
  auto fail = [&](std::string_view reason) -> std::optional<Duration> {
    *error = prefix + std::string(reason);
    return std::nullopt;
  };

  if (text.starts_with('-')) {
    return fail("must not be negative; " + std::string(kDurationForm));
  }
  std::string_view whole;
  std::string_view fraction;
  std::string_view unit;
  if (!splitDecimal(text, &whole, &fraction, &unit)) {
    return fail(kDurationForm);
  }
  if (unit.empty()) {
    return fail("missing unit; " + std::string(kDurationForm));
  }
  int64_t multiplier = unitMilliseconds(unit);
  if (multiplier == 0) {
    return fail("unknown unit '" + std::string(unit) + "'; " + std::string(kDurationForm));
  }

  // Integer arithmetic keeps "1.1s" exact. 12 digits times 3600000 still fits in int64_t.
  whole.remove_prefix(std::min(whole.find_first_not_of('0'), whole.size()));
  if (whole.size() > 12) {
    return fail("must be at most " + formatDuration(kMaxDuration));
  }
  while (fraction.ends_with('0')) {
    fraction.remove_suffix(1);
  }
  int64_t whole_value = 0;
  std::from_chars(whole.data(), whole.data() + whole.size(), whole_value);
  int64_t milliseconds = whole_value * multiplier;

  if (!fraction.empty()) {
    // A fraction with more than 9 significant digits never yields whole milliseconds, because
    // the largest multiplier, 3600000 for h, has only seven factors of 2 and five of 5.
    int64_t fraction_value = 0;
    int64_t scale = 1;
    if (fraction.size() <= 9) {
      std::from_chars(fraction.data(), fraction.data() + fraction.size(), fraction_value);
      for (size_t i = 0; i < fraction.size(); ++i) {
        scale *= 10;
      }
    }
    if (fraction.size() > 9 || (fraction_value * multiplier) % scale != 0) {
      return fail("not a whole number of milliseconds");
    }
    milliseconds += fraction_value * multiplier / scale;
  }

  if (milliseconds == 0) {
    return fail("must be greater than 0");
  }
  if (milliseconds > kMaxDuration.count()) {
    return fail("must be at most " + formatDuration(kMaxDuration));
  }
  return Duration{milliseconds};
}

std::string formatDuration(Duration duration) {
  int64_t ms = duration.count();
  for (std::string_view unit : {"h", "m", "s"}) {
    int64_t multiplier = unitMilliseconds(unit);
    if (ms != 0 && ms % multiplier == 0) {
      return std::to_string(ms / multiplier) + std::string(unit);
    }
  }
  return std::to_string(ms) + "ms";
}

std::optional<double> parsePercent(std::string_view text, std::string* error) {
  std::string prefix = "invalid percentage '" + std::string(text) + "': ";
  std::string_view whole;
  std::string_view fraction;
  std::string_view rest;
  if (!splitDecimal(text, &whole, &fraction, &rest) || (rest != "%" && !rest.empty())) {
    *error = prefix + std::string(kPercentForm);
    return std::nullopt;
  }
  if (rest.empty()) {
    *error = prefix + "missing '%'; " + std::string(kPercentForm);
    return std::nullopt;
  }

  std::optional<double> percent = toDouble(text.substr(0, text.size() - 1));
  if (!percent || *percent > 100.0) {
    *error = prefix + "must be from 0% to 100%";
    return std::nullopt;
  }
  return *percent / 100.0;
}

std::string formatPercent(double share) {
  // Try ever more decimals until the text reads back as the same double.
  char buffer[64];
  for (int decimals = 0; decimals <= 17; ++decimals) {
    std::snprintf(buffer, sizeof buffer, "%.*f%%", decimals, share * 100.0);
    std::string unused;
    std::optional<double> parsed = parsePercent(buffer, &unused);
    if (parsed && *parsed == share) {
      return buffer;
    }
  }
  return buffer;
}

std::optional<double> parseDecimal(std::string_view text, std::string* error) {
  std::string_view whole;
  std::string_view fraction;
  std::string_view rest;
  std::optional<double> value;
  if (splitDecimal(text, &whole, &fraction, &rest) && rest.empty()) {
    value = toDouble(text);
  }
  if (!value) {
    *error = "expected a number such as 200 or 0.5, found '" + std::string(text) + "'";
  }
  return value;
}

std::string formatDecimal(double value) {
  char buffer[400]; // the fixed form of the largest double has 309 digits
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed);
  if (ec != std::errc()) {
    return std::to_string(value);
  }
  return std::string(buffer, end);
}

std::optional<uint64_t> parseUnsigned(std::string_view text, uint64_t min, uint64_t max,
                                      std::string* error) {
  std::string range = std::to_string(min) + " to " + std::to_string(max);
  bool digits_only = !text.empty() && std::all_of(text.begin(), text.end(), isDigit);
  if (!digits_only) {
    *error = "expected a whole number from " + range + ", found '" + std::string(text) + "'";
    return std::nullopt;
  }

  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || value < min || value > max) {
    *error = std::string(text) + " is out of range; expected " + range;
    return std::nullopt;
  }
  return value;
}

std::optional<Address> parseAddress(std::string_view text, std::string* error) {
  std::string prefix = "invalid address '" + std::string(text) + "': ";
  auto fail = [&](std::string_view reason) -> std::optional<Address> {
    *error = prefix + std::string(reason);
    return std::nullopt;
  };

  // Split off the port, after the last ':' or after the closing bracket of an IPv6 literal.
  std::string_view host;
  std::string_view port;
  bool bracketed = text.starts_with('[');
  if (bracketed) {
    size_t close = text.find(']');
    if (close == std::string_view::npos) {
      return fail("missing ']' after the IPv6 address; " + std::string(kAddressForm));
    }
    host = text.substr(1, close - 1);
    std::string_view after = text.substr(close + 1);
    if (!after.starts_with(':')) {
      return fail("missing port; " + std::string(kAddressForm));
    }
    port = after.substr(1);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return fail("missing port; " + std::string(kAddressForm));
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return fail("IPv6 addresses must be in brackets, such as [::1]:8080");
    }
  }

  if (host.empty()) {
    return fail("missing host; " + std::string(kAddressForm));
  }
  if (port.empty()) {
    return fail("missing port; " + std::string(kAddressForm));
  }
  std::string port_error;
  std::optional<uint64_t> port_value = parseUnsigned(port, 0, 65535, &port_error);
  if (!port_value) {
    return fail("invalid port '" + std::string(port) + "'; expected 0 to 65535");
  }

  Address address;
  address.port = static_cast<uint16_t>(*port_value);
  if (bracketed) {
    // Stored in the canonical text form (RFC 5952), so [0::1] and [::1] compare equal.
    std::string literal(host);
    in6_addr binary;
    char canonical[INET6_ADDRSTRLEN];
    if (inet_pton(AF_INET6, literal.c_str(), &binary) != 1 ||
        inet_ntop(AF_INET6, &binary, canonical, sizeof canonical) == nullptr) {
      return fail("'" + literal + "' is not an IPv6 address");
    }
    address.host = canonical;
    return address;
  }
  std::string host_error = checkHost(host);
  if (!host_error.empty()) {
    return fail(host_error);
  }
  address.host = toLower(host);
  return address;
}

bool isIpLiteral(const std::string& host) {
  in_addr v4;
  in6_addr v6;
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 || inet_pton(AF_INET6, host.c_str(), &v6) == 1;
}

std::string checkHost(std::string_view host) {
  if (host.empty()) {
    return "missing host";
  }

  // A name of digits and dots only would be read as an IPv4 address by resolvers.
  bool ipv4_shaped =
      std::all_of(host.begin(), host.end(), [](char c) { return isDigit(c) || c == '.'; });
  if (ipv4_shaped) {
    in_addr unused;
    if (inet_pton(AF_INET, std::string(host).c_str(), &unused) != 1) {
      return "'" + std::string(host) + "' is not an IPv4 address";
    }
    return "";
  }
  return checkDnsName(host);
}

std::string checkName(std::string_view name) {
  if (name.empty()) {
    return "name must not be empty";
  }
  for (char c : name) {
    if (!isAlpha(c) && !isDigit(c) && c != '.' && c != '_' && c != '-') {
      return "invalid name '" + std::string(name) + "': use only letters, digits, '.', '_' and '-'";
    }
  }
  return "";
}

std::string checkHeaderName(std::string_view name) {
  if (name.empty()) {
    return "header name must not be empty";
  }
  constexpr std::string_view kTokenSymbols = "!#$%&'*+-.^_`|~";
  for (char c : name) {
    if (!isAlpha(c) && !isDigit(c) && kTokenSymbols.find(c) == std::string_view::npos) {
      return "invalid header name '" + std::string(name) +
             "': use only letters, digits and !#$%&'*+-.^_`|~";
    }
  }
  return "";
}

std::string checkHeaderValue(std::string_view value) {
  for (char c : value) {
    auto byte = static_cast<unsigned char>(c);
    if (byte == '\t' || (byte >= 0x20 && byte != 0x7f)) {
      continue;
    }
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", byte);
    std::string what = std::string("control character ") + hex;
    if (byte == '\r') {
      what = "CR (0x0d)";
    } else if (byte == '\n') {
      what = "LF (0x0a)";
    } else if (byte == 0) {
      what = "NUL (0x00)";
    }
    return "contains " + what + ", which header values must not contain";
  }

  auto is_space = [](char c) { return c == ' ' || c == '\t'; };
  if (!value.empty() && (is_space(value.front()) || is_space(value.back()))) {
    return "starts or ends with whitespace, which HTTP removes from header values";
  }
  return "";
}

std::string toLower(std::string_view text) {
  std::string lower(text);
  for (char& c : lower) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return lower;
}

std::optional<std::string> nearestWord(std::string_view word,
                                       const std::vector<std::string_view>& candidates) {
  // Up to one edit per three characters reads as a typo; more is a different word.
  size_t limit = std::max<size_t>(1, word.size() / 3);
  std::optional<std::string> best;
  size_t best_distance = limit + 1;
  for (std::string_view candidate : candidates) {
    size_t distance = editDistance(toLower(word), candidate);
    if (distance < best_distance) {
      best_distance = distance;
      best = std::string(candidate);
    }
  }
  return best;
}

} // namespace deferd::config
