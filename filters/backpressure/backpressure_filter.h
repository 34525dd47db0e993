#pragma once

// The backpressure filter: admits each request to its route's cluster through the cluster's
// admission controller, makes it wait in the priority queue when the cluster is at its limit,
// and exchanges load signals with the sidecars on the other side.
//
// Request path:
//   1. Urgency: the effective urgency the priority filter put in RequestInfo, else normal (3).
//      Deadline: grpc-timeout, else the policy's deadline_header, counted from now.
//   2. admit(): admitted -> continue with a slot; queued -> hold the request; shed -> 503
//      load-shed; expired -> 504 deadline-exceeded. A policy in shadow mode, or a request
//      outside its rollout, takes the shadow path: the decision is counted, the request always
//      continues.
//   3. While queued: the controller decides on whichever worker releases a slot or polls, and
//      the decision comes back to this request's worker through Dispatcher::post. A timer on
//      the controller's next timeout polls it, so max_wait and deadlines end on time even when
//      nothing is released. A client that disconnects ends the stream, which cancels the wait
//      and frees the place at once.
//   4. Boost: with the policy's priority boost.after set, a request still waiting after it
//      raises the inheritance entries of the slot holders that are less urgent to its own
//      urgency, so their sub-calls travel faster and they release the slot sooner. A holder's
//      boost ends when its inbound request ends, since the table entry is then released.
//
// Response path:
//   inbound, emit_signal  every response, local replies included, carries the cluster's load in
//                         `endpoint-load-metrics` (see load_report.h), so callers can defer.
//   outbound, signal      the header of the endpoint that served it updates its smoothed load;
//                         a change of its deferring state is mirrored into the SharedEndpoint
//                         that every worker's balancer reads, and when every endpoint of the
//                         cluster defers, the cluster's limit is lowered. The header is removed
//                         before the response reaches the local app.
//
// Stream end: the slot is released with one sample for the limiter: the latency from
// admission to the response headers, and whether it was a drop (a timeout, 5xx, or no
// response). A request that never reached the upstream releases its slot without a sample.
//
// Threading: a filter belongs to one stream on one worker. BackpressureShared is shared by all
// workers for one (policy, cluster) pair and outlives config reloads while its options stay
// the same; every member locks itself or is an atomic.

#include <prometheus/counter.h>
#include <prometheus/histogram.h>

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "config/config.h"
#include "filters/backpressure/admission_controller.h"
#include "filters/backpressure/signal_table.h"
#include "filters/common/endpoint.h"
#include "filters/filter.h"
#include "filters/priority/inheritance_table.h"

namespace deferd::filters::backpressure {

// Slots for per-endpoint signals. An endpoint whose id is past it has no signal.
inline constexpr size_t kMaxSignalEndpoints = 256;

// The inbound requests that hold a slot, with their correlation ids, for boosts.
class SlotHolders {
public:
  struct Holder {
    std::string correlation_id;
    int urgency = 3;
  };
  using Handle = std::list<Holder>::iterator;

  Handle add(std::string correlation_id, int urgency);
  void remove(Handle handle);

  // Raises every holder less urgent than `urgency` in the table. Returns how many were raised.
  size_t boostLessUrgent(int urgency, priority::InheritanceTable& table);

private:
  std::mutex mutex_;
  std::list<Holder> holders_;
};

// Everything the filters of one (policy, cluster) pair share.
struct BackpressureShared {
  std::string policy;
  std::string cluster;
  config::BackpressurePolicy options;
  LimiterOptions limiter_options; // what the controller was built from, for classifyDrop

  std::unique_ptr<AdmissionController> controller;
  std::unique_ptr<SignalTable> signals; // outbound with a signal section only
  // Whether the controller's limit is scaled because every endpoint of the cluster defers.
  // Written under all_deferring_mutex, read without it.
  std::atomic<bool> all_deferring{false};
  std::mutex all_deferring_mutex;
  SlotHolders holders;

  // Set by the metrics registry.
  prometheus::Histogram* queue_wait = nullptr;
  prometheus::Counter* boosts = nullptr;
};

// Scales the controller's limit when every one of the cluster's `known` endpoints defers, and
// restores it when one no longer does. Called on each load report and once a second, since a
// signal that goes stale stops deferring without a report.
void recheckAllDeferring(BackpressureShared& shared, size_t known, MonotonicTime now);

// Builds the controller and the signal table of a pair from its policy.
std::shared_ptr<BackpressureShared>
makeBackpressureShared(std::string policy, std::string cluster,
                       const config::BackpressurePolicy& options);

struct BackpressureRouteConfig {
  std::shared_ptr<BackpressureShared> shared;
  config::Direction direction = config::Direction::kInbound;
  bool enforce = true;  // mode enforce; shadow and rollout are decided per request
  double rollout = 1.0; // share of requests enforced, 0..1
  // For boosts: the process's inheritance table and the wait after which holders are raised.
  std::shared_ptr<priority::InheritanceTable> table;
  std::optional<std::chrono::milliseconds> boost_after;
  // For the all-deferring check: every endpoint the cluster has had.
  EndpointRegistry* endpoints = nullptr;
};

class BackpressureFilter : public StreamFilter {
public:
  explicit BackpressureFilter(const BackpressureRouteConfig& config);
  ~BackpressureFilter() override;

  FilterStatus onRequestHeaders(HeaderMap& headers) override;
  void onResponseHeaders(int status, HeaderMap& headers) override;
  void onStreamEnd(StreamEnd end) override;

private:
  // State that a pending wait callback may touch: the filter, while it exists.
  struct WaitState {
    BackpressureFilter* filter = nullptr;
  };

  std::optional<MonotonicTime> deadlineOf(const HeaderMap& headers, MonotonicTime now) const;
  void onAdmitted(AdmissionSlot slot, MonotonicTime now);
  void onWaitEnd(WaitOutcome outcome);
  void armPollTimer();
  void onBoostTimer();
  void readSignal(HeaderMap& headers);
  void endWait();

  const BackpressureRouteConfig& config_;
  BackpressureShared& shared_;
  int urgency_ = 3;

  AdmissionSlot slot_;
  QueuedRequest queued_;
  std::shared_ptr<WaitState> wait_;
  std::unique_ptr<Timer> poll_timer_;
  std::unique_ptr<Timer> boost_timer_;
  std::optional<SlotHolders::Handle> holder_;

  MonotonicTime queued_at_{};
  MonotonicTime admitted_at_{};
  std::optional<MonotonicTime> response_at_;
  int status_ = 0;
};

class BackpressureFilterFactory : public FilterFactory {
public:
  explicit BackpressureFilterFactory(BackpressureRouteConfig config) : config_(std::move(config)) {}

  std::unique_ptr<StreamFilter> createFilter() const override {
    return std::make_unique<BackpressureFilter>(config_);
  }

private:
  BackpressureRouteConfig config_;
};

} // namespace deferd::filters::backpressure
