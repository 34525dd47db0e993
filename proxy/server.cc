#include "proxy/server.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/socket_base.hpp>
#include <boost/asio/steady_timer.hpp>

#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <map>
#include <optional>
#include <set>
#include <thread>

#include "config/loader.h"
#include "proxy/admin.h"
#include "proxy/config_watch.h"
#include "proxy/metrics.h"
#include "proxy/runtime_switches.h"
#include "proxy/snapshot.h"
#include "proxy/worker.h"

namespace deferd {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

constexpr int kListenBacklog = 1024;

// Opens a listening socket with SO_REUSEPORT so every worker can bind the same address.
std::unique_ptr<Acceptor> bindAcceptor(asio::io_context& io, const config::Address& address,
                                       std::string* error) {
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(address.host, ec);
  if (ec) {
    *error = "invalid listener address " + address.toString() + ": " + ec.message();
    return nullptr;
  }
  tcp::endpoint endpoint(ip, address.port);
  auto acceptor = std::make_unique<Acceptor>(io);
  acceptor->open(endpoint.protocol(), ec);
  if (!ec) {
    acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  }
  if (!ec) {
    int one = 1;
    if (::setsockopt(acceptor->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
      ec.assign(errno, boost::system::system_category());
    }
  }
  if (!ec) {
    acceptor->bind(endpoint, ec);
  }
  if (!ec) {
    acceptor->listen(kListenBacklog, ec);
  }
  if (ec) {
    *error = "cannot listen on " + address.toString() + ": " + ec.message();
    return nullptr;
  }
  return acceptor;
}

spdlog::level::level_enum parseLevel(const std::string& level) {
  return spdlog::level::from_str(level);
}

std::string listenerKey(const config::Listener& listener) {
  return listener.name + "@" + listener.address.toString();
}

} // namespace

class Server::Impl {
public:
  Impl(std::string config_path, std::string log_level)
      : config_path_(std::move(config_path)), log_level_(std::move(log_level)), signals_(io_),
        resolve_timer_(io_), drain_timer_(io_) {}

  int run() {
    std::string error;
    std::optional<ConfigFiles> bytes = readConfigFiles(config_path_, &error);
    if (!bytes) {
      spdlog::error("not starting: {}", error);
      return 1;
    }
    config::LoadResult loaded = config::loadSources(bytes->sources);
    if (!loaded.ok()) {
      for (const config::Diagnostic& diagnostic : loaded.diagnostics) {
        spdlog::error("{}", diagnostic.toString());
      }
      spdlog::error("not starting: {} is invalid", config_path_);
      return 1;
    }
    config_ = loaded.config;
    running_hash_ = bytes->hash;
    last_read_hash_ = bytes->hash;
    metrics_.setConfigHash(bytes->hash);
    spdlog::set_level(parseLevel(log_level_.empty() ? config_->log.level : log_level_));

    size_t worker_count = config_->workers;
    if (worker_count == 0) {
      worker_count = std::max(1u, std::thread::hardware_concurrency());
    }
    for (size_t i = 0; i < worker_count; i++) {
      workers_.push_back(std::make_unique<Worker>(i, worker_count));
    }

    if (!openAccessLog(*config_, &error)) {
      spdlog::error("not starting: {}", error);
      return 1;
    }
    if (!loadAdminToken(*config_, &admin_token_, &error)) {
      spdlog::error("not starting: {}", error);
      return 1;
    }
    resolveAllNow(*config_);
    if (!applyConfig(config_, &error)) {
      spdlog::error("not starting: {}", error);
      return 1;
    }

    AdminHandlers handlers;
    handlers.metrics = [this] { return metrics_.serialize(); };
    handlers.ready = [this] { return ready_.load(); };
    handlers.config_yaml = [this] {
      return switches_.describe(*config_) + config::toYaml(*snapshot_->config);
    };
    handlers.set_policy_mode = [this](const std::string& policy, const std::string& body,
                                      const std::string& peer) {
      return setPolicyMode(policy, body, peer);
    };
    handlers.token = [this] { return admin_token_; };
    handlers.unauthorized = [this] { metrics_.recordAdminUnauthorized(); };
    admin_ = std::make_unique<AdminServer>(io_, std::move(handlers));
    if (!admin_->start(config_->admin.address, &error)) {
      spdlog::error("not starting: admin listener: {}", error);
      return 1;
    }
    admin_address_ = config_->admin.address.toString();
    if (!admin_token_ && !isLoopbackHost(config_->admin.address.host)) {
      spdlog::warn("admin listener on {} is not on loopback and admin.token_file is not set: "
                   "runtime switches are disabled",
                   admin_address_);
    }

    for (auto& worker : workers_) {
      worker->start();
    }
    ready_ = true;
    metrics_.setReady(true);
    spdlog::info("deferd started: {} workers, {} listeners, admin on {}", workers_.size(),
                 config_->listeners.size(), config_->admin.address.toString());
    for (const config::Listener& listener : config_->listeners) {
      spdlog::info("listener {} on {} ({} routes)", listener.name, listener.address.toString(),
                   listener.routes.size());
    }

    waitForSignals();
    scheduleResolve();
    watch_ = std::make_unique<ConfigWatch>(io_, config_path_, ConfigWatchOptions{},
                                           [this] { reload(ReloadTrigger::kWatch); });
    watch_->setTargets(watchTargets(bytes->sources));
    watch_->start();
    io_.run();

    for (auto& worker : workers_) {
      worker->io().stop();
    }
    for (auto& worker : workers_) {
      worker->join();
    }
    // Each worker closes what is still open and runs the last handlers in its destructor.
    workers_.clear();
    spdlog::info("deferd stopped");
    return 0;
  }

private:
  bool openAccessLog(const config::Config& config, std::string* error) {
    std::shared_ptr<AccessLogFile> file;
    if (config.access_log.enabled) {
      file = AccessLog::open(config.access_log.path, error, metrics_.accessLogDroppedBytes());
      if (!file) {
        return false;
      }
    }
    // Writers are swapped on the workers' threads; before start() the post simply waits.
    for (auto& worker : workers_) {
      asio::post(worker->io(), [w = worker.get(), file] { w->setAccessLog(file); });
    }
    return true;
  }

  // Reads admin.token_file into `token`, or clears it when the config has none.
  static bool loadAdminToken(const config::Config& config, std::optional<std::string>* token,
                             std::string* error) {
    if (!config.admin.token_file) {
      token->reset();
      return true;
    }
    std::optional<std::string> read = readAdminToken(*config.admin.token_file, error);
    if (!read) {
      return false;
    }
    *token = std::move(read);
    return true;
  }

  static bool isLoopbackHost(const std::string& host) {
    boost::system::error_code ec;
    auto address = asio::ip::make_address(host, ec);
    return !ec && address.is_loopback();
  }

  // POST /policies/NAME/mode: records the switch and, when the effective mode changed, hands
  // every worker a snapshot built with it.
  AdminReply setPolicyMode(const std::string& policy, const std::string& body,
                           const std::string& peer) {
    bool changed = false;
    AdminReply reply = switches_.setMode(*config_, policy, body, peer, &changed);
    if (!changed) {
      return reply;
    }
    std::string error;
    if (!applyConfig(switches_.apply(config_), &error)) {
      spdlog::error("admin: applying the switch of policy {} failed: {}", policy, error);
      return {500, "failed to apply the switch: " + error + "\n"};
    }
    return reply;
  }

  // Binds what the new config needs and hands it to every worker. On a bind error nothing
  // changes and `error` holds the reason.
  bool applyConfig(std::shared_ptr<const config::Config> config, std::string* error) {
    std::set<std::string> existing;
    if (snapshot_) {
      for (const config::Listener& listener : snapshot_->config->listeners) {
        existing.insert(listenerKey(listener));
      }
    }

    // acceptors[worker][listener]; null where the listener already runs.
    std::vector<std::vector<std::unique_ptr<Acceptor>>> acceptors(workers_.size());
    for (size_t w = 0; w < workers_.size(); w++) {
      for (const config::Listener& listener : config->listeners) {
        if (existing.count(listenerKey(listener)) > 0) {
          acceptors[w].push_back(nullptr);
          continue;
        }
        auto acceptor = bindAcceptor(workers_[w]->io(), listener.address, error);
        if (!acceptor) {
          *error = "listener " + listener.name + ": " + *error;
          return false;
        }
        acceptors[w].push_back(std::move(acceptor));
      }
    }

    snapshot_ = Snapshot::build(config, metrics_, filter_state_);
    for (size_t w = 0; w < workers_.size(); w++) {
      Worker* worker = workers_[w].get();
      auto moved =
          std::make_shared<std::vector<std::unique_ptr<Acceptor>>>(std::move(acceptors[w]));
      auto resolved = resolved_;
      asio::post(worker->io(), [worker, snapshot = snapshot_, moved, resolved] {
        for (const auto& [key, entry] : resolved) {
          worker->updateEndpoints(entry.cluster, entry.address, entry.endpoints);
        }
        worker->applySnapshot(snapshot, std::move(*moved));
      });
    }
    return true;
  }

  // ---- DNS ----

  struct Resolved {
    std::string cluster;
    config::Address address;
    std::vector<tcp::endpoint> endpoints;
  };

  static bool isIpLiteral(const std::string& host) {
    boost::system::error_code ec;
    asio::ip::make_address(host, ec);
    return !ec;
  }

  // Resolves every DNS-named endpoint once, blocking, so the first requests have addresses.
  void resolveAllNow(const config::Config& config) {
    tcp::resolver resolver(io_);
    for (const config::Cluster& cluster : config.clusters) {
      for (const config::Address& address : cluster.endpoints) {
        if (isIpLiteral(address.host)) {
          continue;
        }
        boost::system::error_code ec;
        auto results = resolver.resolve(address.host, std::to_string(address.port), ec);
        std::vector<tcp::endpoint> endpoints;
        if (ec) {
          spdlog::warn("cluster {}: cannot resolve {}: {}; will retry", cluster.name,
                       address.toString(), ec.message());
        }
        for (const auto& result : results) {
          endpoints.push_back(result.endpoint());
        }
        resolved_[cluster.name + "/" + address.toString()] =
            Resolved{cluster.name, address, std::move(endpoints)};
      }
    }
  }

  // Re-resolves DNS names on a one-second tick, each at its cluster's resolve_every. The same
  // tick expires shared filter state.
  void scheduleResolve() {
    resolve_timer_.expires_after(std::chrono::seconds(1));
    resolve_timer_.async_wait([this](const boost::system::error_code& ec) {
      if (ec) {
        return;
      }
      filter_state_.tick(metrics_);
      auto now = std::chrono::steady_clock::now();
      for (const config::Cluster& cluster : config_->clusters) {
        for (const config::Address& address : cluster.endpoints) {
          if (isIpLiteral(address.host)) {
            continue;
          }
          std::string key = cluster.name + "/" + address.toString();
          auto& last = last_resolved_[key];
          if (now - last < cluster.resolve_every) {
            continue;
          }
          last = now;
          resolveAsync(cluster.name, address, key);
        }
      }
      scheduleResolve();
    });
  }

  void resolveAsync(const std::string& cluster, const config::Address& address,
                    const std::string& key) {
    auto resolver = std::make_shared<tcp::resolver>(io_);
    resolver->async_resolve(
        address.host, std::to_string(address.port),
        [this, resolver, cluster, address, key](const boost::system::error_code& ec,
                                                tcp::resolver::results_type results) {
          if (ec) {
            // Keep the last known addresses: a DNS outage should not empty a cluster.
            spdlog::warn("cluster {}: cannot resolve {}: {}; keeping {} known addresses", cluster,
                         address.toString(), ec.message(), resolved_[key].endpoints.size());
            return;
          }
          std::vector<tcp::endpoint> endpoints;
          for (const auto& result : results) {
            endpoints.push_back(result.endpoint());
          }
          if (endpoints == resolved_[key].endpoints) {
            return;
          }
          spdlog::info("cluster {}: {} now resolves to {} addresses", cluster, address.toString(),
                       endpoints.size());
          resolved_[key] = Resolved{cluster, address, endpoints};
          for (auto& worker : workers_) {
            asio::post(worker->io(), [w = worker.get(), cluster, address, endpoints] {
              w->updateEndpoints(cluster, address, endpoints);
            });
          }
        });
  }

  // ---- Signals ----

  void waitForSignals() {
    signals_.add(SIGTERM);
    signals_.add(SIGINT);
    signals_.add(SIGHUP);
    signals_.async_wait([this](const boost::system::error_code& ec, int signal) {
      if (ec) {
        return;
      }
      if (signal == SIGHUP) {
        reload(ReloadTrigger::kSighup);
        waitForSignals();
        return;
      }
      drain(signal);
    });
  }

  enum class ReloadTrigger { kSighup, kWatch };

  // Reads the file and applies it when its bytes differ from the running config's.
  void reload(ReloadTrigger trigger) {
    std::optional<ConfigFiles> bytes = readChangedConfig(trigger);
    if (bytes) {
      applyReload(*bytes, trigger);
    }
  }

  // Returns the files' bytes when they are worth loading. A SIGHUP loads any bytes that are not
  // the running config's, also bytes tried before (a listener that could not be bound may be
  // free now). The watch skips bytes it has already tried, so an invalid file is rejected and
  // counted once, not on every backstop tick. A read error counts as a failed reload; the watch
  // counts the same error once.
  std::optional<ConfigFiles> readChangedConfig(ReloadTrigger trigger) {
    bool from_watch = trigger == ReloadTrigger::kWatch;
    std::string error;
    std::optional<ConfigFiles> bytes = readConfigFiles(config_path_, &error);
    if (!bytes) {
      if (from_watch && error == last_read_error_) {
        return std::nullopt;
      }
      last_read_error_ = error;
      spdlog::error("reload rejected: {}; the running config is unchanged", error);
      metrics_.recordReload(false);
      return std::nullopt;
    }
    last_read_error_.clear();
    if (watch_) {
      watch_->setTargets(watchTargets(bytes->sources)); // the policy files may have changed
    }

    if (bytes->hash == running_hash_) {
      last_read_hash_ = bytes->hash;
      unconfirmed_hash_.reset();
      if (!from_watch) {
        spdlog::info("SIGHUP: {} is unchanged; nothing to reload", config_path_);
      }
      return std::nullopt;
    }
    if (from_watch && bytes->hash == last_read_hash_) {
      return std::nullopt;
    }
    // The watch confirms new bytes with a second read one debounce later, so a writer that
    // paused mid-file is not applied while the file still changes.
    if (from_watch && bytes->hash != unconfirmed_hash_) {
      unconfirmed_hash_ = bytes->hash;
      watch_->recheck();
      return std::nullopt;
    }
    unconfirmed_hash_.reset();
    last_read_hash_ = bytes->hash;
    return bytes;
  }

  void applyReload(const ConfigFiles& bytes, ReloadTrigger trigger) {
    spdlog::info("{}: reloading {}",
                 trigger == ReloadTrigger::kWatch ? "config file changed" : "SIGHUP", config_path_);
    config::LoadResult loaded = config::loadSources(bytes.sources);
    if (!loaded.ok()) {
      for (const config::Diagnostic& diagnostic : loaded.diagnostics) {
        spdlog::error("{}", diagnostic.toString());
      }
      spdlog::error("reload rejected: {} is invalid; the running config is unchanged",
                    config_path_);
      metrics_.recordReload(false);
      return;
    }

    std::string error;
    if (loaded.config->admin.address.toString() != admin_address_) {
      spdlog::warn("reload: admin listener stays on {}; the new address {} takes effect at the "
                   "next restart",
                   admin_address_, loaded.config->admin.address.toString());
    }
    if (loaded.config->workers != config_->workers) {
      spdlog::warn("reload: worker count change takes effect at the next restart");
    }
    std::optional<std::string> token;
    if (!loadAdminToken(*loaded.config, &token, &error)) {
      spdlog::error("reload rejected: {}; the running config is unchanged", error);
      metrics_.recordReload(false);
      return;
    }
    resolveAllNow(*loaded.config);
    if (!applyConfig(loaded.config, &error)) {
      spdlog::error("reload rejected: {}; the running config is unchanged", error);
      metrics_.recordReload(false);
      return;
    }
    if (!openAccessLog(*loaded.config, &error)) {
      spdlog::error("reload: access log: {}; access logging is off", error);
    }
    config_ = loaded.config;
    admin_token_ = std::move(token);
    if (size_t cleared = switches_.clear(); cleared > 0) {
      spdlog::info("reload: {} runtime policy switches reset to the file's modes", cleared);
    }
    running_hash_ = bytes.hash;
    metrics_.setConfigHash(bytes.hash);
    spdlog::set_level(parseLevel(log_level_.empty() ? config_->log.level : log_level_));
    metrics_.recordReload(true);
    spdlog::info("reload applied: {} listeners, {} clusters, config hash {:.0f}",
                 config_->listeners.size(), config_->clusters.size(), running_hash_);
  }

  void drain(int signal) {
    spdlog::info("{}: draining for at most {} ms", signal == SIGTERM ? "SIGTERM" : "SIGINT",
                 config_->drain_timeout.count());
    ready_ = false;
    metrics_.setReady(false);
    resolve_timer_.cancel();
    if (watch_) {
      watch_->stop(); // no reload while draining, as for SIGHUP
    }

    auto remaining = std::make_shared<size_t>(workers_.size());
    for (auto& worker : workers_) {
      asio::post(worker->io(), [this, w = worker.get(), remaining] {
        w->drain([this, remaining] {
          asio::post(io_, [this, remaining] {
            if (--*remaining == 0) {
              spdlog::info("drain complete: every connection closed");
              finish();
            }
          });
        });
      });
    }
    drain_timer_.expires_after(config_->drain_timeout);
    drain_timer_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) {
        spdlog::warn("drain timeout passed with connections still open; closing them");
        finish();
      }
    });

    waitForSecondSignal();
  }

  // During a drain, SIGHUP is ignored (a reload would only be dropped) and a second SIGTERM or
  // SIGINT stops at once.
  void waitForSecondSignal() {
    signals_.async_wait([this](const boost::system::error_code& ec, int signal) {
      if (ec) {
        return;
      }
      if (signal == SIGHUP) {
        spdlog::warn("SIGHUP during drain: ignored, no reload while draining");
        waitForSecondSignal();
        return;
      }
      spdlog::warn("{} during drain: stopping now, closing in-flight requests",
                   signal == SIGTERM ? "second SIGTERM" : "SIGINT");
      finish();
    });
  }

  void finish() {
    drain_timer_.cancel();
    signals_.cancel();
    if (watch_) {
      watch_->stop();
    }
    if (admin_) {
      admin_->stop();
    }
    io_.stop();
  }

  std::string config_path_;
  std::string log_level_;
  asio::io_context io_;
  asio::signal_set signals_;
  asio::steady_timer resolve_timer_;
  asio::steady_timer drain_timer_;
  Metrics metrics_;
  FilterState filter_state_;
  std::shared_ptr<const config::Config> config_;
  std::shared_ptr<const Snapshot> snapshot_;
  std::unique_ptr<ConfigWatch> watch_;
  RuntimeSwitches switches_;
  std::optional<std::string> admin_token_; // from admin.token_file; never logged
  double running_hash_ = 0;                // configHash() of the running config's bytes
  double last_read_hash_ = 0;              // of the bytes the last reload read, applied or not
  std::optional<double> unconfirmed_hash_; // read once by the watch, awaiting a second read
  std::string last_read_error_; // why the last read failed; empty after a successful read
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<AdminServer> admin_;
  std::string admin_address_; // where the admin listener runs; a reload does not move it
  std::atomic<bool> ready_{false};
  std::map<std::string, Resolved> resolved_;
  std::map<std::string, std::chrono::steady_clock::time_point> last_resolved_;
};

Server::Server(std::string config_path, std::string log_level)
    : impl_(std::make_unique<Impl>(std::move(config_path), std::move(log_level))) {}

Server::~Server() = default;

int Server::run() { return impl_->run(); }

} // namespace deferd
