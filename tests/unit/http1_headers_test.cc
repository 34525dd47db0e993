#include "proxy/http1_headers.h"

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace deferd {
namespace {

namespace http = boost::beast::http;

http::fields makeFields(std::vector<std::pair<std::string, std::string>> entries) {
  http::fields fields;
  for (const auto& [name, value] : entries) {
    fields.insert(name, value);
  }
  return fields;
}

std::vector<std::string> names(const http::fields& fields) {
  std::vector<std::string> result;
  for (const auto& field : fields) {
    result.emplace_back(field.name_string());
  }
  return result;
}

TEST(HopByHopTest, RemovesFixedHopByHopFields) {
  http::fields fields = makeFields({{"Host", "a"},
                                    {"Connection", "keep-alive"},
                                    {"Keep-Alive", "timeout=5"},
                                    {"Proxy-Connection", "keep-alive"},
                                    {"TE", "trailers"},
                                    {"Trailer", "x-checksum"},
                                    {"Upgrade", "websocket"},
                                    {"Accept", "*/*"}});

  removeHopByHop(fields);

  EXPECT_EQ(names(fields), (std::vector<std::string>{"Host", "Accept"}));
}

TEST(HopByHopTest, RemovesFieldsNamedInConnection) {
  http::fields fields = makeFields({{"Connection", "x-secret , X-Other"},
                                    {"Connection", "x-third"},
                                    {"x-secret", "1"},
                                    {"X-Other", "2"},
                                    {"x-third", "3"},
                                    {"x-kept", "4"}});

  removeHopByHop(fields);

  EXPECT_EQ(names(fields), (std::vector<std::string>{"x-kept"}));
}

TEST(HopByHopTest, KeepsFramingFieldsNamedInConnection) {
  http::fields fields = makeFields({{"Connection", "content-length, transfer-encoding, host"},
                                    {"Host", "a"},
                                    {"Content-Length", "5"}});

  removeHopByHop(fields);

  EXPECT_EQ(names(fields), (std::vector<std::string>{"Host", "Content-Length"}));
}

TEST(HopByHopTest, KeepsOwnFieldsNamedInConnection) {
  http::fields fields = makeFields(
      {{"Connection", "Deferd-Priority, x-gone"}, {"deferd-priority", "u=0"}, {"x-gone", "1"}});

  removeHopByHop(fields);

  EXPECT_EQ(names(fields), (std::vector<std::string>{"deferd-priority"}));
}

TEST(HopByHopTest, LeavesOrdinaryMessageAlone) {
  http::fields fields = makeFields({{"Host", "a"}, {"Content-Length", "0"}});

  removeHopByHop(fields);

  EXPECT_EQ(names(fields), (std::vector<std::string>{"Host", "Content-Length"}));
}

struct FramingCase {
  std::string name;
  std::vector<std::pair<std::string, std::string>> fields;
  unsigned version;
  std::string expected; // empty: valid
};

TEST(FramingTest, RejectsAmbiguousFraming) {
  const std::vector<FramingCase> cases = {
      {"plain GET", {{"Host", "a"}}, 11, ""},
      {"content-length", {{"Host", "a"}, {"Content-Length", "12"}}, 11, ""},
      {"chunked", {{"Host", "a"}, {"Transfer-Encoding", "chunked"}}, 11, ""},
      {"chunked with spaces", {{"Host", "a"}, {"Transfer-Encoding", " Chunked "}}, 11, ""},
      {"duplicate content-length",
       {{"Host", "a"}, {"Content-Length", "5"}, {"Content-Length", "5"}},
       11,
       "duplicate Content-Length"},
      {"content-length list",
       {{"Host", "a"}, {"Content-Length", "5, 5"}},
       11,
       "invalid Content-Length"},
      {"negative content-length",
       {{"Host", "a"}, {"Content-Length", "-1"}},
       11,
       "invalid Content-Length"},
      {"plus content-length",
       {{"Host", "a"}, {"Content-Length", "+1"}},
       11,
       "invalid Content-Length"},
      {"empty content-length",
       {{"Host", "a"}, {"Content-Length", ""}},
       11,
       "invalid Content-Length"},
      {"both",
       {{"Host", "a"}, {"Content-Length", "5"}, {"Transfer-Encoding", "chunked"}},
       11,
       "both Content-Length and Transfer-Encoding"},
      {"gzip",
       {{"Host", "a"}, {"Transfer-Encoding", "gzip"}},
       11,
       "Transfer-Encoding other than chunked"},
      {"gzip then chunked",
       {{"Host", "a"}, {"Transfer-Encoding", "gzip, chunked"}},
       11,
       "Transfer-Encoding other than chunked"},
      {"two transfer-encodings",
       {{"Host", "a"}, {"Transfer-Encoding", "chunked"}, {"Transfer-Encoding", "chunked"}},
       11,
       "Transfer-Encoding other than chunked"},
      {"chunked in HTTP/1.0",
       {{"Host", "a"}, {"Transfer-Encoding", "chunked"}},
       10,
       "Transfer-Encoding in an HTTP/1.0 request"},
      {"missing host", {}, 11, "missing Host"},
      {"missing host in HTTP/1.0", {}, 10, ""},
      {"duplicate host", {{"Host", "a"}, {"Host", "b"}}, 11, "duplicate Host"},
  };

  for (const FramingCase& c : cases) {
    http::fields fields = makeFields(c.fields);
    RequestFields scanned(fields);
    EXPECT_EQ(framingError(scanned, c.version), c.expected) << c.name;
  }
}

TEST(RequestFieldsTest, GathersProxyFields) {
  http::fields fields = makeFields({{"Host", "a"},
                                    {"Expect", "100-continue"},
                                    {"X-Forwarded-For", "10.0.0.1"},
                                    {"X-Request-Id", "abc"},
                                    {"Accept", "*/*"}});

  RequestFields scanned(fields);

  EXPECT_EQ(scanned.count, 5u);
  EXPECT_EQ(scanned.hosts, 1u);
  EXPECT_TRUE(scanned.has_expect);
  EXPECT_EQ(scanned.expect, "100-continue");
  EXPECT_TRUE(scanned.has_forwarded_for);
  EXPECT_EQ(scanned.forwarded_for, "10.0.0.1");
  EXPECT_TRUE(scanned.has_request_id);
  EXPECT_EQ(scanned.request_id, "abc");
}

TEST(RequestFieldsTest, AbsentFieldsAreFlagged) {
  http::fields fields = makeFields({{"Host", "a"}});

  RequestFields scanned(fields);

  EXPECT_FALSE(scanned.has_expect);
  EXPECT_FALSE(scanned.has_forwarded_for);
  EXPECT_FALSE(scanned.has_request_id);
}

TEST(BeastHeaderMapTest, SetReplacesEveryValue) {
  http::fields fields = makeFields({{"X-Role", "a"}, {"x-role", "b"}});
  BeastHeaderMap headers(fields);

  headers.set("x-role", "c");

  EXPECT_EQ(fields.count("x-role"), 1u);
  EXPECT_EQ(headers.get("X-ROLE"), "c");
}

TEST(BeastHeaderMapTest, AppendRemoveAndVisit) {
  http::fields fields;
  BeastHeaderMap headers(fields);

  headers.append("x-a", "1");
  headers.append("x-a", "2");
  headers.append("x-b", "3");
  headers.remove("x-b");
  std::vector<std::string> seen;
  headers.forEach([&](std::string_view name, std::string_view value) {
    seen.push_back(std::string(name) + "=" + std::string(value));
  });

  EXPECT_EQ(seen, (std::vector<std::string>{"x-a=1", "x-a=2"}));
  EXPECT_FALSE(headers.get("x-b").has_value());
}

TEST(TrimTest, TrimsSpacesAndTabs) {
  EXPECT_EQ(trimWhitespace(" \tchunked\t "), "chunked");
  EXPECT_EQ(trimWhitespace(""), "");
  EXPECT_EQ(trimWhitespace("   "), "");
  EXPECT_EQ(trimWhitespace("a b"), "a b");
}

} // namespace
} // namespace deferd

namespace deferd {
namespace {

TEST(MessageHeadTest, RequestHead) {
  http::request_header<> head;
  head.method(http::verb::post);
  head.target("/items?id=3");
  head.version(11);
  head.insert("Host", "inventory");
  head.insert("x-request-id", "abc");
  std::string out;

  appendRequestHead(out, head);

  EXPECT_EQ(out, "POST /items?id=3 HTTP/1.1\r\nHost: inventory\r\nx-request-id: abc\r\n\r\n");
}

TEST(MessageHeadTest, ResponseHeadKeepsReasonPhrase) {
  http::response_header<> head;
  head.result(404);
  head.reason("Nope");
  head.version(10);
  head.insert("Content-Length", "0");
  std::string out;

  appendResponseHead(out, head);

  EXPECT_EQ(out, "HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n");
}

TEST(MessageHeadTest, ResponseHeadDefaultReason) {
  http::response_header<> head;
  head.result(503);
  std::string out;

  appendResponseHead(out, head);

  EXPECT_EQ(out, "HTTP/1.1 503 Service Unavailable\r\n\r\n");
}

TEST(MessageHeadTest, ResponseHeadEmptyReasonForUnnamedStatus) {
  const std::vector<std::pair<unsigned, std::string>> cases = {
      {299, "HTTP/1.1 299 \r\n\r\n"},
      {418, "HTTP/1.1 418 \r\n\r\n"},
      {520, "HTTP/1.1 520 \r\n\r\n"},
      {200, "HTTP/1.1 200 OK\r\n\r\n"},
  };

  for (const auto& [status, expected] : cases) {
    http::response_header<> head;
    head.result(status);
    std::string out;

    appendResponseHead(out, head);

    EXPECT_EQ(out, expected) << status;
  }
}

TEST(MessageHeadTest, ResponseHeadKeepsUpstreamPhraseForUnnamedStatus) {
  http::response_header<> head;
  head.result(299);
  head.reason("Custom");
  std::string out;

  appendResponseHead(out, head);

  EXPECT_EQ(out, "HTTP/1.1 299 Custom\r\n\r\n");
}

TEST(MessageHeadTest, ResponseHeadForwardsEmptyUpstreamPhrase) {
  // An HTTP/1.1 upstream sent a code that Beast has no name for, with an empty phrase.
  const std::string message = "HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n";
  http::response_parser<http::string_body> parser;
  boost::system::error_code ec;
  parser.put(boost::asio::buffer(message.data(), message.size()), ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_TRUE(parser.is_header_done());
  std::string out;

  appendResponseHead(out, parser.get());

  EXPECT_EQ(out, message);
}

TEST(MessageHeadTest, ReasonPhraseEmptyOnlyForUnnamedCodes) {
  EXPECT_EQ(reasonPhrase(200), "OK");
  EXPECT_EQ(reasonPhrase(404), "Not Found");
  EXPECT_EQ(reasonPhrase(503), "Service Unavailable");
  EXPECT_EQ(reasonPhrase(299), "");
  EXPECT_EQ(reasonPhrase(418), "");
  EXPECT_EQ(reasonPhrase(0), "");
  EXPECT_EQ(reasonPhrase(999), "");
}

TEST(ChunkLineTest, FormatsHexSizes) {
  char line[kChunkLineMax];
  const std::vector<std::pair<size_t, std::string>> cases = {
      {1, "1\r\n"},
      {15, "f\r\n"},
      {16, "10\r\n"},
      {65536, "10000\r\n"},
      {SIZE_MAX, "ffffffffffffffff\r\n"},
  };

  for (const auto& [size, expected] : cases) {
    size_t length = formatChunkLine(line, size);
    EXPECT_EQ(std::string(line, length), expected) << size;
  }
}

} // namespace
} // namespace deferd

namespace deferd {
namespace {

TEST(HostTest, ValidAndInvalidHosts) {
  const std::vector<std::pair<std::string, bool>> cases = {
      {"inventory", true},
      {"inventory:8080", true},
      {"inventory:", true}, // an empty port is allowed by RFC 3986
      {"", true},
      {"a-b.c_d~e", true},
      {"%41bc", true},
      {"127.0.0.1:80", true},
      {"[::1]", true},
      {"[::1]:443", true},
      {"[2001:db8::1]:8080", true},
      {"a b", false},
      {"a/b", false},
      {"inventory:80@evil", false},
      {"a@evil", false},
      {"inventory:abc", false},
      {"inventory:99999999", false},
      {"inventory:65536", false},
      {"[::1", false},
      {"[]", false},
      {"[::1]x", false},
      {"[zz::1]", false},
      {"%4", false},
      {"%zz", false},
  };

  for (const auto& [value, valid] : cases) {
    EXPECT_EQ(validHost(value), valid) << "'" << value << "'";
  }
}

TEST(FramingTest, InvalidHostRejected) {
  http::fields fields = makeFields({{"Host", "inventory:80@evil"}});

  EXPECT_EQ(framingError(RequestFields(fields), 11), "invalid Host");
}

TEST(RequestFieldsTest, CountsForwardedForLines) {
  http::fields fields =
      makeFields({{"Host", "a"}, {"X-Forwarded-For", "6.6.6.6"}, {"x-forwarded-for", "7.7.7.7"}});

  RequestFields scanned(fields);

  EXPECT_EQ(scanned.forwarded_for_lines, 2u);
}

// Parses `message` (a chunked request) with Beast's parser, recording the head's fields once
// the header is done, and returns the trailers the snapshot finds at the end.
HeaderList trailersOf(const std::string& message) {
  http::request_parser<http::string_body> parser;
  boost::system::error_code ec;
  size_t used = 0;
  while (!parser.is_header_done() && used < message.size()) {
    used += parser.put(boost::asio::buffer(message.data() + used, message.size() - used), ec);
    EXPECT_FALSE(ec) << ec.message();
    if (ec) {
      return {};
    }
  }
  HeadFieldSnapshot snapshot;
  snapshot.record(parser.get());
  while (!parser.is_done() && used < message.size()) {
    used += parser.put(boost::asio::buffer(message.data() + used, message.size() - used), ec);
    EXPECT_FALSE(ec) << ec.message();
    if (ec) {
      return {};
    }
  }
  EXPECT_TRUE(parser.is_done());
  return snapshot.trailers(parser.get());
}

TEST(HeadFieldSnapshotTest, FindsTrailersAfterChunkedBody) {
  HeaderList trailers = trailersOf("POST / HTTP/1.1\r\nHost: a\r\nX-Digest: 1\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n"
                                   "3\r\nabc\r\n0\r\nX-Digest: 2\r\nGrpc-Status: 0\r\n\r\n");
  ASSERT_EQ(trailers.size(), 2u);
  // A trailer named like a head field is still a trailer, though Beast files it beside the
  // head's field of that name.
  EXPECT_EQ(trailers[0].name, "x-digest");
  EXPECT_EQ(trailers[0].value, "2");
  EXPECT_EQ(trailers[1].name, "grpc-status");
  EXPECT_EQ(trailers[1].value, "0");
}

TEST(HeadFieldSnapshotTest, DropsFieldsNotAllowedInTrailers) {
  HeaderList trailers = trailersOf("POST / HTTP/1.1\r\nHost: a\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n"
                                   "3\r\nabc\r\n0\r\nHost: b\r\nKeep-Alive: 5\r\n"
                                   "Upgrade: x\r\nX-Kept: yes\r\n\r\n");
  ASSERT_EQ(trailers.size(), 1u);
  EXPECT_EQ(trailers[0].name, "x-kept");
}

TEST(HeadFieldSnapshotTest, NoTrailersGivesEmptyList) {
  HeaderList trailers = trailersOf("POST / HTTP/1.1\r\nHost: a\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  EXPECT_TRUE(trailers.empty());
}

} // namespace
} // namespace deferd
