#pragma once

// The trust boundary for priority headers: the priority a request may set depends on the
// listener it arrived on and on the address of the peer that sent it.
//
// A trusted listener, or a peer inside one of the trusted CIDR ranges, gets the priority its
// header requests. Any other peer on an untrusted listener is an outside caller and may not
// forge urgency or inheritance state:
//   - with an urgency floor configured, an urgency more urgent than the floor is raised to the
//     floor (clamped), and the hop count is reset to 0, since an outside caller starts a new
//     inheritance chain;
//   - without a floor, the header is ignored entirely (stripped) and the route default
//     applies.
// The route's own default urgency is operator configuration and is never clamped.
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

#include "filters/priority/priority_header.h"

namespace deferd::filters::priority {

class IpAddress {
public:
  // Parses dotted-quad IPv4 or RFC 4291 IPv6 text without a zone id or brackets.
  static std::optional<IpAddress> parse(std::string_view text);
  static IpAddress fromV4(const std::array<uint8_t, 4>& bytes);
  static IpAddress fromV6(const std::array<uint8_t, 16>& bytes);

  bool isV4() const { return v4_; }
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

enum class ListenerTrust { kTrusted, kUntrusted };

struct TrustPolicy {
  ListenerTrust listener = ListenerTrust::kUntrusted;
  // The lowest (most urgent) urgency value an outside caller may request. Without a floor, an
  // outside caller's header is stripped.
  std::optional<int> untrusted_floor = kDefaultUrgency;
};

enum class TrustOutcome {
  kUnchanged, // the header was absent or malformed, or taken as it was
  kClamped,   // an outside caller's urgency was raised to the floor or its hop reset
  kStripped,  // an outside caller's header was ignored
};

struct TrustDecision {
  Priority priority;
  TrustOutcome outcome = TrustOutcome::kUnchanged;
};

// Decides the priority a request gets from its parsed header. default_urgency is the route's
// default, used where the header sets no urgency or is malformed.
TrustDecision applyTrust(const PriorityParseResult& requested, int default_urgency,
                         const TrustPolicy& policy, bool peer_in_trusted_cidrs);

} // namespace deferd::filters::priority
