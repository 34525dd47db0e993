#include "proxy/http1_headers.h"

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/status.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace deferd {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

// Connection-specific fields (RFC 9110, section 7.6.1) that a proxy must not forward.
// Transfer-Encoding is framing: it is kept and the serializer re-frames the body.
constexpr http::field kHopByHop[] = {http::field::connection,       http::field::keep_alive,
                                     http::field::proxy_connection, http::field::te,
                                     http::field::trailer,          http::field::upgrade};

bool iequals(std::string_view a, std::string_view b) { return beast::iequals(a, b); }

} // namespace

std::string_view trimWhitespace(std::string_view value) {
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
    value.remove_prefix(1);
  }
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
    value.remove_suffix(1);
  }
  return value;
}

void removeHopByHop(http::fields& fields) {
  // One pass finds the fixed hop-by-hop fields; most messages have none, and then nothing
  // else runs.
  bool has_connection = false;
  bool found = false;
  for (const auto& field : fields) {
    switch (field.name()) {
    case http::field::connection:
      has_connection = true;
      found = true;
      break;
    case http::field::keep_alive:
    case http::field::proxy_connection:
    case http::field::te:
    case http::field::trailer:
    case http::field::upgrade:
      found = true;
      break;
    default:
      break;
    }
  }
  if (!found) {
    return;
  }

  std::vector<std::string> named;
  if (has_connection) {
    for (auto range = fields.equal_range(http::field::connection); range.first != range.second;
         ++range.first) {
      std::string_view value = range.first->value();
      while (!value.empty()) {
        size_t comma = value.find(',');
        std::string_view token = trimWhitespace(value.substr(0, comma));
        bool own = token.size() > 7 && iequals(token.substr(0, 7), "deferd-");
        if (!token.empty() && !own && !iequals(token, "content-length") &&
            !iequals(token, "transfer-encoding") && !iequals(token, "host")) {
          named.emplace_back(token);
        }
        value = comma == std::string_view::npos ? std::string_view{} : value.substr(comma + 1);
      }
    }
  }
  for (const std::string& name : named) {
    fields.erase(name);
  }
  for (http::field name : kHopByHop) {
    fields.erase(name);
  }
}

RequestFields::RequestFields(const http::fields& fields) {
  for (const auto& field : fields) {
    count++;
    switch (field.name()) {
    case http::field::content_length:
      content_lengths++;
      content_length = field.value();
      break;
    case http::field::transfer_encoding:
      transfer_encodings++;
      transfer_encoding = field.value();
      break;
    case http::field::host:
      hosts++;
      host = field.value();
      break;
    case http::field::expect:
      has_expect = true;
      expect = field.value();
      break;
    case http::field::unknown:
      if (iequals(field.name_string(), "x-forwarded-for")) {
        has_forwarded_for = true;
        forwarded_for_lines++;
        forwarded_for = field.value();
      } else if (iequals(field.name_string(), "x-request-id")) {
        has_request_id = true;
        request_id = field.value();
      }
      break;
    default:
      break;
    }
  }
}

std::string_view framingError(const RequestFields& fields, unsigned version) {
  if (fields.content_lengths > 1) {
    return "duplicate Content-Length";
  }
  if (fields.content_lengths == 1) {
    std::string_view value = fields.content_length;
    if (value.empty() || value.find_first_not_of("0123456789") != std::string_view::npos) {
      return "invalid Content-Length";
    }
  }
  if (fields.transfer_encodings > 0) {
    if (fields.content_lengths > 0) {
      return "both Content-Length and Transfer-Encoding";
    }
    if (version < 11) {
      return "Transfer-Encoding in an HTTP/1.0 request";
    }
    if (fields.transfer_encodings > 1 ||
        !iequals(trimWhitespace(fields.transfer_encoding), "chunked")) {
      return "Transfer-Encoding other than chunked";
    }
  }
  if (fields.hosts > 1) {
    return "duplicate Host";
  }
  if (fields.hosts == 0 && version >= 11) {
    return "missing Host";
  }
  if (fields.hosts == 1 && !validHost(fields.host)) {
    return "invalid Host";
  }
  return {};
}

namespace {

bool isRegNameChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
    return true;
  }
  // unreserved, pct-encoded's '%' (its digits are checked by the caller) and sub-delims
  return std::string_view("-._~%!$&'()*+,;=").find(c) != std::string_view::npos;
}

bool isHexDigit(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool validPort(std::string_view port) {
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos) {
    return false;
  }
  return port.empty() || std::stoul(std::string(port)) <= 65535;
}

void appendFields(std::string& out, const http::fields& fields) {
  for (const auto& field : fields) {
    out.append(field.name_string());
    out.append(": ");
    out.append(field.value());
    out.append("\r\n");
  }
  out.append("\r\n");
}

} // namespace

bool validHost(std::string_view value) {
  std::string_view host = value;
  std::string_view port;
  if (value.starts_with('[')) {
    size_t close = value.find(']');
    if (close == std::string_view::npos || close == 1) {
      return false;
    }
    std::string_view address = value.substr(1, close - 1);
    for (char c : address) {
      if (!isHexDigit(c) && c != ':' && c != '.') {
        return false;
      }
    }
    std::string_view rest = value.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return false;
      }
      port = rest.substr(1);
    }
    return validPort(port);
  }

  size_t colon = value.rfind(':');
  if (colon != std::string_view::npos) {
    host = value.substr(0, colon);
    port = value.substr(colon + 1);
  }
  for (size_t i = 0; i < host.size(); i++) {
    if (!isRegNameChar(host[i])) {
      return false;
    }
    if (host[i] == '%' &&
        (i + 2 >= host.size() || !isHexDigit(host[i + 1]) || !isHexDigit(host[i + 2]))) {
      return false;
    }
  }
  return validPort(port);
}

void appendRequestHead(std::string& out, const http::request_header<>& head) {
  out.append(head.method_string());
  out.push_back(' ');
  out.append(head.target());
  out.append(head.version() == 10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
  appendFields(out, head);
}

std::string_view reasonPhrase(unsigned status) {
  http::status code = http::int_to_status(status);
  if (code == http::status::unknown) {
    return {};
  }
  return http::obsolete_reason(code);
}

void appendResponseHead(std::string& out, const http::response_header<>& head) {
  unsigned status = head.result_int();
  char code[4] = {static_cast<char>('0' + status / 100 % 10),
                  static_cast<char>('0' + status / 10 % 10), static_cast<char>('0' + status % 10),
                  ' '};
  out.append("HTTP/1.1 ");
  out.append(code, sizeof(code));

  // Without a phrase of its own, Beast's reason() returns its table's, and "<unknown-status>"
  // for a code the table does not name.
  std::string_view reason = head.reason();
  if (reason == http::obsolete_reason(head.result())) {
    reason = reasonPhrase(status);
  }
  out.append(reason);
  out.append("\r\n");
  appendFields(out, head);
}

size_t formatChunkLine(char* out, size_t size) {
  static constexpr char kHex[] = "0123456789abcdef";
  char digits[16];
  size_t count = 0;
  do {
    digits[count++] = kHex[size & 0xf];
    size >>= 4;
  } while (size > 0);

  size_t length = 0;
  while (count > 0) {
    out[length++] = digits[--count];
  }
  out[length++] = '\r';
  out[length++] = '\n';
  return length;
}

void HeadFieldSnapshot::record(const boost::beast::http::fields& fields) {
  fields_.clear();
  for (const auto& field : fields) {
    fields_.push_back(&field);
  }
}

HeaderList HeadFieldSnapshot::trailers(const boost::beast::http::fields& fields) const {
  HeaderList out;
  for (const auto& field : fields) {
    if (std::find(fields_.begin(), fields_.end(), &field) != fields_.end()) {
      continue;
    }
    std::string name(field.name_string());
    for (char& c : name) {
      c = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
    }
    if (isConnectionSpecific(name) || name == "content-length" || name == "host") {
      continue;
    }
    out.push_back(HeaderField{std::move(name), std::string(field.value())});
  }
  return out;
}

} // namespace deferd
