#include "proxy/worker.h"

#include <boost/asio/post.hpp>

#include <spdlog/spdlog.h>

#include <cstring>
#include <sstream>

namespace deferd {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

constexpr std::chrono::milliseconds kTickInterval{50};
constexpr std::chrono::seconds kIdleSweepInterval{1};
constexpr size_t kMaxFreeBuffers = 64;
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};

class AsioTimer : public Timer {
public:
  AsioTimer(asio::io_context& io, std::function<void()> callback)
      : timer_(io), callback_(std::make_shared<std::function<void()>>(std::move(callback))) {}

  ~AsioTimer() override {
    *alive_ = false;
    disableTimer();
  }

  void enableTimer(std::chrono::milliseconds delay) override {
    timer_.expires_after(delay);
    enabled_ = true;
    generation_++;
    // A completion already queued when the timer is disabled or destroyed must not run the
    // callback: `alive` and the generation tell it so without touching a destroyed timer.
    auto callback = callback_;
    auto generation = generation_;
    auto* self = this;
    auto alive = alive_;
    timer_.async_wait([callback, generation, self, alive](const boost::system::error_code& ec) {
      if (ec || !*alive || self->generation_ != generation) {
        return;
      }
      self->enabled_ = false;
      (*callback)();
    });
  }

  void disableTimer() override {
    enabled_ = false;
    generation_++;
    timer_.cancel();
  }

  bool enabled() const override { return enabled_; }

private:
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  asio::steady_timer timer_;
  std::shared_ptr<std::function<void()>> callback_;
  uint64_t generation_ = 0;
  bool enabled_ = false;
};

} // namespace

class AsioDispatcher : public Dispatcher {
public:
  explicit AsioDispatcher(asio::io_context& io) : io_(io) {}

  MonotonicTime now() const override { return std::chrono::steady_clock::now(); }

  std::unique_ptr<Timer> createTimer(std::function<void()> callback) override {
    return std::make_unique<AsioTimer>(io_, std::move(callback));
  }

  void post(std::function<void()> callback) override { asio::post(io_, std::move(callback)); }

private:
  asio::io_context& io_;
};

UpstreamEndpoint* WorkerCluster::pick(config::LbPolicy policy, LbRandom& random,
                                      const UpstreamEndpoint* exclude) {
  size_t count = endpoints.size();
  if (count == 0) {
    return nullptr;
  }
  if (count == 1) {
    return endpoints[0].get();
  }

  // Small clusters are the rule; copying their state is cheaper than indirection. Endpoints
  // that defer or are ejected are skipped while any other remains.
  std::vector<uint32_t> in_flight(count);
  std::vector<uint8_t> available(count);
  MonotonicTime now = std::chrono::steady_clock::now();
  bool any = false;
  for (size_t i = 0; i < count; i++) {
    in_flight[i] = endpoints[i]->in_flight;
    available[i] = endpoints[i].get() != exclude && !endpoints[i]->shared->avoid(now);
    any = any || available[i];
  }
  if (!any) {
    for (size_t i = 0; i < count; i++) {
      available[i] = endpoints[i].get() != exclude;
    }
  }

  std::optional<size_t> chosen = policy == config::LbPolicy::kLeastRequest
                                     ? pickLeastRequest(in_flight, available, random)
                                     : pickRoundRobin(available, round_robin_cursor);
  return chosen ? endpoints[*chosen].get() : nullptr;
}

Worker::Worker(size_t index, size_t worker_count)
    : index_(index), worker_count_(worker_count), io_(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO),
      ticker_(io_), dispatcher_(std::make_unique<AsioDispatcher>(io_)),
      random_(static_cast<LbRandom::result_type>(std::random_device{}() + index)),
      id_state_((static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()) {}

Worker::~Worker() {
  // Queued handlers own sessions whose destructors call back into this worker, so they must
  // run while every member is still alive: close everything, then let the handlers finish.
  boost::system::error_code ignored;
  ticker_.cancel();
  for (auto& slot : listeners_) {
    slot->acceptor->close(ignored);
  }
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    Session& session = *it++;
    session.abort();
  }
  clusters_.clear();
  io_.restart();
  io_.run_for(std::chrono::seconds(2));
}

void Worker::start() {
  tick();
  thread_ = std::thread([this] {
    io_.run();
    if (access_log_) {
      access_log_->flush();
    }
  });
}

void Worker::join() {
  if (thread_.joinable()) {
    thread_.join();
  }
}

Dispatcher& Worker::dispatcher() { return *dispatcher_; }

void Worker::setAccessLog(std::shared_ptr<AccessLogFile> file) {
  if (access_log_) {
    access_log_->flush();
  }
  access_log_ = file ? std::make_unique<AccessLog>(std::move(file)) : nullptr;
}

void Worker::applySnapshot(std::shared_ptr<const Snapshot> snapshot,
                           std::vector<std::unique_ptr<Acceptor>> acceptors) {
  snapshot_ = std::move(snapshot);

  // Keep acceptors whose listener survived, open the new ones, close the rest.
  std::vector<std::shared_ptr<ListenerSlot>> next;
  for (size_t i = 0; i < snapshot_->listeners.size(); i++) {
    const config::Listener& listener = *snapshot_->listeners[i].config;
    std::string key = listener.name + "@" + listener.address.toString();
    std::shared_ptr<ListenerSlot> slot;
    for (auto& current : listeners_) {
      if (current && current->key == key) {
        slot = std::move(current);
      }
    }
    if (!slot) {
      if (i >= acceptors.size() || !acceptors[i]) {
        spdlog::error("worker {}: no acceptor for new listener {}", index_, listener.name);
        continue;
      }
      slot = std::make_shared<ListenerSlot>(io_);
      slot->key = key;
      slot->acceptor = std::move(acceptors[i]);
      slot->listener_index = i;
      next.push_back(std::move(slot));
      if (!draining_) {
        accept(next.back());
      }
      continue;
    }
    slot->listener_index = i;
    next.push_back(std::move(slot));
  }
  for (auto& stale : listeners_) {
    if (stale && stale->acceptor) {
      boost::system::error_code ignored;
      stale->acceptor->close(ignored);
      stale->retry_timer.cancel();
    }
  }
  listeners_ = std::move(next);
  rebuildClusters();
}

void Worker::accept(std::shared_ptr<ListenerSlot> slot) {
  slot->acceptor->async_accept([this, slot](const boost::system::error_code& ec, Socket socket) {
    if (ec == asio::error::operation_aborted || !slot->acceptor->is_open()) {
      return;
    }
    if (ec) {
      // Out of file descriptors, most likely. Accepting again at once would spin on the same
      // error, so pause; the first failure of a run is logged, later ones every 100th.
      if (slot->failed_accepts++ % 100 == 0) {
        spdlog::warn("worker {}: accept on {} failed: {}; retrying in {} ms ({} failures)", index_,
                     slot->key, ec.message(), kAcceptRetryDelay.count(), slot->failed_accepts);
      }
      slot->retry_timer.expires_after(kAcceptRetryDelay);
      slot->retry_timer.async_wait([this, slot](const boost::system::error_code& timer_ec) {
        if (!timer_ec && slot->acceptor->is_open()) {
          accept(slot);
        }
      });
      return;
    }
    slot->failed_accepts = 0;
    const ListenerRuntime& listener = snapshot_->listeners[slot->listener_index];
    if (listener.stats->connections_active->Value() >= listener.config->limits.max_connections) {
      // Over the listener's connection limit: close at once and count it.
      boost::system::error_code ignored;
      socket.close(ignored);
      listener.stats->connections_rejected->Increment();
    } else {
      startDownstreamConnection(*this, std::move(socket), slot->listener_index);
    }
    accept(slot);
  });
}

WorkerCluster* Worker::cluster(const std::string& name) {
  auto found = clusters_.find(name);
  return found == clusters_.end() ? nullptr : &found->second;
}

void Worker::rebuildClusters() {
  std::map<std::string, WorkerCluster> next;
  for (const ClusterRuntime& runtime : snapshot_->clusters) {
    const config::Cluster& config = *runtime.config;
    auto current = clusters_.find(config.name);
    if (current != clusters_.end() && current->second.configured == config.endpoints) {
      current->second.config = &config;
      next.emplace(config.name, std::move(current->second));
      continue;
    }

    WorkerCluster cluster;
    cluster.config = &config;
    cluster.configured = config.endpoints;
    uint32_t per_worker_limit =
        static_cast<uint32_t>((config.max_connections + worker_count_ - 1) / worker_count_);
    for (const config::Address& address : config.endpoints) {
      std::vector<tcp::endpoint> resolved;
      boost::system::error_code ec;
      auto ip = asio::ip::make_address(address.host, ec);
      if (!ec) {
        resolved.emplace_back(ip, address.port);
      } else {
        auto known = resolved_.find(address.toString());
        if (known != resolved_.end()) {
          resolved = known->second;
        }
      }
      for (const tcp::endpoint& endpoint : resolved) {
        cluster.endpoints.push_back(makeEndpoint(config.name, endpoint, address.toString(),
                                                 runtime.stats, per_worker_limit));
      }
    }
    next.emplace(config.name, std::move(cluster));
  }
  clusters_ = std::move(next);
}

std::shared_ptr<UpstreamEndpoint>
Worker::makeEndpoint(const std::string& cluster_name, const tcp::endpoint& address,
                     const std::string& label, ClusterStats* stats, uint32_t max_connections) {
  auto endpoint = std::make_shared<UpstreamEndpoint>(io_, address, label, stats, max_connections);
  std::ostringstream text;
  text << address;
  endpoint->shared = snapshot_->state->endpoints().get(cluster_name, text.str());
  return endpoint;
}

void Worker::updateEndpoints(const std::string& cluster_name, const config::Address& configured,
                             std::vector<tcp::endpoint> resolved) {
  resolved_[configured.toString()] = resolved;
  WorkerCluster* cluster = this->cluster(cluster_name);
  if (!cluster || !snapshot_) {
    return;
  }
  const ClusterRuntime* runtime = nullptr;
  for (const ClusterRuntime& candidate : snapshot_->clusters) {
    if (candidate.config->name == cluster_name) {
      runtime = &candidate;
    }
  }
  if (!runtime) {
    return;
  }

  // Keep endpoints (and their pools) whose address is still resolved; add the new ones.
  std::string label = configured.toString();
  std::vector<std::shared_ptr<UpstreamEndpoint>> next;
  for (auto& endpoint : cluster->endpoints) {
    bool still_resolved = false;
    for (const tcp::endpoint& address : resolved) {
      still_resolved = still_resolved || endpoint->address() == address;
    }
    if (endpoint->label() != label || still_resolved) {
      next.push_back(endpoint);
    } else {
      endpoint->closeAllIdle();
    }
  }
  uint32_t per_worker_limit =
      static_cast<uint32_t>((runtime->config->max_connections + worker_count_ - 1) / worker_count_);
  for (const tcp::endpoint& address : resolved) {
    bool known = false;
    for (auto& endpoint : next) {
      known = known || (endpoint->label() == label && endpoint->address() == address);
    }
    if (!known) {
      next.push_back(makeEndpoint(cluster_name, address, label, runtime->stats, per_worker_limit));
    }
  }
  cluster->endpoints = std::move(next);
}

void Worker::tick() {
  MonotonicTime now = std::chrono::steady_clock::now();
  // onTick() may close a session and unlink it from the list: step past it first.
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    Session& session = *it++;
    session.onTick(now);
  }

  if (now - last_idle_sweep_ >= kIdleSweepInterval) {
    last_idle_sweep_ = now;
    if (snapshot_) {
      for (const ClusterRuntime& runtime : snapshot_->clusters) {
        WorkerCluster* cluster = this->cluster(runtime.config->name);
        for (auto& endpoint :
             cluster ? cluster->endpoints : std::vector<std::shared_ptr<UpstreamEndpoint>>{}) {
          endpoint->closeIdle(now, runtime.config->pool_idle_timeout);
        }
      }
    }
    if (access_log_) {
      access_log_->flush();
    }
  }

  ticker_.expires_after(kTickInterval);
  ticker_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) {
      tick();
    }
  });
}

void Worker::drain(std::function<void()> drained) {
  draining_ = true;
  drained_ = std::move(drained);
  for (auto& slot : listeners_) {
    boost::system::error_code ignored;
    slot->acceptor->close(ignored);
  }
  for (auto& [name, cluster] : clusters_) {
    for (auto& endpoint : cluster.endpoints) {
      endpoint->closeAllIdle();
    }
  }

  // onDrain() may close a session and unlink it from the list: step past it first.
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    Session& session = *it++;
    session.onDrain();
  }
  if (session_count_ == 0 && drained_) {
    auto callback = std::move(drained_);
    drained_ = nullptr;
    callback();
  }
}

void Worker::onSessionClosed() {
  session_count_--;
  if (draining_ && session_count_ == 0 && drained_) {
    auto callback = std::move(drained_);
    drained_ = nullptr;
    callback();
  }
}

std::unique_ptr<char[]> Worker::takeBuffer() {
  if (free_buffers_.empty()) {
    return std::make_unique<char[]>(kBodyBufferSize);
  }
  std::unique_ptr<char[]> buffer = std::move(free_buffers_.back());
  free_buffers_.pop_back();
  return buffer;
}

void Worker::returnBuffer(std::unique_ptr<char[]> buffer) {
  if (buffer && free_buffers_.size() < kMaxFreeBuffers) {
    free_buffers_.push_back(std::move(buffer));
  }
}

void Worker::warnUpstreamFailure(std::string_view cluster, std::string_view endpoint,
                                 std::string_view cause) {
  auto now = std::chrono::steady_clock::now();
  if (now - last_upstream_warning_ < std::chrono::seconds(1)) {
    unlogged_upstream_failures_++;
    return;
  }
  last_upstream_warning_ = now;
  spdlog::warn("cluster {}: upstream {} failed: {} ({} more failures on this worker since the "
               "last message)",
               cluster, endpoint, cause, unlogged_upstream_failures_);
  unlogged_upstream_failures_ = 0;
}

std::string Worker::generateRequestId() {
  // splitmix64: cheap, and every 64-bit state gives a distinct output, so ids from one worker
  // never repeat within 2^64 calls. Not for anything secret.
  auto next = [this] {
    uint64_t z = (id_state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  uint64_t high = next();
  uint64_t low = next();
  // Version 4 and the RFC 4122 variant bits.
  high = (high & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;
  low = (low & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;

  // Written by hand: snprintf cost more than the rest of the request's header handling.
  static constexpr char kHex[] = "0123456789abcdef";
  char digits[32];
  for (int i = 0; i < 16; i++) {
    int shift = 60 - 4 * i;
    digits[i] = kHex[(high >> shift) & 0xf];
    digits[16 + i] = kHex[(low >> shift) & 0xf];
  }
  std::string id(36, '-');
  std::memcpy(&id[0], digits, 8);
  std::memcpy(&id[9], digits + 8, 4);
  std::memcpy(&id[14], digits + 12, 4);
  std::memcpy(&id[19], digits + 16, 4);
  std::memcpy(&id[24], digits + 20, 12);
  return id;
}

} // namespace deferd
