#pragma once

// Test doubles for the filter interface: a header map over a plain vector and a dispatcher
// whose clock only moves when a test advances it.

#include <algorithm>
#include <cctype>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "filters/filter.h"

namespace deferd::testing {

class TestHeaderMap : public HeaderMap {
public:
  TestHeaderMap() = default;
  TestHeaderMap(std::initializer_list<std::pair<std::string, std::string>> fields)
      : fields_(fields) {}

  std::optional<std::string_view> get(std::string_view name) const override {
    for (const auto& [key, value] : fields_) {
      if (same(key, name)) {
        return std::string_view(value);
      }
    }
    return std::nullopt;
  }
  void set(std::string_view name, std::string_view value) override {
    remove(name);
    append(name, value);
  }
  void append(std::string_view name, std::string_view value) override {
    fields_.emplace_back(std::string(name), std::string(value));
  }
  void remove(std::string_view name) override {
    std::erase_if(fields_, [&](const auto& field) { return same(field.first, name); });
  }
  void
  forEach(const std::function<void(std::string_view, std::string_view)>& visit) const override {
    for (const auto& [key, value] : fields_) {
      visit(key, value);
    }
  }
  size_t size() const { return fields_.size(); }

private:
  static bool same(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
             return std::tolower(static_cast<unsigned char>(x)) ==
                    std::tolower(static_cast<unsigned char>(y));
           });
  }

  std::vector<std::pair<std::string, std::string>> fields_;
};

// A dispatcher with a manual clock: advance() fires every timer that has come due, in order.
class FakeDispatcher : public Dispatcher {
public:
  MonotonicTime now() const override { return now_; }

  std::unique_ptr<Timer> createTimer(std::function<void()> callback) override {
    auto timer = std::make_unique<FakeTimer>(*this, std::move(callback));
    timers_.push_back(timer.get());
    return timer;
  }

  void post(std::function<void()> callback) override { posted_.push_back(std::move(callback)); }

  // Runs the callbacks posted so far, and those they post, in order.
  void runPosted() {
    while (!posted_.empty()) {
      std::function<void()> callback = std::move(posted_.front());
      posted_.erase(posted_.begin());
      callback();
    }
  }

  void advance(std::chrono::milliseconds step) {
    runPosted();
    now_ += step;
    for (bool fired = true; fired;) {
      fired = false;
      for (FakeTimer* timer : timers_) {
        if (timer->enabled() && timer->due_ <= now_) {
          timer->enabled_ = false;
          timer->callback_();
          fired = true;
          break; // the callback may have created or destroyed timers
        }
      }
    }
  }

private:
  class FakeTimer : public Timer {
  public:
    FakeTimer(FakeDispatcher& dispatcher, std::function<void()> callback)
        : dispatcher_(dispatcher), callback_(std::move(callback)) {}
    ~FakeTimer() override { std::erase(dispatcher_.timers_, this); }

    void enableTimer(std::chrono::milliseconds delay) override {
      due_ = dispatcher_.now_ + delay;
      enabled_ = true;
    }
    void disableTimer() override { enabled_ = false; }
    bool enabled() const override { return enabled_; }

    FakeDispatcher& dispatcher_;
    std::function<void()> callback_;
    MonotonicTime due_{};
    bool enabled_ = false;
  };

  MonotonicTime now_{std::chrono::seconds(1000)};
  std::vector<FakeTimer*> timers_;
  std::vector<std::function<void()>> posted_;
};

// Filter callbacks that record what a filter asked for, for tests that drive one filter.
class FakeFilterCallbacks : public FilterCallbacks {
public:
  void continueRequest() override { ++continued; }
  void sendLocalReply(LocalReplyReason reason) override { replies.push_back(reason); }
  RequestInfo& requestInfo() override { return info; }
  Dispatcher& dispatcher() override { return fake_dispatcher; }
  bool routeToCluster(size_t cluster_index) override {
    routed_to = cluster_index;
    return true;
  }

  RequestInfo info;
  FakeDispatcher fake_dispatcher;
  int continued = 0;
  std::vector<LocalReplyReason> replies;
  std::optional<size_t> routed_to; // the last routeToCluster() target
};

} // namespace deferd::testing
