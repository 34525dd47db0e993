#include "proxy/runtime_switches.h"

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include <unistd.h>

#include "config/loader.h"

namespace deferd {
namespace {

using config::PolicyMode;

constexpr char kConfig[] =
    "node: { service: demo }\n"
    "clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]\n"
    "listeners: [ { name: in, address: 127.0.0.1:15006, routes: [ { cluster: app, policy: p } ] "
    "} ]\n"
    "policies:\n"
    "  p: { mode: shadow }\n"
    "  q: {}\n";

class RuntimeSwitchesTest : public ::testing::Test {
protected:
  void SetUp() override {
    config::LoadResult loaded = config::loadString(kConfig, "switches.yaml");
    ASSERT_TRUE(loaded.ok()) << loaded.diagnostics.front().toString();
    config_ = loaded.config;
  }

  AdminReply set(const std::string& policy, const std::string& body, bool* changed) {
    return switches_.setMode(*config_, policy, body, "127.0.0.1:40000", changed);
  }

  std::shared_ptr<const config::Config> config_;
  RuntimeSwitches switches_;
};

TEST(PolicyModeParse, AcceptsThreeModesWithWhitespace) {
  EXPECT_EQ(parsePolicyMode("enforce"), PolicyMode::kEnforce);
  EXPECT_EQ(parsePolicyMode("shadow\n"), PolicyMode::kShadow);
  EXPECT_EQ(parsePolicyMode("  off \r\n"), PolicyMode::kOff);
  EXPECT_FALSE(parsePolicyMode("").has_value());
  EXPECT_FALSE(parsePolicyMode("OFF").has_value());
  EXPECT_FALSE(parsePolicyMode("enforced").has_value());
  EXPECT_FALSE(parsePolicyMode("off off").has_value());
}

TEST_F(RuntimeSwitchesTest, UnknownPolicyNotFound) {
  bool changed = true;
  AdminReply reply = set("missing", "off", &changed);
  EXPECT_EQ(reply.status, 404u);
  EXPECT_NE(reply.body.find("policy missing not found"), std::string::npos) << reply.body;
  EXPECT_FALSE(changed);
}

TEST_F(RuntimeSwitchesTest, InvalidModeRejected) {
  bool changed = true;
  AdminReply reply = set("p", "disable", &changed);
  EXPECT_EQ(reply.status, 400u);
  EXPECT_NE(reply.body.find("invalid mode 'disable'"), std::string::npos) << reply.body;
  EXPECT_FALSE(changed);
  EXPECT_EQ(switches_.apply(config_), config_);
}

TEST_F(RuntimeSwitchesTest, SwitchAppliesToCopyOnly) {
  bool changed = false;
  AdminReply reply = set("p", "off", &changed);
  EXPECT_EQ(reply.status, 200u);
  EXPECT_TRUE(changed);

  std::shared_ptr<const config::Config> effective = switches_.apply(config_);
  EXPECT_NE(effective, config_);
  EXPECT_EQ(effective->policies.at("p").mode, PolicyMode::kOff);
  EXPECT_EQ(effective->policies.at("q").mode, PolicyMode::kEnforce);
  EXPECT_EQ(config_->policies.at("p").mode, PolicyMode::kShadow);
}

TEST_F(RuntimeSwitchesTest, SameModeChangesNothing) {
  bool changed = true;
  AdminReply reply = set("p", "shadow", &changed);
  EXPECT_EQ(reply.status, 200u);
  EXPECT_FALSE(changed);
  EXPECT_EQ(switches_.apply(config_), config_);
}

TEST_F(RuntimeSwitchesTest, SwitchBackToFileModeDropsOverride) {
  bool changed = false;
  set("p", "enforce", &changed);
  EXPECT_FALSE(switches_.describe(*config_).empty());

  set("p", "shadow", &changed);
  EXPECT_TRUE(changed);
  EXPECT_EQ(switches_.apply(config_), config_);
  EXPECT_EQ(switches_.describe(*config_), "");
}

TEST_F(RuntimeSwitchesTest, DescribeListsFileMode) {
  bool changed = false;
  set("q", "off", &changed);
  std::string text = switches_.describe(*config_);
  EXPECT_NE(text.find("#   q: off (config file: enforce)\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("\n", text.size() - 1), text.size() - 1);
  for (size_t start = 0; start < text.size(); start = text.find('\n', start) + 1) {
    EXPECT_EQ(text[start], '#') << "every line must be a YAML comment: " << text;
  }
}

TEST_F(RuntimeSwitchesTest, ClearDropsEveryOverride) {
  bool changed = false;
  set("p", "off", &changed);
  set("q", "shadow", &changed);
  EXPECT_EQ(switches_.clear(), 2u);
  EXPECT_EQ(switches_.apply(config_), config_);
  EXPECT_EQ(switches_.clear(), 0u);
}

TEST(AdminToken, ReadTrimsAndRejectsEmpty) {
  std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("deferd-token-test-" + std::to_string(::getpid()));
  std::string error;

  std::ofstream(path) << "  s3cret-token\n";
  EXPECT_EQ(readAdminToken(path.string(), &error), "s3cret-token");

  std::ofstream(path) << "\n";
  EXPECT_FALSE(readAdminToken(path.string(), &error).has_value());
  EXPECT_NE(error.find("the file is empty"), std::string::npos) << error;

  std::filesystem::remove(path);
  EXPECT_FALSE(readAdminToken(path.string(), &error).has_value());
  EXPECT_NE(error.find("failed to open file"), std::string::npos) << error;
}

} // namespace
} // namespace deferd
