#include "proxy/worker.h"

#include <gtest/gtest.h>

#include <regex>
#include <set>

namespace deferd {
namespace {

TEST(WorkerTest, RequestIdsAreUuidV4) {
  Worker worker(0, 1);
  const std::regex uuid_v4("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");

  for (int i = 0; i < 100; i++) {
    std::string id = worker.generateRequestId();
    EXPECT_TRUE(std::regex_match(id, uuid_v4)) << id;
  }
}

TEST(WorkerTest, RequestIdsDiffer) {
  Worker worker(0, 1);
  std::set<std::string> ids;

  for (int i = 0; i < 1000; i++) {
    ids.insert(worker.generateRequestId());
  }

  EXPECT_EQ(ids.size(), 1000u);
}

} // namespace
} // namespace deferd
