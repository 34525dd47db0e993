#include "proxy/http_translation.h"

#include <algorithm>
#include <array>
#include <charconv>

namespace deferd {

namespace {

// ASCII only, as field names are: std::tolower would cost a locale-aware call per byte.
char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::string lowerCase(std::string_view value) {
  std::string out(value);
  std::transform(out.begin(), out.end(), out.begin(), lower);
  return out;
}

std::string_view trim(std::string_view value) {
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
    value.remove_prefix(1);
  }
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
    value.remove_suffix(1);
  }
  return value;
}

void appendField(std::string& out, std::string_view name, std::string_view value) {
  out.append(name).append(": ").append(value).append("\r\n");
}

} // namespace

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); i++) {
    if (lower(a[i]) != lower(b[i])) {
      return false;
    }
  }
  return true;
}

bool isConnectionSpecific(std::string_view name) {
  static constexpr std::array<std::string_view, 6> kNames{
      "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"};
  return std::find(kNames.begin(), kNames.end(), name) != kNames.end();
}

std::optional<std::string_view> HeaderListMap::get(std::string_view name) const {
  for (const HeaderField& field : fields_) {
    if (equalsIgnoreCase(field.name, name)) {
      return std::string_view(field.value);
    }
  }
  return std::nullopt;
}

void HeaderListMap::set(std::string_view name, std::string_view value) {
  remove(name);
  append(name, value);
}

void HeaderListMap::append(std::string_view name, std::string_view value) {
  fields_.push_back(HeaderField{lowerCase(name), std::string(value)});
}

void HeaderListMap::remove(std::string_view name) {
  std::erase_if(fields_,
                [name](const HeaderField& field) { return equalsIgnoreCase(field.name, name); });
}

void HeaderListMap::forEach(
    const std::function<void(std::string_view, std::string_view)>& visit) const {
  for (const HeaderField& field : fields_) {
    visit(field.name, field.value);
  }
}

std::string_view http2RequestError(const Http2RequestHead& head) {
  if (head.method.empty()) {
    return "missing :method";
  }
  if (head.method == "CONNECT") {
    return "CONNECT is not supported";
  }
  if (head.path.empty()) {
    return "missing :path";
  }
  if (head.path != "*" && head.path.front() != '/') {
    return "the :path is not in origin form";
  }
  if (head.path == "*" && head.method != "OPTIONS") {
    return "the :path '*' is only valid for OPTIONS";
  }
  for (char c : head.path) {
    if (c <= ' ' || c == 0x7f) {
      return "the :path contains a space or control character";
    }
  }
  size_t lengths = 0;
  for (const HeaderField& field : head.fields) {
    if (!field.is("content-length")) {
      continue;
    }
    lengths++;
    uint64_t value = 0;
    auto [end, ec] =
        std::from_chars(field.value.data(), field.value.data() + field.value.size(), value);
    if (ec != std::errc() || end != field.value.data() + field.value.size() ||
        field.value.empty()) {
      return "content-length is not a decimal number";
    }
  }
  if (lengths > 1) {
    return "more than one content-length field";
  }
  return {};
}

std::optional<uint64_t> contentLength(const HeaderList& fields) {
  for (const HeaderField& field : fields) {
    if (field.is("content-length")) {
      uint64_t value = 0;
      std::from_chars(field.value.data(), field.value.data() + field.value.size(), value);
      return value;
    }
  }
  return std::nullopt;
}

void appendHttp1RequestHead(std::string& out, const Http2RequestHead& head, BodyFraming framing) {
  // One allocation for the whole head: ": " and CRLF add 4 bytes per field, and the request
  // line, Host and transfer-encoding fit in the 64 bytes of slack.
  size_t size = out.size() + head.method.size() + head.path.size() + head.authority.size() + 64;
  for (const HeaderField& field : head.fields) {
    size += field.name.size() + field.value.size() + 4;
  }
  out.reserve(size);

  out.append(head.method).append(" ").append(head.path).append(" HTTP/1.1\r\n");

  // :authority takes the place of Host (RFC 9113 section 8.3.1); without it, a client's Host
  // field goes through as it is.
  bool has_authority = !head.authority.empty();
  if (has_authority) {
    appendField(out, "host", head.authority);
  }

  std::string cookie;
  for (const HeaderField& field : head.fields) {
    if (isConnectionSpecific(field.name) || (has_authority && field.is("host"))) {
      continue;
    }
    if (field.is("content-length") && framing != BodyFraming::kContentLength) {
      continue;
    }
    if (field.is("cookie")) {
      if (!cookie.empty()) {
        cookie.append("; ");
      }
      cookie.append(field.value);
      continue;
    }
    appendField(out, field.name, field.value);
  }
  if (!cookie.empty()) {
    appendField(out, "cookie", cookie);
  }
  if (framing == BodyFraming::kChunked) {
    appendField(out, "transfer-encoding", "chunked");
  }
  out.append("\r\n");
}

void removeConnectionSpecific(HeaderList& fields) {
  // Every token of every Connection field names a field to drop as well. Those fields get an
  // empty name, which no parsed field has, so one erase pass removes them with the rest and no
  // list of names is allocated. Connection fields keep their names until then, so each one's
  // tokens are read.
  for (const HeaderField& connection : fields) {
    if (!connection.is("connection")) {
      continue;
    }
    std::string_view rest = connection.value;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view token = trim(rest.substr(0, comma));
      for (HeaderField& field : fields) {
        if (!token.empty() && !field.is("connection") && equalsIgnoreCase(field.name, token)) {
          field.name.clear();
        }
      }
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
  }
  std::erase_if(fields, [](const HeaderField& field) {
    return field.name.empty() || isConnectionSpecific(field.name);
  });
}

void appendLastChunk(std::string& out, const HeaderList& trailers) {
  out.append("0\r\n");
  for (const HeaderField& field : trailers) {
    if (isConnectionSpecific(field.name) || field.is("content-length")) {
      continue;
    }
    appendField(out, field.name, field.value);
  }
  out.append("\r\n");
}

} // namespace deferd
