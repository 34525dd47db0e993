#pragma once

// A worker: one thread running one io_context, with its own acceptors, sessions, connection
// pools and access log writer.
//
// Thread model: every worker accepts on its own socket for each listener, all bound to the same
// address with SO_REUSEPORT, so the kernel spreads connections and nothing on the request path
// is shared between workers except the read-only config snapshot and atomic metrics. The main
// thread talks to a worker only by posting functions to its io_context.
//
// Asio locking: each socket is used only by its worker's thread (the main thread binds new
// acceptors but starts no operation on them), so the io_context runs with reactor I/O locking
// off. The scheduler keeps its lock, which is what makes posting from the main thread safe.
//
// Timeouts: sessions register in the worker's session list, and a 50 ms tick checks their
// deadlines. One periodic timer per worker costs less than arming a timer per I/O operation,
// and timeouts of seconds do not need finer resolution.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/intrusive/list.hpp>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "proxy/access_log.h"
#include "proxy/router.h"
#include "proxy/snapshot.h"
#include "proxy/upstream_pool.h"

namespace deferd {

// A downstream connection as the worker handles it: something with deadlines that drains.
class Session : public boost::intrusive::list_base_hook<
                    boost::intrusive::link_mode<boost::intrusive::auto_unlink>> {
public:
  virtual ~Session() = default;
  virtual void onTick(MonotonicTime now) = 0;
  // Closes the connection if no request is in progress, else after the current response.
  virtual void onDrain() = 0;
  // Closes the connection now, whatever is in progress.
  virtual void abort() = 0;
};

// One cluster's endpoints on one worker.
struct WorkerCluster {
  // The cluster's settings in the worker's current config, which go with `endpoints`. A
  // request that started before a reload uses these too, since it gets these endpoints.
  const config::Cluster* config = nullptr;
  std::vector<config::Address> configured; // the endpoints as configured, to detect changes
  std::vector<std::shared_ptr<UpstreamEndpoint>> endpoints;
  size_t round_robin_cursor = 0;

  // Picks an endpoint by the cluster's balancer, skipping `exclude` when another is available.
  UpstreamEndpoint* pick(config::LbPolicy policy, LbRandom& random,
                         const UpstreamEndpoint* exclude);
};

class AsioDispatcher;

class Worker {
public:
  Worker(size_t index, size_t worker_count);
  ~Worker();

  boost::asio::io_context& io() { return io_; }
  size_t index() const { return index_; }

  // Runs the worker's loop on a new thread.
  void start();
  void join();

  // --- Called on the worker's own thread, usually by a function posted from main. ---

  // Swaps in a new snapshot with the acceptors bound for it (one per listener, same order;
  // null where the listener is unchanged and the current acceptor is kept).
  void applySnapshot(std::shared_ptr<const Snapshot> snapshot,
                     std::vector<std::unique_ptr<Acceptor>> acceptors);

  // Replaces the resolved addresses of one configured endpoint of a cluster.
  void updateEndpoints(const std::string& cluster, const config::Address& configured,
                       std::vector<boost::asio::ip::tcp::endpoint> resolved);

  // Stops accepting and closes idle connections; calls `drained` once no session is left.
  void drain(std::function<void()> drained);

  // --- Used by sessions. ---

  const std::shared_ptr<const Snapshot>& snapshot() const { return snapshot_; }
  WorkerCluster* cluster(const std::string& name);
  AccessLog* accessLog() { return access_log_.get(); }
  LbRandom& random() { return random_; }
  Dispatcher& dispatcher();
  bool draining() const { return draining_; }
  void addSession(Session& session) {
    sessions_.push_back(session);
    session_count_++;
  }
  void onSessionClosed();

  // Body relay buffers, reused across requests.
  static constexpr size_t kBodyBufferSize = 64 * 1024;
  std::unique_ptr<char[]> takeBuffer();
  void returnBuffer(std::unique_ptr<char[]> buffer);

  // A new request id: 32 lower-case hex digits, in the 8-4-4-4-12 layout of a UUID v4.
  std::string generateRequestId();

  // Logs a failed upstream exchange as a warning, at most once a second per worker, with the
  // count of failures left unlogged since the last message.
  void warnUpstreamFailure(std::string_view cluster, std::string_view endpoint,
                           std::string_view cause);

  // The access log writer; the file is shared by all workers.
  void setAccessLog(std::shared_ptr<AccessLogFile> file);

private:
  // Creates a pool for one resolved address, tied to the address's shared endpoint state.
  std::shared_ptr<UpstreamEndpoint> makeEndpoint(const std::string& cluster_name,
                                                 const boost::asio::ip::tcp::endpoint& address,
                                                 const std::string& label, ClusterStats* stats,
                                                 uint32_t max_connections);

  struct ListenerSlot {
    explicit ListenerSlot(boost::asio::io_context& io) : retry_timer(io) {}

    std::string key; // name and address
    size_t listener_index = 0;
    std::unique_ptr<Acceptor> acceptor;
    boost::asio::steady_timer retry_timer; // pause after a failed accept
    uint64_t failed_accepts = 0;           // since the last successful one
  };

  // Handlers hold the slot, so a slot retired by a reload outlives its pending accept.
  void accept(std::shared_ptr<ListenerSlot> slot);
  void tick();
  void rebuildClusters();

  size_t index_;
  size_t worker_count_;
  boost::asio::io_context io_;
  std::thread thread_;
  std::shared_ptr<const Snapshot> snapshot_;
  std::vector<std::shared_ptr<ListenerSlot>> listeners_;
  std::map<std::string, WorkerCluster> clusters_;
  // Addresses of endpoints configured by DNS name, keyed by "host:port", set by the resolver.
  std::map<std::string, std::vector<boost::asio::ip::tcp::endpoint>> resolved_;
  boost::asio::steady_timer ticker_;
  std::unique_ptr<AccessLog> access_log_;
  std::unique_ptr<AsioDispatcher> dispatcher_;
  LbRandom random_;
  uint64_t id_state_; // splitmix64 state for request ids
  MonotonicTime last_upstream_warning_{};
  uint64_t unlogged_upstream_failures_ = 0;
  std::vector<std::unique_ptr<char[]>> free_buffers_;
  boost::intrusive::list<Session, boost::intrusive::constant_time_size<false>> sessions_;
  size_t session_count_ = 0;
  bool draining_ = false;
  std::function<void()> drained_;
  MonotonicTime last_idle_sweep_{};
};

// Starts serving an accepted connection: detects HTTP/2 prior knowledge or HTTP/1.1 from its
// first bytes and hands it to that protocol's session (protocol_detect.cc).
void startDownstreamConnection(Worker& worker, Socket socket, size_t listener_index);

// Starts serving an HTTP/1.1 connection whose first bytes, `received`, were already read
// (http1_session.cc). The connection is already counted in the listener's connection metrics,
// and the session uncounts it when it closes.
void startHttp1Session(Worker& worker, Socket socket, size_t listener_index,
                       std::string_view received);

} // namespace deferd
