// Policies split across files (`policy_files`) and policy templates (`extends:`), loaded
// through the real loader from files in a temporary directory.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <stdlib.h>

#include "config/loader.h"

namespace deferd::config {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Lines = std::vector<std::string>;

// The main file's fixed part: one listener whose routes name policies `a` and `b` when asked.
std::string mainFile(const std::string& extra, bool routes_use_policies = false) {
  std::string routes = routes_use_policies
                           ? "[ { match: { prefix: /a }, cluster: app, policy: a },\n"
                             "               { cluster: app, policy: b } ]"
                           : "[ { cluster: app } ]";
  return "node: { service: demo }\n"
         "clusters: [ { name: app, endpoints: [127.0.0.1:8080] } ]\n"
         "listeners:\n"
         "  - { name: inbound, address: 127.0.0.1:15006,\n"
         "      routes: " +
         routes + " }\n" + extra;
}

class ConfigFilesTest : public ::testing::Test {
protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "config-files-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }

  void TearDown() override { fs::remove_all(dir_); }

  // Writes `text` to `name` under the test directory, creating its directories.
  void write(const std::string& name, const std::string& text) {
    fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  LoadResult load() { return loadFile(path("deferd.yaml")); }

  // Returns every diagnostic of loading deferd.yaml as "file:line:column: message".
  Lines errors() {
    LoadResult result = load();
    Lines lines;
    for (const Diagnostic& diagnostic : result.diagnostics) {
      lines.push_back(diagnostic.toString());
    }
    if (result.ok() != lines.empty()) {
      lines.push_back("result.ok() disagrees with the diagnostics");
    }
    return lines;
  }

  std::shared_ptr<const Config> loadValid() {
    LoadResult result = load();
    for (const Diagnostic& diagnostic : result.diagnostics) {
      ADD_FAILURE() << diagnostic.toString();
    }
    return result.ok() ? result.config : std::make_shared<const Config>();
  }

  fs::path dir_;
};

// --- policy_files ----------------------------------------------------------------------------

TEST_F(ConfigFilesTest, ReadsPolicyDirectory) {
  write("deferd.yaml", mainFile("policy_files: [policies.d]\n", true));
  write("policies.d/a.yaml", "policies:\n  a: { mode: shadow }\n");
  write("policies.d/b.yaml", "policies:\n  b: { rollout: 25% }\n");
  // Hidden files, other suffixes and subdirectories are not policy files.
  write("policies.d/.c.yaml", "not: [valid\n");
  write("policies.d/c.yml", "not: [valid\n");
  write("policies.d/README", "not: [valid\n");
  write("policies.d/sub/d.yaml", "not: [valid\n");

  std::shared_ptr<const Config> config = loadValid();
  ASSERT_EQ(config->policies.size(), 2u);
  EXPECT_EQ(config->policies.at("a").mode, PolicyMode::kShadow);
  EXPECT_EQ(config->policies.at("b").rollout, 0.25);
  EXPECT_EQ(config->policies.at("a").location.file, path("policies.d/a.yaml"));
  EXPECT_EQ(config->policies.at("a").location.line, 2);
  EXPECT_EQ(config->listeners.at(0).routes.at(0).policy, "a");
}

TEST_F(ConfigFilesTest, ReadsNamedFilesAndMainPolicies) {
  write("deferd.yaml", mainFile("policies:\n  a: { mode: off }\n"
                                "policy_files: [extra/b-policy.yml]\n",
                                true));
  write("extra/b-policy.yml", "policies:\n  b: { mode: shadow }\n");

  std::shared_ptr<const Config> config = loadValid();
  EXPECT_EQ(config->policies.at("a").mode, PolicyMode::kOff);
  EXPECT_EQ(config->policies.at("b").mode, PolicyMode::kShadow);
}

TEST_F(ConfigFilesTest, OwnDirectorySkipsMainFile) {
  // One ConfigMap: the main file and policy files side by side, as the keys of one volume.
  write("deferd.yaml", mainFile("policy_files: [.]\n", true));
  write("a.yaml", "policies:\n  a: {}\n");
  write("b.yaml", "policies:\n  b: {}\n");

  std::shared_ptr<const Config> config = loadValid();
  EXPECT_EQ(config->policies.size(), 2u);
}

TEST_F(ConfigFilesTest, EmptyPolicyFileAndDirectoryAreValid) {
  write("deferd.yaml", mainFile("policy_files: [empty.d, empty.yaml]\n"));
  fs::create_directories(dir_ / "empty.d");
  write("empty.yaml", "");

  EXPECT_TRUE(loadValid()->policies.empty());
}

TEST_F(ConfigFilesTest, RouteNamesPolicyFromFile) {
  write("deferd.yaml", mainFile("policy_files: [policies.d]\n", true));
  write("policies.d/a.yaml", "policies:\n  a: {}\n");

  // Policy b is in no file, so the route that names it is the only problem.
  Lines lines = errors();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("policy 'b' not found in 'policies'"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[0].rfind(path("deferd.yaml") + ":6:40: ", 0), 0u) << lines[0];
}

TEST_F(ConfigFilesTest, DuplicatePolicyAcrossFilesNamesBoth) {
  write("deferd.yaml", mainFile("policies:\n  a: {}\npolicy_files: [policies.d]\n"));
  write("policies.d/1.yaml", "policies:\n  b: {}\n");
  write("policies.d/2.yaml", "# second\npolicies:\n  a: {}\n  b: {}\n");

  EXPECT_EQ(
      errors(),
      (Lines{path("policies.d/2.yaml") + ":3:3: duplicate policy name 'a'; first defined at " +
                 path("deferd.yaml") + ":7:3",
             path("policies.d/2.yaml") + ":4:3: duplicate policy name 'b'; first defined at " +
                 path("policies.d/1.yaml") + ":2:3"}));
}

TEST_F(ConfigFilesTest, ErrorInPolicyFileNamesThatFile) {
  write("deferd.yaml", mainFile("policy_files: [policies.d]\n"));
  write("policies.d/a.yaml", "policies:\n  a:\n    fault:\n      delay: { percent: 200% }\n");
  write("policies.d/b.yaml", "policy:\n  b: {}\n");

  EXPECT_EQ(errors(),
            (Lines{path("policies.d/a.yaml") +
                       ":4:14: missing required key 'duration' in policies.a.fault.delay",
                   path("policies.d/a.yaml") + ":4:25: policies.a.fault.delay.percent: invalid "
                                               "percentage '200%': must be from 0% to 100%",
                   path("policies.d/b.yaml") + ":1:1: unknown key 'policy' in the top-level "
                                               "map"}));
}

TEST_F(ConfigFilesTest, MissingEntryAndInvalidYaml) {
  write("deferd.yaml", mainFile("policy_files: [missing.d, broken.yaml, '']\n"));
  write("broken.yaml", "policies: [a\n");

  Lines lines = errors();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0],
            path("deferd.yaml") + ":6:16: policy_files[0]: '" + path("missing.d") + "' not found");
  EXPECT_EQ(lines[1], path("deferd.yaml") +
                          ":6:40: policy_files[2]: must not be empty; give a file or a "
                          "directory of *.yaml files");
  EXPECT_EQ(lines[2].rfind(path("broken.yaml") + ":2:1: invalid YAML", 0), 0u) << lines[2];
}

TEST_F(ConfigFilesTest, FileListedTwiceIsError) {
  write("deferd.yaml", mainFile("policy_files: [policies.d, policies.d/a.yaml]\n"));
  write("policies.d/a.yaml", "policies:\n  a: {}\n");

  EXPECT_EQ(errors(),
            (Lines{path("deferd.yaml") + ":6:28: policy_files[1]: '" + path("policies.d/a.yaml") +
                   "' is read twice; list each file or directory once"}));
}

TEST_F(ConfigFilesTest, PolicyFileAcceptsOnlyPoliciesAndTemplates) {
  write("deferd.yaml", mainFile("policy_files: [p.yaml]\n"));
  write("p.yaml", "clusters: []\n");

  EXPECT_EQ(errors(), (Lines{path("p.yaml") + ":1:1: unknown key 'clusters' in the top-level "
                                              "map"}));
}

// --- extends ---------------------------------------------------------------------------------

TEST_F(ConfigFilesTest, ExtendsMergesMapsKeyByKey) {
  write("deferd.yaml", mainFile(R"(templates:
  base:
    backpressure:
      limiter: fixed
      initial_limit: 50
      queue: { max_length: 10, max_wait: 2s }
    fault: { header_control: true }
policies:
  a:
    extends: base
    backpressure:
      queue: { max_wait: 5s }
  b:
    extends: base
)",
                                true));

  std::shared_ptr<const Config> config = loadValid();
  const BackpressurePolicy& a = config->policies.at("a").backpressure.value();
  EXPECT_EQ(a.limiter, LimiterKind::kFixed);
  EXPECT_EQ(a.initial_limit, 50u);
  EXPECT_EQ(a.queue_max_length, 10u);
  EXPECT_EQ(a.max_wait, 5s);
  EXPECT_EQ(a.aging, BackpressurePolicy().aging);
  ASSERT_TRUE(config->policies.at("a").fault.has_value());
  EXPECT_TRUE(config->policies.at("a").fault->header_control);

  const BackpressurePolicy& b = config->policies.at("b").backpressure.value();
  EXPECT_EQ(b.max_wait, 2s);
  EXPECT_EQ(b.queue_max_length, 10u);
}

TEST_F(ConfigFilesTest, TemplateErrorReportedOnce) {
  write("deferd.yaml", mainFile(R"(templates:
  base:
    backpressure: { min_limit: 100, max_limit: 50 }
policies:
  a: { extends: base }
  b: { extends: base }
)",
                                true));

  Lines lines = errors();
  ASSERT_EQ(lines.size(), 1u) << ::testing::PrintToString(lines);
  EXPECT_NE(lines[0].find("max_limit 50 is below min_limit 100"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[0].find("set at"), std::string::npos) << lines[0];
}

TEST_F(ConfigFilesTest, ExtendsReplacesScalarsAndLists) {
  write("deferd.yaml", mainFile(R"(templates:
  base:
    mode: shadow
    rollout: 50%
    priority:
      inherit: { from: [traceparent, x-request-id], max_depth: 2 }
    breaker:
      failure: { status: [5xx, 429] }
      cooldown: 10s
policies:
  a:
    extends: base
    mode: enforce
    priority:
      inherit: { from: [x-trace] }
    breaker:
      failure: { status: [503] }
)",
                                true) +
                           "  b: { extends: base }\n");

  std::shared_ptr<const Config> config = loadValid();
  const Policy& a = config->policies.at("a");
  EXPECT_EQ(a.mode, PolicyMode::kEnforce);
  EXPECT_EQ(a.rollout, 0.5);
  EXPECT_EQ(a.priority->correlation, (std::vector<std::string>{"x-trace"}));
  EXPECT_EQ(a.priority->max_depth, 2u);
  EXPECT_EQ(a.breaker->failure_statuses, (std::vector<int>{503}));
  EXPECT_TRUE(a.breaker->failure_status_classes.empty());
  EXPECT_EQ(a.breaker->cooldown, 10s);

  const Policy& b = config->policies.at("b");
  EXPECT_EQ(b.mode, PolicyMode::kShadow);
  EXPECT_EQ(b.priority->correlation, (std::vector<std::string>{"traceparent", "x-request-id"}));
  EXPECT_EQ(b.breaker->failure_statuses, (std::vector<int>{429}));
  EXPECT_EQ(b.breaker->failure_status_classes, (std::vector<int>{5}));
}

TEST_F(ConfigFilesTest, ExtendsMergesClassesAndHeaders) {
  write("deferd.yaml", mainFile(R"(templates:
  base:
    priority: { classes: { gold: 0, bronze: 6 } }
    request_headers: { add: { x-team: core, x-tier: base } }
policies:
  a:
    extends: base
    priority: { classes: { silver: 3, bronze: 7 }, default: silver }
    request_headers: { add: { x-tier: gold } }
  b: {}
)",
                                true));

  std::shared_ptr<const Config> config = loadValid();
  const Policy& a = config->policies.at("a");
  EXPECT_EQ(a.priority->classes,
            (std::map<std::string, int>{{"gold", 0}, {"silver", 3}, {"bronze", 7}}));
  EXPECT_EQ(a.priority->default_urgency, 3);
  std::vector<std::pair<std::string, std::string>> added = {{"x-tier", "gold"}, {"x-team", "core"}};
  EXPECT_EQ(a.request_headers.add, added);
}

TEST_F(ConfigFilesTest, ExtendsFollowsChainAcrossFiles) {
  write("deferd.yaml", mainFile(R"(policy_files: [templates.yaml]
policies:
  a: { extends: strict, fault: { abort: { percent: 1%, status: 500 } } }
  b: { extends: base }
)",
                                true));
  write("templates.yaml", R"(templates:
  strict:
    extends: tuned
    backpressure: { max_limit: 40 }
  tuned:
    extends: base
    backpressure: { min_limit: 2, queue: { max_length: 0 } }
  base:
    mode: shadow
    backpressure: { limiter: aimd, max_limit: 100 }
)");

  std::shared_ptr<const Config> config = loadValid();
  const Policy& a = config->policies.at("a");
  EXPECT_EQ(a.mode, PolicyMode::kShadow);
  EXPECT_EQ(a.backpressure->limiter, LimiterKind::kAimd);
  EXPECT_EQ(a.backpressure->min_limit, 2u);
  EXPECT_EQ(a.backpressure->max_limit, 40u);
  EXPECT_EQ(a.backpressure->queue_max_length, 0u);
  EXPECT_EQ(a.fault->abort_status, 500);
  EXPECT_EQ(config->policies.at("b").backpressure->max_limit, 100u);
  // The policy's own location, not its template's.
  EXPECT_EQ(a.location.file, path("deferd.yaml"));
}

TEST_F(ConfigFilesTest, ExtendsCycleIsErrorAtExtendsKey) {
  write("deferd.yaml", mainFile(R"(templates:
  one: { extends: two }
  two:
    extends: one
policies:
  a: { extends: one }
  b: {}
)",
                                true));

  // Each template is checked on its own too, so the cycle is found from both ends. Policy a
  // meets the second report again, which is listed once.
  EXPECT_EQ(
      errors(),
      (Lines{path("deferd.yaml") + ":8:10: templates.one.extends: extends cycle: two -> one -> two",
             path("deferd.yaml") +
                 ":10:5: templates.two.extends: extends cycle: one -> two -> one"}));
}

TEST_F(ConfigFilesTest, CombinedBoundsInDottedTemplates) {
  write("deferd.yaml", mainFile(R"(templates:
  t.b: { backpressure: { min_limit: 20 } }
  t.a: { extends: t.b, backpressure: { max_limit: 10 } }
policies:
  a: { extends: t.a }
  b: {}
)",
                                true));

  Lines lines = errors();
  ASSERT_EQ(lines.size(), 1u) << ::testing::PrintToString(lines);
  EXPECT_NE(lines[0].find("(templates.t.b.backpressure.min_limit, set at "), std::string::npos)
      << lines[0];
}

TEST_F(ConfigFilesTest, PolicyMayExtendTemplateOfItsName) {
  // Policies and templates have separate names, so this is no cycle.
  write("deferd.yaml", mainFile(R"(templates:
  a: { backpressure: { max_limit: 40 } }
policies:
  a: { extends: a }
  b: {}
)",
                                true));

  std::shared_ptr<const Config> config = loadValid();
  EXPECT_EQ(config->policies.at("a").backpressure->max_limit, 40u);
}

TEST_F(ConfigFilesTest, ExtendsUnknownParentIsError) {
  write("deferd.yaml", mainFile(R"(templates:
  base: {}
policies:
  a: { extends: bsae }
  b: { extends: a }
)",
                                true));

  EXPECT_EQ(errors(),
            (Lines{path("deferd.yaml") + ":10:8: policies.a.extends: template 'bsae' not found "
                                         "in 'templates'; did you mean 'base'?",
                   path("deferd.yaml") + ":11:8: policies.b.extends: template 'a' not found "
                                         "in 'templates'; 'a' is a policy, and only a template "
                                         "can be extended"}));
}

TEST_F(ConfigFilesTest, ExtendsChainDepthIsBounded) {
  std::string templates = "templates:\n";
  for (int i = 0; i < 9; ++i) {
    templates += "  t" + std::to_string(i) + ": { extends: t" + std::to_string(i + 1) + " }\n";
  }
  templates += "  t9: {}\n";
  write("deferd.yaml",
        mainFile(templates + "policies:\n  a: { extends: t0 }\n  b: { extends: t1 }\n", true));

  // Policy a reaches its ninth template, t8, through the `extends` of t7. Template t0, checked
  // on its own, reaches its ninth, t9, through the `extends` of t8.
  EXPECT_EQ(errors(), (Lines{path("deferd.yaml") + ":15:9: templates.t7.extends: extends chain "
                                                   "is longer than 8 templates; flatten some "
                                                   "of them",
                             path("deferd.yaml") + ":16:9: templates.t8.extends: extends chain "
                                                   "is longer than 8 templates; flatten some "
                                                   "of them"}));
}

TEST_F(ConfigFilesTest, InheritedErrorPointsAtTemplateFile) {
  write("deferd.yaml", mainFile(R"(policy_files: [policies.d]
policies:
  a: { extends: base }
  b: { extends: base, backpressure: { queue: { max_wait: 2s } } }
)",
                                true));
  write("policies.d/base.yaml", R"(templates:
  base:
    backpressure:
      queue: { max_wait: 5, max_lenght: 3 }
)");

  // Found through the template itself and policy a; reported once. Policy b replaces max_wait.
  EXPECT_EQ(errors(),
            (Lines{path("policies.d/base.yaml") +
                       ":4:26: templates.base.backpressure.queue.max_wait: invalid duration '5': "
                       "missing unit; expected a number with unit ms, s, m or h, such as 250ms, "
                       "1.5s, 2m or 1h",
                   path("policies.d/base.yaml") +
                       ":4:29: unknown key 'max_lenght' in templates.base.backpressure.queue; did "
                       "you mean 'max_length'?"}));
}

TEST_F(ConfigFilesTest, CrossFieldCheckSeesMergedValues) {
  write("deferd.yaml", mainFile(R"(templates:
  base: { backpressure: { max_limit: 10 }, breaker: { max_cooldown: 20s } }
policies:
  a: { extends: base, backpressure: { min_limit: 20 }, breaker: { cooldown: 30s } }
  b: {}
)",
                                true));

  // Each message names the policy's key too, since only the two together are wrong.
  std::string at = path("deferd.yaml") + ":10)";
  EXPECT_EQ(errors(), (Lines{path("deferd.yaml") +
                                 ":8:38: templates.base.backpressure.max_limit: max_limit 10 is "
                                 "below min_limit 20 (policies.a.backpressure.min_limit, set at " +
                                 at,
                             path("deferd.yaml") +
                                 ":8:69: templates.base.breaker.max_cooldown: max_cooldown 20s is "
                                 "below cooldown 30s (policies.a.breaker.cooldown, set at " +
                                 at}));
}

TEST_F(ConfigFilesTest, ToYamlWritesMergedPolicies) {
  write("deferd.yaml", mainFile(R"(templates:
  base: { mode: shadow, backpressure: { limiter: fixed, initial_limit: 30 } }
policies:
  a: { extends: base, backpressure: { max_limit: 60 } }
  b: {}
)",
                                true));

  std::shared_ptr<const Config> config = loadValid();
  std::string yaml = toYaml(*config);
  EXPECT_EQ(yaml.find("extends"), std::string::npos);
  EXPECT_EQ(yaml.find("templates"), std::string::npos);

  LoadResult again = loadString(yaml, "effective.yaml");
  ASSERT_TRUE(again.ok());
  const Policy& a = again.config->policies.at("a");
  EXPECT_EQ(a.mode, PolicyMode::kShadow);
  EXPECT_EQ(a.backpressure->limiter, LimiterKind::kFixed);
  EXPECT_EQ(a.backpressure->initial_limit, 30u);
  EXPECT_EQ(a.backpressure->max_limit, 60u);
  EXPECT_EQ(toYaml(*again.config), yaml);
}

} // namespace
} // namespace deferd::config
