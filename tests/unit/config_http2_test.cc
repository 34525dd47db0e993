// The `http2` block of a listener: defaults, values, round trip and errors.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/loader.h"

namespace deferd::config {
namespace {

using Lines = std::vector<std::string>;

// A config whose one listener has `block` as its http2 section: `http2:` is on line 7, and the
// block starts on line 8.
std::string withHttp2(const std::string& block) {
  return "node: { service: demo }\n"
         "clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]\n"
         "listeners:\n"
         "  - name: inbound\n"
         "    address: 127.0.0.1:15006\n"
         "    routes: [ { cluster: app } ]\n"
         "    http2:\n" +
         block;
}

Lines errors(const std::string& yaml) {
  LoadResult result = loadString(yaml, "test.yaml");
  Lines lines;
  for (const Diagnostic& diagnostic : result.diagnostics) {
    lines.push_back(diagnostic.toString());
  }
  return lines;
}

std::shared_ptr<const Config> loadValid(const std::string& yaml) {
  LoadResult result = loadString(yaml, "test.yaml");
  for (const Diagnostic& diagnostic : result.diagnostics) {
    ADD_FAILURE() << diagnostic.toString();
  }
  return result.ok() ? result.config : std::make_shared<const Config>();
}

TEST(ConfigHttp2Test, DefaultsWithoutBlock) {
  std::shared_ptr<const Config> config = loadValid("node: { service: demo }\n"
                                                   "clusters: [ { name: app, endpoints: "
                                                   "[127.0.0.1:8080] } ]\n"
                                                   "listeners: [ { name: in, address: "
                                                   "127.0.0.1:15006, routes: [ { cluster: app } ] "
                                                   "} ]\n");
  ASSERT_EQ(config->listeners.size(), 1u);
  const Http2Limits& limits = config->listeners[0].http2;
  EXPECT_EQ(limits.max_concurrent_streams, 100u);
  EXPECT_EQ(limits.initial_window_size, 256u * 1024);
  EXPECT_EQ(limits.connection_window_size, 1024u * 1024);
  EXPECT_EQ(limits.reset_burst, 200u);
  EXPECT_EQ(limits.reset_rate, 33u);
  EXPECT_EQ(limits.max_control_frames, 1000u);
  EXPECT_EQ(limits.max_continuations, 8u);
  EXPECT_EQ(limits.max_empty_frames, 16u);
}

TEST(ConfigHttp2Test, LoadsEveryKey) {
  std::shared_ptr<const Config> config = loadValid(withHttp2("      max_concurrent_streams: 4\n"
                                                             "      initial_window_size: 65535\n"
                                                             "      connection_window_size: 70000\n"
                                                             "      reset_burst: 10\n"
                                                             "      reset_rate: 2\n"
                                                             "      max_control_frames: 50\n"
                                                             "      max_continuations: 3\n"
                                                             "      max_empty_frames: 2\n"));
  ASSERT_EQ(config->listeners.size(), 1u);
  const Http2Limits& limits = config->listeners[0].http2;
  EXPECT_EQ(limits.max_concurrent_streams, 4u);
  EXPECT_EQ(limits.initial_window_size, 65535u);
  EXPECT_EQ(limits.connection_window_size, 70000u);
  EXPECT_EQ(limits.reset_burst, 10u);
  EXPECT_EQ(limits.reset_rate, 2u);
  EXPECT_EQ(limits.max_control_frames, 50u);
  EXPECT_EQ(limits.max_continuations, 3u);
  EXPECT_EQ(limits.max_empty_frames, 2u);

  std::string yaml = toYaml(*config);
  EXPECT_NE(yaml.find("max_concurrent_streams: 4"), std::string::npos) << yaml;
  std::shared_ptr<const Config> again = loadValid(yaml);
  ASSERT_EQ(again->listeners.size(), 1u);
  EXPECT_EQ(again->listeners[0].http2.initial_window_size, 65535u);
  EXPECT_EQ(again->listeners[0].http2.connection_window_size, 70000u);
  EXPECT_EQ(again->listeners[0].http2.max_continuations, 3u);
  EXPECT_EQ(again->listeners[0].http2.max_empty_frames, 2u);
  EXPECT_EQ(toYaml(*again), yaml);
}

TEST(ConfigHttp2Test, RejectsZeroStreams) {
  Lines found = errors(withHttp2("      max_concurrent_streams: 0\n"));
  ASSERT_EQ(found.size(), 1u) << ::testing::PrintToString(found);
  EXPECT_EQ(found[0].rfind("test.yaml:8:31: ", 0), 0u) << found[0];
}

TEST(ConfigHttp2Test, RejectsWindowOutOfRange) {
  Lines small = errors(withHttp2("      initial_window_size: 1024\n"));
  ASSERT_EQ(small.size(), 1u) << ::testing::PrintToString(small);
  EXPECT_EQ(small[0].rfind("test.yaml:8:28: ", 0), 0u) << small[0];

  Lines large = errors(withHttp2("      initial_window_size: 2147483648\n"));
  ASSERT_EQ(large.size(), 1u) << ::testing::PrintToString(large);
  EXPECT_EQ(large[0].rfind("test.yaml:8:28: ", 0), 0u) << large[0];

  Lines connection = errors(withHttp2("      connection_window_size: 65534\n"));
  ASSERT_EQ(connection.size(), 1u) << ::testing::PrintToString(connection);
  EXPECT_EQ(connection[0].rfind("test.yaml:8:31: ", 0), 0u) << connection[0];
}

TEST(ConfigHttp2Test, RejectsUnknownKey) {
  Lines found = errors(withHttp2("      reset_burst: 5\n"
                                 "      max_streams: 5\n"));
  ASSERT_EQ(found.size(), 1u) << ::testing::PrintToString(found);
  EXPECT_EQ(found[0].rfind("test.yaml:9:7: ", 0), 0u) << found[0];
  EXPECT_NE(found[0].find("max_streams"), std::string::npos) << found[0];
}

TEST(ConfigHttp2Test, RejectsNonInteger) {
  Lines found = errors(withHttp2("      reset_rate: fast\n"));
  ASSERT_EQ(found.size(), 1u) << ::testing::PrintToString(found);
  EXPECT_EQ(found[0].rfind("test.yaml:8:19: ", 0), 0u) << found[0];
}

} // namespace
} // namespace deferd::config
