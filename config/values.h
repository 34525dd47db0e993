#pragma once

// Parsing and formatting of the scalar forms in deferd's YAML: durations, percentages,
// addresses, numbers, names and HTTP header fields.
//
// The parse functions return std::nullopt on invalid input and store in *error a message that
// shows the value and the accepted form. The loader prefixes that message with the key's path.
// Each format function writes text that the matching parse function reads back to the same value.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace deferd::config {

// Maximum duration accepted, so deadline arithmetic on the steady clock stays far from overflow.
inline constexpr Duration kMaxDuration{720LL * 3600 * 1000}; // 720h, 30 days

// Parses a positive duration: digits, an optional decimal fraction and one of the units ms, s,
// m or h ("250ms", "1.5s", "2m", "1h"). The result must be a whole number of milliseconds
// from 1ms to kMaxDuration.
std::optional<Duration> parseDuration(std::string_view text, std::string* error);

// Writes a duration in the largest unit that divides it exactly ("15s", "5m", "1500ms").
std::string formatDuration(Duration duration);

// Parses "0%" to "100%" with an optional decimal fraction ("12.5%") into a share from 0 to 1.
std::optional<double> parsePercent(std::string_view text, std::string* error);

// Writes a share from 0 to 1 as the shortest percentage that parsePercent reads back exactly.
std::string formatPercent(double share);

// Parses a decimal number without sign or exponent ("200", "0.5").
std::optional<double> parseDecimal(std::string_view text, std::string* error);

// Writes a number in the shortest fixed-point form that parseDecimal reads back exactly.
std::string formatDecimal(double value);

// Parses a decimal integer without sign, from `min` to `max`.
std::optional<uint64_t> parseUnsigned(std::string_view text, uint64_t min, uint64_t max,
                                      std::string* error);

// Parses "host:port" or "[ipv6]:port" with a port from 0 to 65535. The host is an IPv4
// literal, an IPv6 literal in brackets (stored canonical, without brackets) or a DNS name
// (stored lower-case).
std::optional<Address> parseAddress(std::string_view text, std::string* error);

// Returns whether `host` is an IPv4 or IPv6 literal (without brackets).
bool isIpLiteral(const std::string& host);

// Checks a DNS name or IP literal without port, as written in a route's authority match.
// Returns an error message, or an empty string when the host is valid.
std::string checkHost(std::string_view host);

// Checks a listener, cluster, policy or service name: letters, digits, '.', '_' and '-'.
// Returns an error message, or an empty string when the name is valid.
std::string checkName(std::string_view name);

// Checks an HTTP field name (RFC 9110 token). Returns an error message or an empty string.
std::string checkHeaderName(std::string_view name);

// Checks an HTTP field value: no control characters other than horizontal tab, and no leading
// or trailing whitespace (RFC 9110 field-value). Returns an error message or an empty string.
std::string checkHeaderValue(std::string_view value);

std::string toLower(std::string_view text);

// Returns the candidate nearest to `word` by edit distance when it is close enough to be a
// likely typo, so messages can suggest it.
std::optional<std::string> nearestWord(std::string_view word,
                                       const std::vector<std::string_view>& candidates);

} // namespace deferd::config
