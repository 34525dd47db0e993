// Tells HTTP/2 with prior knowledge from HTTP/1.1 on a new downstream connection.
//
// A client with prior knowledge opens with the 24-byte preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
// The detector reads until the bytes received stop matching the preface (an HTTP/1.1 request
// line differs within its first few bytes) or all 24 match, then hands the connection and the
// bytes read to the session for that protocol. Until then it is a Session of its own, so the
// worker's tick ends a connection that sends too little and a drain closes it.

#include <boost/asio/buffer.hpp>

#include <array>
#include <memory>
#include <string_view>

#include "proxy/http2_session.h"
#include "proxy/worker.h"

namespace deferd {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

class ProtocolDetector final : public Session,
                               public std::enable_shared_from_this<ProtocolDetector> {
public:
  ProtocolDetector(Worker& worker, Socket socket, size_t listener_index)
      : worker_(worker), socket_(std::move(socket)), listener_index_(listener_index),
        stats_(worker.snapshot()->listeners[listener_index].stats) {}

  ~ProtocolDetector() override {
    if (!handed_off_) {
      stats_->connections_active->Decrement();
    }
    worker_.onSessionClosed();
  }

  void start() {
    // Counted from the accept on, so a connection that has sent nothing yet is still active.
    stats_->connections_active->Increment();
    stats_->connections_total->Increment();
    worker_.addSession(*this);
    const config::ListenerLimits& limits = limits_();
    deadline_ = std::chrono::steady_clock::now() + limits.idle_timeout;
    read();
  }

  void onTick(MonotonicTime now) override {
    if (received_ == 0 && draining_) {
      close();
      return;
    }
    if (now >= deadline_) {
      close();
    }
  }

  void onDrain() override {
    draining_ = true;
    if (received_ == 0) {
      close();
    }
  }

  void abort() override { close(); }

private:
  const config::ListenerLimits& limits_() const {
    return worker_.snapshot()->listeners[listener_index_].config->limits;
  }

  void read() {
    socket_.async_read_some(asio::buffer(bytes_.data() + received_, bytes_.size() - received_),
                            [self = shared_from_this()](error_code ec, size_t received) {
                              self->onRead(ec, received);
                            });
  }

  void onRead(error_code ec, size_t received) {
    if (closed_) {
      return;
    }
    if (ec) {
      close();
      return;
    }
    if (received_ == 0) {
      deadline_ = std::chrono::steady_clock::now() + limits_().header_timeout;
    }
    received_ += received;
    std::string_view bytes(bytes_.data(), received_);
    bool prefix = kHttp2Preface.starts_with(bytes);
    if (prefix && received_ < kHttp2Preface.size()) {
      read();
      return;
    }

    closed_ = true;
    handed_off_ = true;
    unlink();
    if (prefix) {
      startHttp2Session(worker_, std::move(socket_), listener_index_, bytes);
    } else {
      startHttp1Session(worker_, std::move(socket_), listener_index_, bytes);
    }
  }

  void close() {
    if (closed_) {
      return;
    }
    closed_ = true;
    error_code ignored;
    socket_.close(ignored);
    unlink();
  }

  Worker& worker_;
  Socket socket_;
  size_t listener_index_;
  ListenerStats* stats_;
  std::array<char, kHttp2Preface.size()> bytes_{};
  size_t received_ = 0;
  MonotonicTime deadline_{};
  bool draining_ = false;
  bool closed_ = false;
  bool handed_off_ = false; // the protocol's session owns the connection and its count
};

} // namespace

void startDownstreamConnection(Worker& worker, Socket socket, size_t listener_index) {
  auto detector = std::make_shared<ProtocolDetector>(worker, std::move(socket), listener_index);
  detector->start();
}

} // namespace deferd
