#include "config/cidr.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

namespace deferd::config {

namespace {

constexpr std::array<uint8_t, 12> kV4MappedPrefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
constexpr int kV4MappedPrefixLength = 96;

struct AddressText {
  std::array<uint8_t, 16> bytes{};
  bool v4 = false;
};

// Parses the address text with inet_pton, which accepts only the dotted-quad form for IPv4
// (no octal, hex or shortened forms) and RFC 4291 text for IPv6.
std::optional<AddressText> parseAddressText(std::string_view text) {
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) {
    return std::nullopt;
  }
  std::string terminated(text);
  AddressText parsed;
  if (inet_pton(AF_INET, terminated.c_str(), parsed.bytes.data()) == 1) {
    parsed.v4 = true;
    return parsed;
  }
  if (inet_pton(AF_INET6, terminated.c_str(), parsed.bytes.data()) == 1) {
    return parsed;
  }
  return std::nullopt;
}

bool isV4Mapped(const std::array<uint8_t, 16>& bytes) {
  return std::equal(kV4MappedPrefix.begin(), kV4MappedPrefix.end(), bytes.begin());
}

std::array<uint8_t, 4> embeddedV4(const std::array<uint8_t, 16>& bytes) {
  return {bytes[12], bytes[13], bytes[14], bytes[15]};
}

// inet_pton(AF_INET) writes the IPv4 address into the first 4 bytes.
std::array<uint8_t, 4> leadingV4(const std::array<uint8_t, 16>& bytes) {
  return {bytes[0], bytes[1], bytes[2], bytes[3]};
}

// Returns whether the first prefix_length bits of a and b are equal.
bool samePrefix(const std::array<uint8_t, 16>& a, const std::array<uint8_t, 16>& b,
                int prefix_length) {
  int full_bytes = prefix_length / 8;
  if (std::memcmp(a.data(), b.data(), static_cast<size_t>(full_bytes)) != 0) {
    return false;
  }
  int rest_bits = prefix_length % 8;
  if (rest_bits == 0) {
    return true;
  }
  auto mask = static_cast<uint8_t>(0xff << (8 - rest_bits));
  return (a[full_bytes] & mask) == (b[full_bytes] & mask);
}

// Returns the address with every bit past prefix_length cleared.
std::array<uint8_t, 16> maskedTo(std::array<uint8_t, 16> bytes, int prefix_length) {
  for (int bit = prefix_length; bit < 128; ++bit) {
    bytes[bit / 8] &= static_cast<uint8_t>(~(0x80 >> (bit % 8)));
  }
  return bytes;
}

// A prefix length in canonical decimal: digits only, no sign, no leading zero.
std::optional<int> parsePrefixLength(std::string_view text) {
  if (text.empty() || text.size() > 3 || (text.size() > 1 && text[0] == '0')) {
    return std::nullopt;
  }
  int value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    value = value * 10 + (c - '0');
  }
  return value;
}

// Formats address bytes as parsed by parseAddressText, keeping the family of the input text.
std::string formatAddressText(const std::array<uint8_t, 16>& bytes, bool v4) {
  char buffer[INET6_ADDRSTRLEN] = {};
  inet_ntop(v4 ? AF_INET : AF_INET6, bytes.data(), buffer, sizeof(buffer));
  return buffer;
}

} // namespace

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  std::optional<AddressText> parsed = parseAddressText(text);
  if (!parsed) {
    return std::nullopt;
  }
  if (parsed->v4) {
    return fromV4(leadingV4(parsed->bytes));
  }
  return fromV6(parsed->bytes);
}

IpAddress IpAddress::fromV4(const std::array<uint8_t, 4>& bytes) {
  IpAddress address;
  std::copy(bytes.begin(), bytes.end(), address.bytes_.begin());
  address.v4_ = true;
  return address;
}

IpAddress IpAddress::fromV6(const std::array<uint8_t, 16>& bytes) {
  if (isV4Mapped(bytes)) {
    return fromV4(embeddedV4(bytes));
  }
  IpAddress address;
  address.bytes_ = bytes;
  return address;
}

std::optional<CidrRange> CidrRange::parse(std::string_view text, std::string& error) {
  size_t slash = text.find('/');
  if (slash == std::string_view::npos) {
    error = "invalid CIDR range '" + std::string(text) +
            "': missing prefix length; write a single address as /32 (IPv4) or /128 (IPv6)";
    return std::nullopt;
  }

  std::optional<AddressText> parsed = parseAddressText(text.substr(0, slash));
  if (!parsed) {
    error = "invalid CIDR range '" + std::string(text) + "': '" +
            std::string(text.substr(0, slash)) + "' is not an IPv4 or IPv6 address";
    return std::nullopt;
  }

  int max_length = parsed->v4 ? 32 : 128;
  std::optional<int> prefix_length = parsePrefixLength(text.substr(slash + 1));
  if (!prefix_length || *prefix_length > max_length) {
    error = "invalid CIDR range '" + std::string(text) + "': the prefix length must be 0 to " +
            std::to_string(max_length);
    return std::nullopt;
  }

  // Host bits must be clear, so that a typo such as 10.1.2.3/8 cannot widen a range unseen.
  std::array<uint8_t, 16> bits = parsed->bytes;
  int bit_length = *prefix_length;
  if (parsed->v4) {
    std::fill(bits.begin() + 4, bits.end(), 0);
  }
  std::array<uint8_t, 16> masked = maskedTo(bits, bit_length);
  if (masked != bits) {
    error = "invalid CIDR range '" + std::string(text) +
            "': bits past the prefix length are set; did you mean " +
            formatAddressText(masked, parsed->v4) + "/" + std::to_string(bit_length) + "?";
    return std::nullopt;
  }

  if (parsed->v4) {
    return CidrRange(IpAddress::fromV4(leadingV4(bits)), bit_length);
  }
  if (bit_length >= kV4MappedPrefixLength && isV4Mapped(bits)) {
    return CidrRange(IpAddress::fromV4(embeddedV4(bits)), bit_length - kV4MappedPrefixLength);
  }
  return CidrRange(IpAddress::fromV6(bits), bit_length);
}

std::string IpAddress::toString() const { return formatAddressText(bytes_, v4_); }

std::string CidrRange::toString() const {
  return base_.toString() + "/" + std::to_string(prefix_length_);
}

bool CidrRange::contains(const IpAddress& address) const {
  if (address.isV4() != base_.isV4()) {
    return false;
  }
  return samePrefix(address.bytes(), base_.bytes(), prefix_length_);
}

CidrListParseResult parseCidrList(const std::vector<std::string>& entries) {
  CidrListParseResult result;
  for (const std::string& entry : entries) {
    std::string error;
    if (std::optional<CidrRange> range = CidrRange::parse(entry, error)) {
      result.ranges.push_back(*range);
    } else {
      result.errors.push_back(std::move(error));
    }
  }
  return result;
}

bool cidrListContains(const std::vector<CidrRange>& ranges, const IpAddress& address) {
  return std::any_of(ranges.begin(), ranges.end(),
                     [&](const CidrRange& range) { return range.contains(address); });
}

} // namespace deferd::config
