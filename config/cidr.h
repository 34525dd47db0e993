#pragma once

// IP addresses and CIDR ranges, for listener options such as trusted_cidrs. Beast-free and
// without Asio, so the config loader can validate ranges and filters can match peers.
//
// Addresses: IPv4 and IPv6. An IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 section
// 2.5.5.2), as a dual-stack socket reports IPv4 peers, is treated as the IPv4 address, both as
// a peer and as a CIDR base with a prefix of at least 96. Other IPv6 ranges, including ::/0,
// never match IPv4 peers.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deferd::config {

class IpAddress {
public:
  // Parses dotted-quad IPv4 or RFC 4291 IPv6 text without a zone id or brackets.
  static std::optional<IpAddress> parse(std::string_view text);
  static IpAddress fromV4(const std::array<uint8_t, 4>& bytes);
  static IpAddress fromV6(const std::array<uint8_t, 16>& bytes);

  bool isV4() const { return v4_; }
  std::string toString() const;
  // The address in network byte order. An IPv4 address uses the first 4 bytes.
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }

  bool operator==(const IpAddress&) const = default;

private:
  std::array<uint8_t, 16> bytes_{};
  bool v4_ = false;
};

class CidrRange {
public:
  // Parses `address/prefix-length`, for example 10.0.0.0/8 or fd00::/8. Returns nullopt and
  // sets error when the text is invalid, including when bits past the prefix are set.
  static std::optional<CidrRange> parse(std::string_view text, std::string& error);

  bool contains(const IpAddress& address) const;

  const IpAddress& base() const { return base_; }
  int prefixLength() const { return prefix_length_; }

  // Formats the range as `address/prefix-length`.
  std::string toString() const;

private:
  CidrRange(IpAddress base, int prefix_length) : base_(base), prefix_length_(prefix_length) {}

  IpAddress base_;
  int prefix_length_;
};

struct CidrListParseResult {
  std::vector<CidrRange> ranges;
  // One message per invalid entry. The ranges are usable only when this is empty.
  std::vector<std::string> errors;
};

CidrListParseResult parseCidrList(const std::vector<std::string>& entries);

// Returns whether any range contains the address.
bool cidrListContains(const std::vector<CidrRange>& ranges, const IpAddress& address);

} // namespace deferd::config
