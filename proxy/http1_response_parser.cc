#include "proxy/http1_response_parser.h"

#include <algorithm>
#include <array>
#include <charconv>

#include "proxy/http_translation.h"

namespace deferd {

namespace {

constexpr size_t kMaxChunkLineBytes = 1024;
// Room reserved for a response head's fields, enough for a typical response in one allocation.
constexpr size_t kExpectedFields = 8;

// Per byte: 0 when the byte may not appear in a field name, else the byte lower-cased. Field
// names are RFC 9110 section 5.6.2 tokens. A table lookup per byte keeps head parsing off the
// locale-aware std::isalnum and std::tolower, which cost a call each.
constexpr std::array<char, 256> kTokenLower = [] {
  std::array<char, 256> table{};
  for (int c = '0'; c <= '9'; ++c) {
    table[c] = static_cast<char>(c);
  }
  for (int c = 'a'; c <= 'z'; ++c) {
    table[c] = static_cast<char>(c);
    table[c - 'a' + 'A'] = static_cast<char>(c);
  }
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) {
    table[static_cast<unsigned char>(c)] = c;
  }
  return table;
}();

std::string_view trim(std::string_view value) {
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
    value.remove_prefix(1);
  }
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
    value.remove_suffix(1);
  }
  return value;
}

// Per byte of a field value: whether RFC 9110 section 5.5 allows it (visible characters,
// space, tab and obs-text), and whether it is a CR or LF that ends a line too early.
enum class ValueByte : char { kAllowed, kInvalid, kLineEnd };

constexpr std::array<ValueByte, 256> kValueBytes = [] {
  std::array<ValueByte, 256> table{};
  for (int c = 0; c < ' '; ++c) {
    table[c] = ValueByte::kInvalid;
  }
  table['\t'] = ValueByte::kAllowed;
  table['\r'] = ValueByte::kLineEnd;
  table['\n'] = ValueByte::kLineEnd;
  table[0x7f] = ValueByte::kInvalid;
  return table;
}();

enum class FieldError { kNone, kInvalid, kLineEnd };

// Parses one "name: value" line (without its CRLF) into `out`. Obsolete line folding and white
// space before the colon make the field invalid. A CR or LF inside the line is a bare line end,
// which the head's split at CRLF does not catch.
FieldError parseFieldLine(std::string_view line, HeaderList& out) {
  size_t colon = line.find(':');
  if (colon == 0 || colon == std::string_view::npos) {
    return line.find_first_of("\r\n") == std::string_view::npos ? FieldError::kInvalid
                                                                : FieldError::kLineEnd;
  }

  std::string name(colon, '\0');
  for (size_t i = 0; i < colon; ++i) {
    char lower = kTokenLower[static_cast<unsigned char>(line[i])];
    if (lower == 0) {
      return line[i] == '\r' || line[i] == '\n' ? FieldError::kLineEnd : FieldError::kInvalid;
    }
    name[i] = lower;
  }

  std::string_view value = trim(line.substr(colon + 1));
  for (char c : value) {
    ValueByte kind = kValueBytes[static_cast<unsigned char>(c)];
    if (kind != ValueByte::kAllowed) {
      return kind == ValueByte::kLineEnd ? FieldError::kLineEnd : FieldError::kInvalid;
    }
  }
  out.push_back(HeaderField{std::move(name), std::string(value)});
  return FieldError::kNone;
}

bool containsToken(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    if (equalsIgnoreCase(trim(list.substr(0, comma)), token)) {
      return true;
    }
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
  }
  return false;
}

} // namespace

Http1ResponseParser::Step Http1ResponseParser::fail(std::string_view message) {
  state_ = State::kError;
  error_ = message;
  keep_alive_ = false;
  return Step{Event::kError, 0, {}};
}

Http1ResponseParser::Step Http1ResponseParser::parse(std::string_view input) {
  switch (state_) {
  case State::kHead:
    return parseHead(input);
  case State::kBody: {
    if (framing_ == Framing::kClose) {
      return input.empty() ? Step{} : Step{Event::kData, input.size(), input};
    }
    size_t size = static_cast<size_t>(std::min<uint64_t>(remaining_, input.size()));
    remaining_ -= size;
    if (remaining_ == 0) {
      state_ = State::kDone;
    }
    if (size == 0) {
      return remaining_ == 0 ? Step{Event::kDone, 0, {}} : Step{};
    }
    return Step{Event::kData, size, input.substr(0, size)};
  }
  case State::kChunkSize:
    return parseChunkSize(input);
  case State::kChunkData: {
    size_t size = static_cast<size_t>(std::min<uint64_t>(remaining_, input.size()));
    remaining_ -= size;
    if (remaining_ == 0) {
      state_ = State::kChunkEnd;
    }
    return size == 0 ? Step{} : Step{Event::kData, size, input.substr(0, size)};
  }
  case State::kChunkEnd:
    if (input.size() < 2) {
      return input.empty() || input[0] == '\r' ? Step{} : fail("invalid chunk end");
    }
    if (input.substr(0, 2) != "\r\n") {
      return fail("invalid chunk end");
    }
    state_ = State::kChunkSize;
    return Step{Event::kNeedMore, 2, {}};
  case State::kTrailers:
    return parseTrailers(input);
  case State::kDone:
    return Step{Event::kDone, 0, {}};
  case State::kError:
    return Step{Event::kError, 0, {}};
  }
  return fail("invalid parser state");
}

Http1ResponseParser::Step Http1ResponseParser::parseHead(std::string_view input) {
  size_t end = input.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    return input.size() >= kMaxHeadBytes ? fail("response head too large") : Step{};
  }
  if (end + 4 > kMaxHeadBytes) {
    return fail("response head too large");
  }
  std::string_view head = input.substr(0, end + 2);
  // Status line: HTTP/1.x SP 3DIGIT SP reason.
  size_t line_end = head.find("\r\n");
  std::string_view status_line = head.substr(0, line_end);
  if (status_line.size() < 12 || !status_line.starts_with("HTTP/1.") || status_line[8] != ' ' ||
      status_line.find('\n') != std::string_view::npos) {
    return fail("invalid status line");
  }
  char minor = status_line[7];
  if (minor != '0' && minor != '1') {
    return fail("unsupported HTTP version");
  }
  unsigned status = 0;
  auto [status_end, status_ec] =
      std::from_chars(status_line.data() + 9, status_line.data() + 12, status);
  if (status_ec != std::errc() || status_end != status_line.data() + 12 || !isValidStatus(status) ||
      (status_line.size() > 12 && status_line[12] != ' ')) {
    return fail("invalid status code");
  }

  HeaderList fields;
  fields.reserve(kExpectedFields);
  std::string_view rest = head.substr(line_end + 2);
  while (!rest.empty()) {
    size_t next = rest.find("\r\n");
    FieldError error = parseFieldLine(rest.substr(0, next), fields);
    if (error == FieldError::kLineEnd) {
      return fail("bare CR or LF in the response head");
    }
    if (error == FieldError::kInvalid) {
      return fail("invalid header field");
    }
    rest.remove_prefix(next + 2);
  }

  status_ = status;
  headers_ = std::move(fields);
  size_t consumed = end + 4;
  if (status < 200) {
    // An interim response: the final one follows with its own head.
    headers_.clear();
    return Step{Event::kHead, consumed, {}};
  }

  // Persistence (RFC 9112 section 9.3) and framing (section 6.3).
  keep_alive_ = minor == '1';
  size_t lengths = 0;
  std::string_view length_value;
  std::string_view transfer_encoding;
  size_t encodings = 0;
  for (const HeaderField& field : headers_) {
    if (field.is("connection")) {
      if (containsToken(field.value, "close")) {
        keep_alive_ = false;
      } else if (containsToken(field.value, "keep-alive") && minor == '0') {
        keep_alive_ = true;
      }
    } else if (field.is("content-length")) {
      if (lengths > 0 && field.value != length_value) {
        return fail("differing content-length values");
      }
      lengths++;
      length_value = field.value;
    } else if (field.is("transfer-encoding")) {
      encodings++;
      transfer_encoding = field.value;
    }
  }

  bool no_body = head_request_ || status == 204 || status == 304;
  if (no_body) {
    framing_ = Framing::kNone;
    state_ = State::kDone;
    return Step{Event::kHead, consumed, {}};
  }
  if (encodings > 0) {
    if (lengths > 0) {
      return fail("content-length with transfer-encoding");
    }
    if (encodings > 1 || !equalsIgnoreCase(trim(transfer_encoding), "chunked")) {
      return fail("unsupported transfer-encoding");
    }
    framing_ = Framing::kChunked;
    state_ = State::kChunkSize;
    return Step{Event::kHead, consumed, {}};
  }
  if (lengths > 0) {
    uint64_t length = 0;
    auto [length_end, length_ec] =
        std::from_chars(length_value.data(), length_value.data() + length_value.size(), length);
    if (length_ec != std::errc() || length_end != length_value.data() + length_value.size() ||
        length_value.empty()) {
      return fail("invalid content-length");
    }
    remaining_ = length;
    framing_ = length == 0 ? Framing::kNone : Framing::kLength;
    state_ = length == 0 ? State::kDone : State::kBody;
    return Step{Event::kHead, consumed, {}};
  }
  framing_ = Framing::kClose;
  keep_alive_ = false;
  state_ = State::kBody;
  return Step{Event::kHead, consumed, {}};
}

Http1ResponseParser::Step Http1ResponseParser::parseChunkSize(std::string_view input) {
  size_t end = input.find('\n');
  if (end == std::string_view::npos) {
    return input.size() > kMaxChunkLineBytes ? fail("chunk-size line too long") : Step{};
  }
  if (end == 0 || input[end - 1] != '\r') {
    return fail("bare LF in chunk framing");
  }
  if (end > kMaxChunkLineBytes) {
    return fail("chunk-size line too long");
  }
  std::string_view line = input.substr(0, end - 1);
  std::string_view digits = line.substr(0, line.find(';'));
  while (!digits.empty() && (digits.back() == ' ' || digits.back() == '\t')) {
    digits.remove_suffix(1);
  }
  uint64_t size = 0;
  auto [size_end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), size, 16);
  if (ec != std::errc() || size_end != digits.data() + digits.size() || digits.empty() ||
      digits.size() > 15) {
    return fail("invalid chunk size");
  }
  if (size == 0) {
    state_ = State::kTrailers;
  } else {
    remaining_ = size;
    state_ = State::kChunkData;
  }
  return Step{Event::kNeedMore, end + 1, {}};
}

Http1ResponseParser::Step Http1ResponseParser::parseTrailers(std::string_view input) {
  size_t end = input.find('\n');
  if (end == std::string_view::npos) {
    return trailer_bytes_ + input.size() > kMaxHeadBytes ? fail("trailer section too large")
                                                         : Step{};
  }
  if (end == 0 || input[end - 1] != '\r') {
    return fail("bare LF in the trailer section");
  }
  trailer_bytes_ += end + 1;
  if (trailer_bytes_ > kMaxHeadBytes) {
    return fail("trailer section too large");
  }
  std::string_view line = input.substr(0, end - 1);
  if (line.empty()) {
    state_ = State::kDone;
    return Step{Event::kDone, end + 1, {}};
  }
  if (parseFieldLine(line, trailers_) != FieldError::kNone) {
    return fail("invalid trailer field");
  }
  return Step{Event::kNeedMore, end + 1, {}};
}

Http1ResponseParser::Event Http1ResponseParser::onEof() {
  if (state_ == State::kDone) {
    return Event::kDone;
  }
  if (state_ == State::kBody && framing_ == Framing::kClose) {
    state_ = State::kDone;
    return Event::kDone;
  }
  fail(state_ == State::kHead ? "connection closed before the response head"
                              : "connection closed inside the response body");
  return Event::kError;
}

} // namespace deferd
