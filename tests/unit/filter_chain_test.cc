#include "proxy/filter_chain.h"

#include <gtest/gtest.h>

#include "filters/headers/header_mutation.h"
#include "tests/unit/test_support.h"

namespace deferd {
namespace {

using namespace std::chrono_literals;
using testing::FakeDispatcher;
using testing::TestHeaderMap;

// Records what the chain asked of its stream.
class RecordingOwner : public ChainOwner {
public:
  void onChainContinue() override { continued++; }
  void onChainLocalReply(LocalReplyReason reason) override { replies.push_back(reason); }
  RequestInfo& requestInfo() override { return info; }
  Dispatcher& dispatcher() override { return clock; }
  bool onChainRouteToCluster(size_t cluster_index) override {
    routed_to.push_back(cluster_index);
    return true;
  }

  int continued = 0;
  std::vector<LocalReplyReason> replies;
  std::vector<size_t> routed_to;
  RequestInfo info;
  FakeDispatcher clock;
};

// Appends its name to a shared trace, and continues, replies or holds as told.
class ScriptedFilter : public StreamFilter {
public:
  enum class Action { kContinue, kReply, kHold };

  ScriptedFilter(std::string name, Action action, std::vector<std::string>& trace)
      : name_(std::move(name)), action_(action), trace_(trace) {}

  FilterStatus onRequestHeaders(HeaderMap&) override {
    trace_.push_back(name_ + ":request");
    switch (action_) {
    case Action::kContinue:
      return FilterStatus::kContinue;
    case Action::kReply:
      callbacks().sendLocalReply(LocalReplyReason::kNoHealthyEndpoint);
      return FilterStatus::kStop;
    case Action::kHold:
      // Release after 100 ms of the fake clock, as a queue would.
      timer_ = callbacks().dispatcher().createTimer([this] { callbacks().continueRequest(); });
      timer_->enableTimer(100ms);
      return FilterStatus::kStop;
    }
    return FilterStatus::kContinue;
  }

  void onResponseHeaders(int, HeaderMap&) override { trace_.push_back(name_ + ":response"); }

  void onStreamEnd(StreamEnd end) override {
    trace_.push_back(name_ + ":end");
    ends.push_back(end);
    timer_.reset(); // a held filter gives up its place here
  }

  FilterCallbacks& exposedCallbacks() { return callbacks(); }

  std::vector<StreamEnd> ends;

private:
  std::string name_;
  Action action_;
  std::vector<std::string>& trace_;
  std::unique_ptr<Timer> timer_;
};

struct ChainFixture {
  ScriptedFilter* add(std::string name, ScriptedFilter::Action action) {
    auto filter = std::make_unique<ScriptedFilter>(std::move(name), action, trace);
    ScriptedFilter* raw = filter.get();
    filters.push_back(std::move(filter));
    return raw;
  }
  std::unique_ptr<FilterChain> build() {
    return std::make_unique<FilterChain>(owner, std::move(filters));
  }

  RecordingOwner owner;
  std::vector<std::string> trace;
  std::vector<std::unique_ptr<StreamFilter>> filters;
  TestHeaderMap headers;
};

TEST(FilterChainTest, ContinuesThroughEveryFilterInOrder) {
  ChainFixture f;
  f.add("a", ScriptedFilter::Action::kContinue);
  f.add("b", ScriptedFilter::Action::kContinue);
  auto chain = f.build();

  chain->runRequestHeaders(f.headers);

  EXPECT_EQ(f.owner.continued, 1);
  EXPECT_TRUE(f.owner.replies.empty());
  EXPECT_EQ(f.trace, (std::vector<std::string>{"a:request", "b:request"}));
}

TEST(FilterChainTest, RouteToClusterReachesOwnerUntilDecided) {
  ChainFixture f;
  ScriptedFilter* queue = f.add("queue", ScriptedFilter::Action::kHold);
  auto chain = f.build();
  chain->runRequestHeaders(f.headers);

  EXPECT_TRUE(queue->exposedCallbacks().routeToCluster(2));
  EXPECT_EQ(f.owner.routed_to, std::vector<size_t>{2});

  f.owner.clock.advance(100ms);
  ASSERT_EQ(f.owner.continued, 1);
  EXPECT_FALSE(queue->exposedCallbacks().routeToCluster(3));
  EXPECT_EQ(f.owner.routed_to, std::vector<size_t>{2});
}

TEST(FilterChainTest, ResponseRunsInReverseOrder) {
  ChainFixture f;
  f.add("a", ScriptedFilter::Action::kContinue);
  f.add("b", ScriptedFilter::Action::kContinue);
  auto chain = f.build();
  chain->runRequestHeaders(f.headers);
  f.trace.clear();

  chain->runResponseHeaders(200, f.headers);

  EXPECT_EQ(f.trace, (std::vector<std::string>{"b:response", "a:response"}));
}

TEST(FilterChainTest, LocalReplyStopsLaterFilters) {
  ChainFixture f;
  f.add("a", ScriptedFilter::Action::kReply);
  f.add("b", ScriptedFilter::Action::kContinue);
  auto chain = f.build();

  chain->runRequestHeaders(f.headers);

  EXPECT_EQ(f.owner.continued, 0);
  ASSERT_EQ(f.owner.replies.size(), 1u);
  EXPECT_EQ(f.owner.replies[0], LocalReplyReason::kNoHealthyEndpoint);
  EXPECT_EQ(f.trace, (std::vector<std::string>{"a:request"}));
}

TEST(FilterChainTest, HeldRequestResumesOnTimer) {
  ChainFixture f;
  f.add("queue", ScriptedFilter::Action::kHold);
  f.add("b", ScriptedFilter::Action::kContinue);
  auto chain = f.build();

  chain->runRequestHeaders(f.headers);
  EXPECT_TRUE(chain->held());
  EXPECT_EQ(f.owner.continued, 0);

  f.owner.clock.advance(99ms);
  EXPECT_EQ(f.owner.continued, 0);

  f.owner.clock.advance(1ms);
  EXPECT_FALSE(chain->held());
  EXPECT_EQ(f.owner.continued, 1);
  EXPECT_EQ(f.trace, (std::vector<std::string>{"queue:request", "b:request"}));
}

TEST(FilterChainTest, ClientGoneWhileHeldEndsHold) {
  ChainFixture f;
  ScriptedFilter* queue = f.add("queue", ScriptedFilter::Action::kHold);
  auto chain = f.build();
  chain->runRequestHeaders(f.headers);
  ASSERT_TRUE(chain->held());

  // The stream detects the client disconnect and ends the chain.
  chain->endStream(StreamEnd::kDownstreamClosed);

  ASSERT_EQ(queue->ends.size(), 1u);
  EXPECT_EQ(queue->ends[0], StreamEnd::kDownstreamClosed);
  EXPECT_FALSE(chain->held());

  // The hold's timer was released with the place: nothing resumes later.
  f.owner.clock.advance(1s);
  EXPECT_EQ(f.owner.continued, 0);
  EXPECT_TRUE(f.owner.replies.empty());
}

TEST(FilterChainTest, EndStreamRunsOnce) {
  ChainFixture f;
  ScriptedFilter* a = f.add("a", ScriptedFilter::Action::kContinue);
  auto chain = f.build();
  chain->runRequestHeaders(f.headers);

  chain->endStream(StreamEnd::kCompleted);
  chain->endStream(StreamEnd::kDownstreamClosed);

  ASSERT_EQ(a->ends.size(), 1u);
  EXPECT_EQ(a->ends[0], StreamEnd::kCompleted);
}

TEST(FilterChainTest, DestroyedChainEndsStream) {
  ChainFixture f;
  f.add("a", ScriptedFilter::Action::kHold);
  auto chain = f.build();
  chain->runRequestHeaders(f.headers);

  chain.reset();

  // The filters are gone with the chain; the trace outlives them.
  EXPECT_EQ(f.trace.back(), "a:end");
}

TEST(FilterChainTest, ReplyAfterContinueIsIgnored) {
  ChainFixture f;
  ScriptedFilter* queue = f.add("queue", ScriptedFilter::Action::kHold);
  auto chain = f.build();
  chain->runRequestHeaders(f.headers);

  queue->exposedCallbacks().continueRequest();
  // A late decision from a filter that already let the request go must change nothing.
  queue->exposedCallbacks().sendLocalReply(LocalReplyReason::kNoHealthyEndpoint);
  queue->exposedCallbacks().continueRequest();

  EXPECT_EQ(f.owner.continued, 1);
  EXPECT_TRUE(f.owner.replies.empty());
}

TEST(HeaderMutationTest, RemovesThenAdds) {
  config::HeaderMutation request;
  request.remove = {"x-drop", "x-replace"};
  request.add = {{"x-replace", "new"}, {"x-added", "yes"}};
  filters::HeaderMutationFactory factory(request, {});
  std::unique_ptr<StreamFilter> filter = factory.createFilter();
  TestHeaderMap headers{{"x-drop", "1"}, {"X-Replace", "old"}, {"x-keep", "k"}};

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kContinue);

  EXPECT_FALSE(headers.get("x-drop").has_value());
  EXPECT_EQ(headers.get("x-replace"), "new");
  EXPECT_EQ(headers.get("x-added"), "yes");
  EXPECT_EQ(headers.get("x-keep"), "k");
}

TEST(HeaderMutationTest, AddReplacesEveryExistingValue) {
  config::HeaderMutation request;
  request.add = {{"x-role", "trusted"}};
  filters::HeaderMutationFactory factory(request, {});
  std::unique_ptr<StreamFilter> filter = factory.createFilter();
  TestHeaderMap headers{{"x-role", "admin"}, {"x-role", "root"}};

  filter->onRequestHeaders(headers);

  EXPECT_EQ(headers.size(), 1u);
  EXPECT_EQ(headers.get("x-role"), "trusted");
}

TEST(HeaderMutationTest, MutatesResponseHeaders) {
  config::HeaderMutation response;
  response.remove = {"server"};
  response.add = {{"x-served-by", "deferd"}};
  filters::HeaderMutationFactory factory({}, response);
  std::unique_ptr<StreamFilter> filter = factory.createFilter();
  TestHeaderMap headers{{"Server", "nginx"}};

  filter->onResponseHeaders(200, headers);

  EXPECT_FALSE(headers.get("server").has_value());
  EXPECT_EQ(headers.get("x-served-by"), "deferd");
}

} // namespace
} // namespace deferd
