#include "proxy/http_translation.h"

#include <gtest/gtest.h>

#include "proxy/http1_response_parser.h"

namespace deferd {
namespace {

Http2RequestHead requestHead(HeaderList fields) {
  Http2RequestHead head;
  head.method = "POST";
  head.scheme = "http";
  head.authority = "inventory:8080";
  head.path = "/items?id=1";
  head.fields = std::move(fields);
  return head;
}

TEST(Http2ToHttp1Test, WritesRequestLineAndHostFromAuthority) {
  std::string out;
  appendHttp1RequestHead(out, requestHead({{"host", "ignored"}, {"accept", "*/*"}}),
                         BodyFraming::kNone);
  EXPECT_EQ(out, "POST /items?id=1 HTTP/1.1\r\nhost: inventory:8080\r\naccept: */*\r\n\r\n");
}

TEST(Http2ToHttp1Test, DropsConnectionSpecificFieldsAndTe) {
  std::string out;
  appendHttp1RequestHead(
      out,
      requestHead({{"te", "trailers"}, {"connection", "close"}, {"upgrade", "h2c"}, {"x-ok", "1"}}),
      BodyFraming::kNone);
  EXPECT_EQ(out.find("te:"), std::string::npos);
  EXPECT_EQ(out.find("connection:"), std::string::npos);
  EXPECT_EQ(out.find("upgrade:"), std::string::npos);
  EXPECT_NE(out.find("x-ok: 1\r\n"), std::string::npos);
}

TEST(Http2ToHttp1Test, JoinsSplitCookies) {
  std::string out;
  appendHttp1RequestHead(out, requestHead({{"cookie", "a=1"}, {"cookie", "b=2"}}),
                         BodyFraming::kNone);
  EXPECT_NE(out.find("cookie: a=1; b=2\r\n"), std::string::npos);
}

TEST(Http2ToHttp1Test, FramesBodyByContentLengthOrChunked) {
  std::string with_length;
  appendHttp1RequestHead(with_length, requestHead({{"content-length", "5"}}),
                         BodyFraming::kContentLength);
  EXPECT_NE(with_length.find("content-length: 5\r\n"), std::string::npos);
  EXPECT_EQ(with_length.find("transfer-encoding"), std::string::npos);

  std::string chunked;
  appendHttp1RequestHead(chunked, requestHead({}), BodyFraming::kChunked);
  EXPECT_NE(chunked.find("transfer-encoding: chunked\r\n"), std::string::npos);
}

TEST(Http2RequestErrorTest, AcceptsOriginFormAndOptionsStar) {
  EXPECT_EQ(http2RequestError(requestHead({})), "");
  Http2RequestHead options = requestHead({});
  options.method = "OPTIONS";
  options.path = "*";
  EXPECT_EQ(http2RequestError(options), "");
}

TEST(Http2RequestErrorTest, RejectsInvalidHeads) {
  Http2RequestHead connect = requestHead({});
  connect.method = "CONNECT";
  EXPECT_NE(http2RequestError(connect), "");

  Http2RequestHead absolute = requestHead({});
  absolute.path = "http://other/";
  EXPECT_NE(http2RequestError(absolute), "");

  Http2RequestHead space = requestHead({});
  space.path = "/a b";
  EXPECT_NE(http2RequestError(space), "");

  EXPECT_NE(http2RequestError(requestHead({{"content-length", "12x"}})), "");
  EXPECT_NE(http2RequestError(requestHead({{"content-length", "1"}, {"content-length", "1"}})), "");
}

TEST(RemoveConnectionSpecificTest, DropsNamedAndHopByHopFields) {
  HeaderList fields = {{"connection", "x-private, Close"},
                       {"x-private", "1"},
                       {"keep-alive", "timeout=5"},
                       {"transfer-encoding", "chunked"},
                       {"content-type", "text/plain"}};
  removeConnectionSpecific(fields);
  ASSERT_EQ(fields.size(), 1u);
  EXPECT_EQ(fields[0].name, "content-type");
}

TEST(HeaderListMapTest, SetAppendRemoveIgnoreCase) {
  HeaderList fields;
  HeaderListMap map(fields);
  map.append("X-A", "1");
  map.append("x-a", "2");
  EXPECT_EQ(map.get("x-A"), "1");
  map.set("X-A", "3");
  ASSERT_EQ(fields.size(), 1u);
  EXPECT_EQ(fields[0].name, "x-a");
  EXPECT_EQ(fields[0].value, "3");
  map.remove("X-a");
  EXPECT_TRUE(fields.empty());
}

// Feeds `input` to the parser as the proxy does, erasing what the parser consumed, and
// collects the body.
struct Parsed {
  Http1ResponseParser::Event last = Http1ResponseParser::Event::kNeedMore;
  std::string body;
  size_t heads = 0;
};

Parsed feedAll(Http1ResponseParser& parser, std::string& input) {
  using Event = Http1ResponseParser::Event;
  Parsed result;
  while (true) {
    Http1ResponseParser::Step step = parser.parse(input);
    result.last = step.event;
    if (step.event == Event::kData) {
      result.body.append(step.data);
    }
    if (step.event == Event::kHead) {
      result.heads++;
    }
    input.erase(0, step.consumed);
    if (step.event == Event::kDone || step.event == Event::kError ||
        (step.event == Event::kNeedMore && step.consumed == 0)) {
      return result;
    }
  }
}

Parsed feed(Http1ResponseParser& parser, std::string input) { return feedAll(parser, input); }

TEST(Http1ResponseParserTest, ContentLengthBody) {
  Http1ResponseParser parser(false);
  Parsed parsed = feed(parser, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
  EXPECT_EQ(parsed.last, Http1ResponseParser::Event::kDone);
  EXPECT_EQ(parsed.body, "hello");
  EXPECT_EQ(parser.status(), 200u);
  EXPECT_TRUE(parser.keepAlive());
  ASSERT_EQ(parser.headers().size(), 2u);
  EXPECT_EQ(parser.headers()[1].name, "x-a");
}

TEST(Http1ResponseParserTest, StatusOutsideRangeRejected) {
  for (std::string status : {"099", "600", "999"}) {
    Http1ResponseParser parser(false);
    Parsed parsed = feed(parser, "HTTP/1.1 " + status + " X\r\nContent-Length: 0\r\n\r\n");
    EXPECT_EQ(parsed.last, Http1ResponseParser::Event::kError) << status;
  }
  Http1ResponseParser highest(false);
  EXPECT_EQ(feed(highest, "HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n").last,
            Http1ResponseParser::Event::kDone);
}

TEST(Http1ResponseParserTest, ChunkedBodyWithTrailers) {
  Http1ResponseParser parser(false);
  Parsed parsed = feed(parser, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nGrpc-Status: 0\r\n\r\n");
  EXPECT_EQ(parsed.last, Http1ResponseParser::Event::kDone);
  EXPECT_EQ(parsed.body, "abcde");
  ASSERT_EQ(parser.trailers().size(), 1u);
  EXPECT_EQ(parser.trailers()[0].name, "grpc-status");
  EXPECT_EQ(parser.trailers()[0].value, "0");
}

TEST(Http1ResponseParserTest, BodyEndedByClose) {
  Http1ResponseParser parser(false);
  Parsed parsed = feed(parser, "HTTP/1.1 200 OK\r\n\r\npartial");
  EXPECT_EQ(parsed.body, "partial");
  EXPECT_FALSE(parser.framed());
  EXPECT_FALSE(parser.keepAlive());
  EXPECT_EQ(parser.onEof(), Http1ResponseParser::Event::kDone);
}

TEST(Http1ResponseParserTest, EofInsideLengthBodyIsError) {
  Http1ResponseParser parser(false);
  feed(parser, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
  EXPECT_EQ(parser.onEof(), Http1ResponseParser::Event::kError);
}

TEST(Http1ResponseParserTest, InterimResponseThenFinal) {
  Http1ResponseParser parser(false);
  Parsed parsed =
      feed(parser, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
  EXPECT_EQ(parsed.heads, 2u);
  EXPECT_EQ(parsed.last, Http1ResponseParser::Event::kDone);
  EXPECT_EQ(parser.status(), 204u);
}

TEST(Http1ResponseParserTest, HeadResponseHasNoBody) {
  Http1ResponseParser parser(true);
  Parsed parsed = feed(parser, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
  EXPECT_EQ(parsed.last, Http1ResponseParser::Event::kDone);
  EXPECT_FALSE(parser.hasBody());
}

TEST(Http1ResponseParserTest, ConnectionCloseAndHttp10) {
  Http1ResponseParser close(false);
  feed(close, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
  EXPECT_FALSE(close.keepAlive());

  Http1ResponseParser old(false);
  feed(old, "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
  EXPECT_FALSE(old.keepAlive());
}

TEST(Http1ResponseParserTest, RejectsAmbiguousFraming) {
  const char* cases[] = {
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
      "HTTP/1.1 200 OK\r\n folded\r\n\r\n",
      "HTTP/2.0 200 OK\r\n\r\n",
      "HELLO WORLD\r\n\r\n",
  };
  for (const char* input : cases) {
    Http1ResponseParser parser(false);
    EXPECT_EQ(feed(parser, input).last, Http1ResponseParser::Event::kError) << input;
  }
}

TEST(Http1ResponseParserTest, RejectsControlBytesAndBareLineEnds) {
  using namespace std::string_view_literals;
  const std::pair<std::string_view, std::string_view> cases[] = {
      {"HTTP/1.1 200 OK\r\nX-A: 1\r2\r\n\r\n"sv, "bare CR or LF in the response head"},
      {"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n\r\n"sv, "bare CR or LF in the response head"},
      {"HTTP/1.1 200 OK\r\nX\nA: 1\r\n\r\n"sv, "bare CR or LF in the response head"},
      {"HTTP/1.1 200 OK\r\nno colon\nhere\r\n\r\n"sv, "bare CR or LF in the response head"},
      {"HTTP/1.1 200 OK\r\nX-A: 1\x01\r\n\r\n"sv, "invalid header field"},
      {"HTTP/1.1 200 OK\r\nX-A: 1\x7f\r\n\r\n"sv, "invalid header field"},
      {"HTTP/1.1 200 OK\r\nX-A: \0 \r\n\r\n"sv, "invalid header field"},
  };
  for (const auto& [input, message] : cases) {
    Http1ResponseParser parser(false);
    EXPECT_EQ(feed(parser, std::string(input)).last, Http1ResponseParser::Event::kError) << input;
    EXPECT_EQ(parser.error(), message) << input;
  }
}

TEST(Http1ResponseParserTest, AcceptsObsTextAndTabsInValues) {
  Http1ResponseParser parser(false);
  Parsed parsed =
      feed(parser, "HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\tau lait \r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(parsed.last, Http1ResponseParser::Event::kDone);
  ASSERT_EQ(parser.headers().size(), 2u);
  EXPECT_EQ(parser.headers()[0].value, "caf\xc3\xa9\tau lait");
}

TEST(Http1ResponseParserTest, RejectsOversizedHead) {
  Http1ResponseParser parser(false);
  std::string head =
      "HTTP/1.1 200 OK\r\nX-Big: " + std::string(Http1ResponseParser::kMaxHeadBytes, 'a') +
      "\r\n\r\n";
  EXPECT_EQ(feed(parser, head).last, Http1ResponseParser::Event::kError);
}

TEST(Http1ResponseParserTest, BytesArriveOneAtATime) {
  std::string response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "4\r\nabcd\r\n0\r\nx-t: 1\r\n\r\n";
  Http1ResponseParser parser(false);
  std::string pending;
  std::string body;
  bool done = false;
  for (char c : response) {
    pending.push_back(c);
    Parsed parsed = feedAll(parser, pending);
    body += parsed.body;
    done = done || parsed.last == Http1ResponseParser::Event::kDone;
    ASSERT_NE(parsed.last, Http1ResponseParser::Event::kError) << "at byte " << c;
  }
  EXPECT_TRUE(done);
  EXPECT_EQ(body, "abcd");
}

} // namespace
} // namespace deferd
