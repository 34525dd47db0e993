#pragma once

// HTTP/1.1 header handling of the proxy: hop-by-hop removal, the framing checks of RFC 9112
// that keep deferd and its peers agreeing on where a message ends, and the adapter that lets
// filters see Beast's fields. Kept apart from the session so each rule is unit-tested.

#include <boost/beast/http/field.hpp>
#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "proxy/http_translation.h"

namespace deferd {

// Removes optional white space (spaces and tabs) at both ends.
std::string_view trimWhitespace(std::string_view value);

// Removes hop-by-hop fields and every field that Connection names. Framing fields named in
// Connection are left alone: dropping Content-Length or Host on a client's say-so would change
// how the next hop frames or routes the message. Neither are deferd's own `deferd-` fields: a
// peer that names them could otherwise strip the priority or load signal that the filters
// read and write, so the filters decide about them instead.
void removeHopByHop(boost::beast::http::fields& fields);

// The request fields the proxy acts on, gathered in one pass, because looking each up by name
// would walk Beast's field index once per question.
struct RequestFields {
  size_t count = 0;
  size_t content_lengths = 0;
  size_t transfer_encodings = 0;
  size_t hosts = 0;
  std::string_view content_length;
  std::string_view transfer_encoding;
  // Plain views with flags: GCC 12 warns falsely about optional<string_view> here.
  bool has_expect = false;
  bool has_forwarded_for = false;
  bool has_request_id = false;
  size_t forwarded_for_lines = 0;
  std::string_view host;
  std::string_view expect;
  std::string_view forwarded_for;
  std::string_view request_id;

  explicit RequestFields(const boost::beast::http::fields& fields);
};

// Whether `value` is a valid Host field value or authority: `uri-host [ ":" port ]` of RFC 3986,
// with a reg-name or a bracketed IPv6 address, and a port of at most 65535. Empty is valid
// (a request target without an authority).
bool validHost(std::string_view value);

// Checks the request's framing against RFC 9112, section 6, and its Host field: a request that a
// peer could frame differently from deferd is rejected, never forwarded. Returns an empty string
// when valid.
std::string_view framingError(const RequestFields& fields, unsigned version);

// Appends an HTTP/1.1 request line and header block to `out`, ending with the empty line.
//
// deferd writes message heads itself instead of through Beast's serializer: the serializer
// hands the socket one buffer per field part and walks them with generic iterators, which cost
// about a tenth of deferd's instructions per request on the keep-alive benchmark.
void appendRequestHead(std::string& out, const boost::beast::http::request_header<>& head);

// Returns the reason phrase for `status` from Beast's status table, or an empty string for a
// code that the table does not name. RFC 9112, section 4, allows an empty reason phrase, and
// a client should ignore its content. The table of Boost 1.81 also names 444, 499 and 599,
// which nginx uses but IANA does not register.
std::string_view reasonPhrase(unsigned status);

// Appends an HTTP/1.1 status line and header block to `out`, ending with the empty line. The
// status line always names HTTP/1.1, the version deferd speaks. The reason phrase is the one
// set on `head` (an HTTP/1.1 upstream's own), else reasonPhrase(), so a code without a name
// gets an empty one (`HTTP/1.1 299 \r\n`).
void appendResponseHead(std::string& out, const boost::beast::http::response_header<>& head);

// Writes the chunk-size line of a chunk of `size` bytes ("1f4\r\n") into `out`, which must
// have room for kChunkLineMax bytes, and returns its length.
inline constexpr size_t kChunkLineMax = 18;
size_t formatChunkLine(char* out, size_t size);

// The fields a message had when its head was written. Beast's parser appends the trailer
// section of a chunked body to the message's own field list, so the fields present at the end
// of the body that were not there at the head are the trailers.
class HeadFieldSnapshot {
public:
  void record(const boost::beast::http::fields& fields);

  // Returns the fields added since record(), names lower-cased, without those a trailer
  // section must not carry onward: framing fields, Host and connection-specific fields.
  HeaderList trailers(const boost::beast::http::fields& fields) const;

private:
  std::vector<const void*> fields_; // element addresses, stable while a field is not erased
};

// Adapts Beast's fields to the filters' HeaderMap.
class BeastHeaderMap : public HeaderMap {
public:
  explicit BeastHeaderMap(boost::beast::http::fields& fields) : fields_(fields) {}

  std::optional<std::string_view> get(std::string_view name) const override {
    auto found = fields_.find(name);
    if (found == fields_.end()) {
      return std::nullopt;
    }
    return std::string_view(found->value());
  }
  void set(std::string_view name, std::string_view value) override { fields_.set(name, value); }
  void append(std::string_view name, std::string_view value) override {
    fields_.insert(name, value);
  }
  void remove(std::string_view name) override { fields_.erase(name); }
  void
  forEach(const std::function<void(std::string_view, std::string_view)>& visit) const override {
    for (const auto& field : fields_) {
      visit(field.name_string(), field.value());
    }
  }

private:
  boost::beast::http::fields& fields_;
};

} // namespace deferd
