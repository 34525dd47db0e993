#pragma once

// Translation between HTTP/2 header lists and HTTP/1.1 message heads, free of any HTTP library
// so each rule is unit-tested directly.
//
// HTTP/2 to HTTP/1.1 (RFC 9113 section 8.3): the request line comes from :method and :path,
// and Host from :authority. Split Cookie fields are joined with "; " (section 8.2.3), TE is
// dropped, and the body is framed by the client's Content-Length or else chunked.
// HTTP/1.1 to HTTP/2 (section 8.2.2): names are lower-cased and connection-specific fields
// (Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade, TE and every field that
// Connection names) are never forwarded.

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"

namespace deferd {

struct HeaderField {
  std::string name; // lower-case
  std::string value;

  // Compares the name as a string_view: lengths first, then the bytes. libstdc++ 12 compares
  // a std::string with a C string through strlen and compare() instead.
  bool is(std::string_view lower_name) const { return std::string_view(name) == lower_name; }
};

using HeaderList = std::vector<HeaderField>;

// Whether `a` and `b` are equal ignoring ASCII case.
bool equalsIgnoreCase(std::string_view a, std::string_view b);

// Whether `name` (lower-case) is a connection-specific field that HTTP/2 forbids.
bool isConnectionSpecific(std::string_view name);

// Lets filters see and change a HeaderList. Names given to set() and append() are lower-cased.
class HeaderListMap : public HeaderMap {
public:
  explicit HeaderListMap(HeaderList& fields) : fields_(fields) {}

  std::optional<std::string_view> get(std::string_view name) const override;
  void set(std::string_view name, std::string_view value) override;
  void append(std::string_view name, std::string_view value) override;
  void remove(std::string_view name) override;
  void forEach(const std::function<void(std::string_view, std::string_view)>& visit) const override;

private:
  HeaderList& fields_;
};

// An HTTP/2 request head: the pseudo-header fields and the regular fields in arrival order.
struct Http2RequestHead {
  std::string method;
  std::string scheme;
  std::string authority;
  std::string path;
  HeaderList fields;
};

// The framing of the HTTP/1.1 request body.
enum class BodyFraming {
  kNone,          // no body: the HTTP/2 request ended with its HEADERS frame
  kContentLength, // the client's content-length field is kept
  kChunked,       // no content-length: chunked, which also carries trailers
};

// Appends the HTTP/1.1 request line and header block for `head` to `out`, ending with the
// empty line. The caller has checked the head with http2RequestError().
void appendHttp1RequestHead(std::string& out, const Http2RequestHead& head, BodyFraming framing);

// Checks what HTTP/2 leaves to the application: a method and path are present, the path is in
// origin form (or "*" for OPTIONS), CONNECT is not supported, and content-length, if present,
// is one decimal number. Returns an empty string when the head is valid.
std::string_view http2RequestError(const Http2RequestHead& head);

// Whether `status` is one of the response status codes that RFC 9110 section 15 defines, 100
// to 599. A proxy cannot classify any other, so an upstream response with one is invalid.
constexpr bool isValidStatus(unsigned status) { return status >= 100 && status <= 599; }

// The largest header block deferd sends on an HTTP/2 connection, measured as nghttp2 measures
// it: names and values plus 32 bytes per field. nghttp2's default, 64 KiB, is below what
// deferd accepts, such as a 64 KiB HTTP/1.1 response head of many short fields.
inline constexpr size_t kMaxSendHeaderBlock = 1024 * 1024;

// The value of the content-length field, if there is one. Call after http2RequestError().
std::optional<uint64_t> contentLength(const HeaderList& fields);

// Removes connection-specific fields, and every field that a Connection field names, from an
// HTTP/1.1 response head or trailer section so the rest can go into HTTP/2.
void removeConnectionSpecific(HeaderList& fields);

// Appends a chunked trailer section built from `trailers` (names lower-case) to `out`,
// starting with the last-chunk line "0\r\n" and ending with the empty line.
void appendLastChunk(std::string& out, const HeaderList& trailers);

} // namespace deferd
