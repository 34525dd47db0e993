#include "proxy/upstream_pool.h"

#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/post.hpp>

#include <spdlog/spdlog.h>

#include "proxy/http2_upstream.h"

namespace deferd {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

struct UpstreamEndpoint::Waiter {
  explicit Waiter(asio::io_context& io) : timer(io) {}

  asio::steady_timer timer;
  AcquireCallback callback;
  std::chrono::milliseconds connect_timeout{0};
  bool done = false;
};

namespace {

// Whether an idle keep-alive connection is still usable: the peer has neither closed it nor
// sent unsolicited bytes. One non-blocking peek, which costs less than a failed request.
bool stillOpen(Socket& socket) {
  char byte;
  ssize_t received = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

} // namespace

UpstreamEndpoint::UpstreamEndpoint(asio::io_context& io, tcp::endpoint address, std::string label,
                                   ClusterStats* stats, uint32_t max_connections)
    : io_(io), address_(std::move(address)), label_(std::move(label)), stats_(stats),
      max_connections_(max_connections) {}

UpstreamEndpoint::~UpstreamEndpoint() { closeAllIdle(); }

ConnectionPtr UpstreamEndpoint::takeIdle(MonotonicTime now, bool verify) {
  while (!idle_.empty()) {
    ConnectionPtr connection = std::move(idle_.back());
    idle_.pop_back();
    bool check = verify || now - connection->idle_since > kVerifyAfterIdle;
    if (!check || stillOpen(connection->socket)) {
      connection->reused = true;
      return connection;
    }
    boost::system::error_code ignored;
    connection->socket.close(ignored);
    connection.reset();
    stats_->connections_active->Decrement();
    onConnectionClosed();
  }
  return nullptr;
}

ConnectionPtr UpstreamEndpoint::acquire(std::chrono::milliseconds connect_timeout,
                                        AcquireCallback callback) {
  if (ConnectionPtr idle = takeIdle(std::chrono::steady_clock::now(), true)) {
    return idle;
  }
  if (open_connections_ < max_connections_) {
    connect(connect_timeout, std::move(callback));
    return nullptr;
  }

  // At the limit: wait for a release, at most connect_timeout.
  auto waiter = std::make_shared<Waiter>(io_);
  waiter->callback = std::move(callback);
  waiter->connect_timeout = connect_timeout;
  waiter->timer.expires_after(connect_timeout);
  waiter->timer.async_wait([waiter](const boost::system::error_code& ec) {
    if (ec || waiter->done) {
      return;
    }
    waiter->done = true;
    waiter->callback(AcquireResult{nullptr, UpstreamFailure::kConnectionLimit});
  });
  waiters_.push_back(std::move(waiter));
  return nullptr;
}

void UpstreamEndpoint::connect(std::chrono::milliseconds timeout, AcquireCallback callback) {
  struct ConnectOp {
    explicit ConnectOp(asio::io_context& io)
        : connection(std::make_unique<UpstreamConnection>(io)), timer(io) {}

    ConnectionPtr connection;
    asio::steady_timer timer;
    AcquireCallback callback;
    bool timed_out = false;
  };

  open_connections_++;
  auto op = std::make_shared<ConnectOp>(io_);
  op->callback = std::move(callback);
  op->connection->endpoint = shared_from_this();

  // The timer closes the socket, which completes the connect with an error.
  op->timer.expires_after(timeout);
  op->timer.async_wait([op](const boost::system::error_code& ec) {
    if (ec) {
      return;
    }
    op->timed_out = true;
    boost::system::error_code ignored;
    op->connection->socket.close(ignored);
  });

  auto self = shared_from_this();
  op->connection->socket.async_connect(address_, [self, op](const boost::system::error_code& ec) {
    op->timer.cancel();
    if (ec) {
      UpstreamFailure failure =
          op->timed_out ? UpstreamFailure::kConnectTimeout : UpstreamFailure::kConnectFailed;
      spdlog::debug("upstream {}: connect failed: {}", self->label_,
                    op->timed_out ? "timed out" : ec.message());
      boost::system::error_code ignored;
      op->connection->socket.close(ignored);
      op->connection.reset();
      self->onConnectionClosed();
      op->callback(AcquireResult{nullptr, failure});
      return;
    }

    boost::system::error_code ignored;
    op->connection->socket.set_option(tcp::no_delay(true), ignored);
    self->stats_->connections_created->Increment();
    self->stats_->connections_active->Increment();
    op->callback(AcquireResult{std::move(op->connection), UpstreamFailure::kCount});
  });
}

void UpstreamEndpoint::release(ConnectionPtr connection, bool reusable, MonotonicTime now) {
  if (reusable) {
    connection->buffer.clear();
    connection->idle_since = now;
    idle_.push_back(std::move(connection));
    serveWaiter();
    return;
  }
  boost::system::error_code ignored;
  connection->socket.close(ignored);
  connection.reset();
  stats_->connections_active->Decrement();
  onConnectionClosed();
}

void UpstreamEndpoint::onConnectionClosed() {
  open_connections_--;
  serveWaiter();
}

// Hands an idle connection, or a new one, to the oldest request still waiting.
void UpstreamEndpoint::serveWaiter() {
  while (!waiters_.empty() && waiters_.front()->done) {
    waiters_.pop_front();
  }
  if (waiters_.empty()) {
    return;
  }
  std::shared_ptr<Waiter> waiter = waiters_.front();
  if (idle_.empty() && open_connections_ >= max_connections_) {
    return;
  }
  waiters_.pop_front();
  waiter->done = true;
  waiter->timer.cancel();

  // Run the waiter's callback later, never inside the releasing request's call stack.
  auto self = shared_from_this();
  asio::post(io_, [self, waiter] {
    ConnectionPtr connection = self->acquire(waiter->connect_timeout, waiter->callback);
    if (connection) {
      waiter->callback(AcquireResult{std::move(connection), UpstreamFailure::kCount});
    }
  });
}

void UpstreamEndpoint::closeIdle(MonotonicTime now, std::chrono::milliseconds idle_timeout) {
  size_t kept = 0;
  for (ConnectionPtr& connection : idle_) {
    if (now - connection->idle_since < idle_timeout) {
      idle_[kept++] = std::move(connection);
      continue;
    }
    boost::system::error_code ignored;
    connection->socket.close(ignored);
    connection.reset();
    stats_->connections_active->Decrement();
    open_connections_--;
  }
  idle_.resize(kept);
  serveWaiter();
  if (http2_pool_) {
    http2_pool_->closeIdle(now, idle_timeout);
  }
}

void UpstreamEndpoint::closeAllIdle() {
  for (ConnectionPtr& connection : idle_) {
    boost::system::error_code ignored;
    connection->socket.close(ignored);
    stats_->connections_active->Decrement();
    open_connections_--;
  }
  idle_.clear();
  if (http2_pool_) {
    http2_pool_->closeAllIdle();
  }
}

Http2ConnectionPool& UpstreamEndpoint::http2Pool() {
  if (!http2_pool_) {
    http2_pool_ =
        std::make_unique<Http2ConnectionPool>(io_, address_, label_, stats_, max_connections_);
  }
  return *http2_pool_;
}

} // namespace deferd
