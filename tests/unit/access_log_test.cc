#include "proxy/access_log.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <prometheus/counter.h>

namespace deferd {
namespace {

class AccessLogTest : public ::testing::Test {
protected:
  void SetUp() override {
    char pattern[] = "/tmp/deferd_access_log_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    directory_ = pattern;
    path_ = directory_ / "access.log";
  }

  void TearDown() override { std::filesystem::remove_all(directory_); }

  std::shared_ptr<AccessLogFile> openLog() {
    std::string error;
    auto file = AccessLog::open(path_.string(), &error);
    EXPECT_NE(file, nullptr) << error;
    return file;
  }

  std::string contents() const {
    std::ifstream in(path_, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }

  std::vector<std::string> lines() const {
    std::vector<std::string> result;
    std::istringstream in(contents());
    std::string line;
    while (std::getline(in, line)) {
      result.push_back(line);
    }
    return result;
  }

  std::filesystem::path directory_;
  std::filesystem::path path_;
};

AccessLogEntry sampleEntry() {
  AccessLogEntry entry;
  entry.listener = "inbound";
  entry.cluster = "backend";
  entry.method = "GET";
  entry.authority = "example.com";
  entry.path = "/items?id=7";
  entry.protocol = "HTTP/1.1";
  entry.request_id = "req-1";
  entry.downstream_address = "127.0.0.1:50000";
  entry.upstream_endpoint = "10.0.0.2:8080";
  entry.status = 200;
  entry.request_bytes = 12;
  entry.response_bytes = 345;
  entry.duration_seconds = 0.0125;
  entry.upstream_seconds = 0.01;
  entry.reason = "";
  entry.decision = "queued";
  entry.urgency = 1;
  entry.requested_urgency = 0;
  entry.priority_source = "header";
  return entry;
}

// Parses every line of `path` with python3's json module and returns python3's exit code:
// 0 when every line is one valid JSON object, 127 when python3 is not installed. NaN and
// Infinity, which the module accepts by default, are rejected.
int validateJsonLines(const std::string& path) {
  std::string command = "python3 -c 'import json, sys\n"
                        "def reject(constant): sys.exit(\"not JSON: \" + constant)\n"
                        "for line in open(sys.argv[1], encoding=\"utf-8\", errors=\"strict\"):\n"
                        "    assert isinstance(json.loads(line, parse_constant=reject), dict)\n' " +
                        path;
  int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string jsonString(std::string_view value) {
  std::string out;
  appendJsonString(out, value);
  return out;
}

TEST(AppendJsonStringTest, EscapesTable) {
  struct Case {
    std::string input;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"", R"("")"},
      {"plain /path?q=1", R"("plain /path?q=1")"},
      {"say \"hi\"", R"("say \"hi\"")"},
      {"back\\slash", R"("back\\slash")"},
      {"line\nbreak", R"("line\u000abreak")"},
      {"tab\tcr\r", R"("tab\u0009cr\u000d")"},
      {std::string("nul\0byte", 8), R"("nul\u0000byte")"},
      {"\x01\x1f", R"("\u0001\u001f")"},
      {"del\x7f", "\"del\x7f\""},
      {"caf\xc3\xa9", "\"caf\xc3\xa9\""},                    // U+00E9, two bytes
      {"\xe2\x82\xac", "\"\xe2\x82\xac\""},                  // U+20AC, three bytes
      {"\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\""},          // U+1F600, four bytes
      {"\xff", R"("\ufffd")"},                               // never valid in UTF-8
      {"a\x80z", R"("a\ufffdz")"},                           // stray continuation byte
      {"\xc3", R"("\ufffd")"},                               // truncated sequence at the end
      {"\xc3(", R"("\ufffd(")"},                             // lead byte without continuation
      {"\xc0\xaf", R"("\ufffd\ufffd")"},                     // overlong '/'
      {"\xe0\x80\xaf", R"("\ufffd\ufffd\ufffd")"},           // overlong '/'
      {"\xed\xa0\x80", R"("\ufffd\ufffd\ufffd")"},           // UTF-16 surrogate U+D800
      {"\xf4\x90\x80\x80", R"("\ufffd\ufffd\ufffd\ufffd")"}, // above U+10FFFF
  };

  for (const Case& c : cases) {
    EXPECT_EQ(jsonString(c.input), c.expected)
        << "input bytes: " << ::testing::PrintToString(c.input);
  }
}

TEST_F(AccessLogTest, RecordWritesExactLine) {
  {
    AccessLog log(openLog());
    log.record(sampleEntry());
  }

  std::vector<std::string> written = lines();
  ASSERT_EQ(written.size(), 1u);

  // Only the shape of the time is checked, because the rest of the line is fixed.
  const std::regex time_prefix(R"(^\{"time":"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z",)");
  std::smatch match;
  ASSERT_TRUE(std::regex_search(written[0], match, time_prefix)) << written[0];
  EXPECT_EQ(match.suffix().str(),
            R"("listener":"inbound","cluster":"backend","method":"GET",)"
            R"("authority":"example.com","path":"/items?id=7","protocol":"HTTP/1.1",)"
            R"("request_id":"req-1","downstream":"127.0.0.1:50000","upstream":"10.0.0.2:8080",)"
            R"("status":200,"request_bytes":12,"response_bytes":345,"duration_ms":12.500,)"
            R"("upstream_ms":10.000,"reason":"","decision":"queued","urgency":1,)"
            R"("requested_urgency":0,"priority_source":"header","grpc_status":""})");
}

TEST_F(AccessLogTest, UpstreamTimeNullWhenUnused) {
  AccessLogEntry entry = sampleEntry();
  entry.upstream_seconds = -1;
  entry.upstream_endpoint = "";
  entry.status = 503;
  entry.reason = "no-healthy-endpoint";
  {
    AccessLog log(openLog());
    log.record(entry);
  }

  std::string text = contents();

  EXPECT_NE(text.find(R"("upstream_ms":null,)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("upstream":"",)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("reason":"no-healthy-endpoint",)"), std::string::npos) << text;
}

TEST_F(AccessLogTest, NonFiniteDurationWrittenAsNull) {
  AccessLogEntry entry = sampleEntry();
  entry.duration_seconds = std::numeric_limits<double>::quiet_NaN();
  entry.upstream_seconds = std::numeric_limits<double>::infinity();
  {
    AccessLog log(openLog());
    log.record(entry);
  }

  std::string text = contents();

  EXPECT_NE(text.find(R"("duration_ms":null,)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("upstream_ms":null,)"), std::string::npos) << text;
  EXPECT_EQ(validateJsonLines(path_.string()), 0) << text;
}

TEST_F(AccessLogTest, OneLinePerRecord) {
  AccessLogEntry entry = sampleEntry();
  entry.path = "/with\nnewline\r\nand \"quotes\" and \xff byte";
  {
    AccessLog log(openLog());
    for (int i = 0; i < 3; ++i) {
      log.record(entry);
    }
  }

  std::vector<std::string> written = lines();
  ASSERT_EQ(written.size(), 3u);
  for (const std::string& line : written) {
    EXPECT_EQ(line.front(), '{') << line;
    EXPECT_EQ(line.back(), '}') << line;
  }
  EXPECT_EQ(validateJsonLines(path_.string()), 0) << contents();
}

TEST_F(AccessLogTest, BufferedUntilFlush) {
  AccessLog log(openLog());
  log.record(sampleEntry());

  EXPECT_EQ(contents().size(), 0u);

  log.flush();
  EXPECT_EQ(lines().size(), 1u);

  log.flush(); // an empty buffer writes nothing
  EXPECT_EQ(lines().size(), 1u);
}

TEST_F(AccessLogTest, FlushesPastThirtyTwoKiB) {
  AccessLogEntry entry = sampleEntry();
  std::string long_path(1000, 'p');
  entry.path = long_path;

  // Every line has the same length, because the time always has the same shape.
  {
    AccessLog probe(openLog());
    probe.record(entry);
  }
  size_t line_size = contents().size();
  std::filesystem::remove(path_);

  AccessLog log(openLog());
  size_t records = 0;
  while (std::filesystem::file_size(path_) == 0 && records < 100) {
    log.record(entry);
    ++records;
  }

  // The record that took the buffer past 32 KiB wrote it, and none before it did.
  EXPECT_GT(records * line_size, 32u * 1024);
  EXPECT_LE((records - 1) * line_size, 32u * 1024);
  std::string text = contents();
  EXPECT_EQ(text.size(), records * line_size);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(lines().size(), records);
}

TEST_F(AccessLogTest, DestructorFlushes) {
  {
    AccessLog log(openLog());
    log.record(sampleEntry());
    log.record(sampleEntry());
  }

  EXPECT_EQ(lines().size(), 2u);
}

TEST_F(AccessLogTest, AppendsToExistingFile) {
  {
    std::ofstream out(path_);
    out << "existing line\n";
  }
  {
    AccessLog log(openLog());
    log.record(sampleEntry());
  }

  std::vector<std::string> written = lines();
  ASSERT_EQ(written.size(), 2u);
  EXPECT_EQ(written[0], "existing line");
  EXPECT_EQ(written[1].rfind("{\"time\":", 0), 0u);
}

TEST_F(AccessLogTest, WorkersSharingFileDoNotInterleave) {
  auto file = openLog();
  constexpr int kWorkers = 4;
  constexpr int kRecordsPerWorker = 2000;

  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([file] {
      AccessLog log(file);
      for (int i = 0; i < kRecordsPerWorker; ++i) {
        log.record(sampleEntry());
      }
    });
  }
  for (auto& worker : workers) {
    worker.join();
  }

  EXPECT_EQ(lines().size(), static_cast<size_t>(kWorkers * kRecordsPerWorker));
  EXPECT_EQ(validateJsonLines(path_.string()), 0);
}

TEST_F(AccessLogTest, OpenFailureNamesPath) {
  std::string missing = (directory_ / "no-such-dir" / "access.log").string();
  std::string error;

  auto file = AccessLog::open(missing, &error);

  EXPECT_EQ(file, nullptr);
  EXPECT_NE(error.find(missing), std::string::npos) << error;
  EXPECT_NE(error.find("No such file or directory"), std::string::npos) << error;
}

TEST_F(AccessLogTest, FailedWritesCountDroppedBytes) {
  // Every write to /dev/full fails with ENOSPC, as on a full disk.
  prometheus::Counter dropped;
  std::string error;
  auto file = AccessLog::open("/dev/full", &error, &dropped);
  ASSERT_NE(file, nullptr) << error;
  AccessLog log(file);

  log.record(sampleEntry());
  log.record(sampleEntry());
  log.flush();
  double first = dropped.Value();
  log.record(sampleEntry());
  log.flush();

  EXPECT_GT(first, 0);
  EXPECT_DOUBLE_EQ(dropped.Value(), first * 1.5); // three lines of equal length
}

TEST_F(AccessLogTest, DashOpensStandardOutput) {
  std::string error;

  auto file = AccessLog::open("-", &error);

  EXPECT_NE(file, nullptr);
  EXPECT_EQ(error, "");
}

} // namespace
} // namespace deferd
