#include "proxy/config_watch.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <gtest/gtest.h>

#include <stdlib.h>

namespace deferd {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

// Long enough that no backstop tick fires during a test that did not ask for one.
constexpr milliseconds kNoBackstop{3600 * 1000};

void writeFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

class ConfigWatchTest : public ::testing::Test {
protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "config-watch-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    config_ = dir_ / "deferd.yaml";
    writeFile(config_, "workers: 1\n");
  }

  void TearDown() override { fs::remove_all(dir_); }

  // Runs the io_context for `duration` of wall time: the watch reacts to real kernel events.
  void runFor(milliseconds duration) {
    io_.restart();
    io_.run_for(duration);
  }

  // Runs `step` on the loop once the watch has started, so its events reach the watch.
  void runStepThen(const std::function<void()>& step, milliseconds duration) {
    boost::asio::post(io_, step);
    runFor(duration);
  }

  boost::asio::io_context io_;
  fs::path dir_;
  fs::path config_;
  int calls_ = 0;
};

TEST(ConfigHash, Fnv1aMatchesReferenceValues) {
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ULL);
}

TEST(ConfigHash, KeepsTopFiftyTwoBitsExactly) {
  double hash = configHash("foobar");
  EXPECT_EQ(hash, static_cast<double>(0x85944171f73967e8ULL >> 12));
  EXPECT_LT(hash, 4503599627370496.0); // 2^52
  EXPECT_EQ(static_cast<uint64_t>(hash), 0x85944171f73967e8ULL >> 12);
  EXPECT_NE(configHash("workers: 1\n"), configHash("workers: 2\n"));
}

TEST_F(ConfigWatchTest, ReadsFilesAndHash) {
  std::string error;
  std::optional<ConfigFiles> files = readConfigFiles(config_.string(), &error);
  ASSERT_TRUE(files.has_value()) << error;
  ASSERT_EQ(files->sources.files.size(), 1u);
  EXPECT_EQ(files->sources.files[0].text, "workers: 1\n");
  EXPECT_EQ(files->hash, configHash("workers: 1\n"));

  EXPECT_FALSE(readConfigFiles((dir_ / "missing.yaml").string(), &error).has_value());
  EXPECT_NE(error.find("missing.yaml: failed to open file"), std::string::npos) << error;
}

TEST_F(ConfigWatchTest, HashCoversEveryPolicyFile) {
  writeFile(config_, "policy_files: [policies.d]\n");
  fs::create_directory(dir_ / "policies.d");
  writeFile(dir_ / "policies.d" / "a.yaml", "policies: {}\n");
  std::string error;
  double one_file = readConfigFiles(config_.string(), &error)->hash;
  EXPECT_NE(one_file, configHash("policy_files: [policies.d]\n"));

  writeFile(dir_ / "policies.d" / "a.yaml", "policies: { a: {} }\n");
  double changed = readConfigFiles(config_.string(), &error)->hash;
  EXPECT_NE(changed, one_file);

  writeFile(dir_ / "policies.d" / "b.yaml", "");
  double added = readConfigFiles(config_.string(), &error)->hash;
  EXPECT_NE(added, changed);

  fs::remove(dir_ / "policies.d" / "b.yaml");
  EXPECT_EQ(readConfigFiles(config_.string(), &error)->hash, changed);

  // The same bytes under another name are another config.
  fs::rename(dir_ / "policies.d" / "a.yaml", dir_ / "policies.d" / "c.yaml");
  EXPECT_NE(readConfigFiles(config_.string(), &error)->hash, changed);
}

TEST(WatchTargets, CoverMainFilePolicyDirectoryAndFiles) {
  config::ConfigSources sources;
  sources.files.push_back({"/etc/deferd/deferd.yaml", "", ""});
  sources.entries.push_back({"/etc/deferd/policies.d", true, {}, ""});
  sources.entries.push_back({"/etc/deferd/extra/one.yaml", false, {}, ""});
  sources.entries.push_back({"/etc/deferd/missing.yaml", false, {}, "not found"});

  std::vector<WatchTarget> targets = watchTargets(sources);
  ASSERT_EQ(targets.size(), 3u);
  EXPECT_EQ(targets[0].directory, "/etc/deferd");
  EXPECT_EQ(targets[0].names,
            (std::vector<std::string>{"deferd.yaml", "policies.d", "missing.yaml"}));
  EXPECT_FALSE(targets[0].every_yaml);
  EXPECT_EQ(targets[1].directory, "/etc/deferd/policies.d");
  EXPECT_TRUE(targets[1].every_yaml);
  EXPECT_EQ(targets[2].directory, "/etc/deferd/extra");
  EXPECT_EQ(targets[2].names, (std::vector<std::string>{"one.yaml"}));
}

TEST(WatchTargets, OwnDirectoryIsOneTarget) {
  config::ConfigSources sources;
  sources.files.push_back({"/etc/deferd/deferd.yaml", "", ""});
  sources.entries.push_back({"/etc/deferd/.", true, {}, ""});

  std::vector<WatchTarget> targets = watchTargets(sources);
  ASSERT_EQ(targets.size(), 2u);
  EXPECT_EQ(targets[0].directory, "/etc/deferd");
  EXPECT_EQ(targets[0].names, (std::vector<std::string>{"deferd.yaml"}));
  EXPECT_TRUE(targets[0].every_yaml);
  EXPECT_EQ(targets[1].directory, "/etc");
  EXPECT_EQ(targets[1].names, (std::vector<std::string>{"deferd"}));
}

TEST_F(ConfigWatchTest, SymlinkSwapFiresOnceAfterDebounce) {
  // The ConfigMap layout: deferd.yaml -> ..data/deferd.yaml, ..data -> ..v1.
  fs::remove(config_);
  fs::create_directory(dir_ / "..v1");
  writeFile(dir_ / "..v1" / "deferd.yaml", "workers: 1\n");
  fs::create_directory_symlink("..v1", dir_ / "..data");
  fs::create_symlink(fs::path("..data") / "deferd.yaml", config_);

  ConfigWatch watch(io_, config_.string(), {milliseconds(50), kNoBackstop}, [this] { calls_++; });
  watch.start();
  runStepThen(
      [this] {
        fs::create_directory(dir_ / "..v2");
        writeFile(dir_ / "..v2" / "deferd.yaml", "workers: 2\n");
        fs::create_directory_symlink("..v2", dir_ / "..data_tmp");
        fs::rename(dir_ / "..data_tmp", dir_ / "..data");
        fs::remove_all(dir_ / "..v1");
      },
      milliseconds(400));

  EXPECT_EQ(calls_, 1);
}

TEST_F(ConfigWatchTest, WritesInStepsFireOnce) {
  ConfigWatch watch(io_, config_.string(), {milliseconds(100), kNoBackstop}, [this] { calls_++; });
  watch.start();

  // Three writes 30 ms apart, each inside the previous one's debounce.
  boost::asio::steady_timer step(io_);
  int written = 0;
  std::function<void()> writeNext = [&] {
    writeFile(config_, "workers: " + std::to_string(++written) + "\n");
    if (written < 3) {
      step.expires_after(milliseconds(30));
      step.async_wait([&](const boost::system::error_code&) { writeNext(); });
    }
  };
  runStepThen(writeNext, milliseconds(500));

  EXPECT_EQ(written, 3);
  EXPECT_EQ(calls_, 1);
}

TEST_F(ConfigWatchTest, IgnoresOtherFilesInDirectory) {
  ConfigWatch watch(io_, config_.string(), {milliseconds(20), kNoBackstop}, [this] { calls_++; });
  watch.start();
  runStepThen([this] { writeFile(dir_ / "access.log", "{}\n"); }, milliseconds(200));

  EXPECT_EQ(calls_, 0);
}

TEST_F(ConfigWatchTest, BackstopFiresWithoutEvents) {
  ConfigWatch watch(io_, config_.string(), {milliseconds(10), milliseconds(50)},
                    [this] { calls_++; });
  watch.start();
  runFor(milliseconds(300));

  EXPECT_GE(calls_, 2);
}

TEST_F(ConfigWatchTest, StopCancelsPendingCallback) {
  ConfigWatch watch(io_, config_.string(), {milliseconds(100), kNoBackstop}, [this] { calls_++; });
  watch.start();
  // The write's event arms the 100 ms debounce; stop() comes 50 ms later, before it fires.
  boost::asio::steady_timer stop_timer(io_);
  runStepThen(
      [&] {
        writeFile(config_, "workers: 2\n");
        stop_timer.expires_after(milliseconds(50));
        stop_timer.async_wait([&](const boost::system::error_code&) { watch.stop(); });
      },
      milliseconds(300));

  EXPECT_EQ(calls_, 0);
}

TEST_F(ConfigWatchTest, FileAddedToPolicyDirectoryFires) {
  fs::create_directory(dir_ / "policies.d");
  ConfigWatch watch(io_, config_.string(), {milliseconds(20), kNoBackstop}, [this] { calls_++; });
  watch.setTargets({WatchTarget{dir_.string(), {"deferd.yaml"}, false},
                    WatchTarget{(dir_ / "policies.d").string(), {}, true}});
  watch.start();
  runStepThen([this] { writeFile(dir_ / "policies.d" / "new.yaml", "policies: {}\n"); },
              milliseconds(200));
  EXPECT_EQ(calls_, 1);

  // Editor backups and hidden files in the directory are not policy files.
  runStepThen(
      [this] {
        writeFile(dir_ / "policies.d" / "new.yaml~", "x");
        writeFile(dir_ / "policies.d" / ".new.yaml.swp", "x");
      },
      milliseconds(200));
  EXPECT_EQ(calls_, 1);
}

TEST_F(ConfigWatchTest, OpenWriterHoldsOffCallback) {
  ConfigWatch watch(io_, config_.string(), {milliseconds(50), kNoBackstop}, [this] { calls_++; });
  watch.start();

  // The writer pauses 300 ms, six debounce periods, between its two halves.
  std::ofstream out;
  boost::asio::steady_timer finish(io_);
  runStepThen(
      [&] {
        out.open(config_, std::ios::binary | std::ios::trunc);
        out << "workers: " << std::flush;
        finish.expires_after(milliseconds(300));
        finish.async_wait([&](const boost::system::error_code&) {
          EXPECT_EQ(calls_, 0) << "on_change ran while the file was open for writing";
          out << "2\n";
          out.close();
        });
      },
      milliseconds(500));

  EXPECT_EQ(calls_, 1);
}

TEST_F(ConfigWatchTest, WriterHoldIsBounded) {
  ConfigWatchOptions options{milliseconds(20), kNoBackstop, milliseconds(100)};
  ConfigWatch watch(io_, config_.string(), options, [this] { calls_++; });
  watch.start();

  std::ofstream out;
  runStepThen(
      [&] {
        out.open(config_, std::ios::binary | std::ios::trunc);
        out << "workers: 3\n" << std::flush; // never closed during the run
      },
      milliseconds(300));

  EXPECT_EQ(calls_, 1);
}

TEST_F(ConfigWatchTest, RecheckCallsAgain) {
  ConfigWatch watch(io_, config_.string(), {milliseconds(20), kNoBackstop}, [&] {
    if (++calls_ == 1) {
      watch.recheck();
    }
  });
  watch.start();
  runStepThen([this] { writeFile(config_, "workers: 2\n"); }, milliseconds(200));

  EXPECT_EQ(calls_, 2);
}

} // namespace
} // namespace deferd
