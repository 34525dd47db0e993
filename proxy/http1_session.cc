// One downstream HTTP/1.1 connection and the requests it carries.
//
// A request moves through these states, one at a time per connection:
//
//   kIdle ─► kReadingHeader ─► kFiltering ─► kConnecting ─► kSendingRequest
//                                   (held)                        │
//   ◄── keep-alive ── kSendingResponse ◄── kAwaitingResponse ◄────┘
//
// Bodies stream in both directions through one 64 KiB buffer: a piece is read from one side
// and written to the other before the next read, so memory per request is bounded whatever
// the body size. Beast's parser decodes chunked bodies; OutgoingMessage writes the head and
// re-encodes the chunks.
//
// Ownership: every pending handler captures a shared_ptr to the session. When the last handler
// returns without starting another operation, the session is destroyed.
// Deadlines are checked by the worker's tick, which cancels the pending operation. Its
// handler then finds `timed_out_` set and replies or closes.
//
// Local replies are built in one place, sendLocalReply(), from the table in local_reply.h.

#include <boost/asio/buffer.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <nghttp2/nghttp2.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "proxy/filter_chain.h"
#include "proxy/http1_headers.h"
#include "proxy/http2_upstream.h"
#include "proxy/http_translation.h"
#include "proxy/worker.h"

namespace deferd {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr std::string_view kReasonHeader = "deferd-reason";
constexpr size_t kMaxResponseHeaderBytes = 64 * 1024;

// One outgoing message: its head, written together with the first body piece, and its body,
// chunk-encoded when the message is chunked. Each write is one gather write of at most five
// buffers.
class OutgoingMessage {
public:
  using Buffers = std::array<asio::const_buffer, 5>;

  void start(bool chunked) {
    head.clear();
    last_chunk_.clear();
    head_pending_ = true;
    chunked_ = chunked;
  }

  // Whether the head still waits for the first write, so nothing of the message was sent.
  bool headPending() const { return head_pending_; }

  // Ends a chunked body with `trailers` in its trailer section instead of an empty one.
  void setTrailers(const HeaderList& trailers) {
    last_chunk_.clear();
    if (!trailers.empty()) {
      appendLastChunk(last_chunk_, trailers);
    }
  }

  // Frames `size` bytes at `data` (none is fine) for the next write, after the head if it is
  // still unsent. `last` ends a chunked body with the last-chunk.
  const Buffers& frame(const char* data, size_t size, bool last) {
    buffers_ = {};
    size_t count = 0;
    if (head_pending_) {
      buffers_[count++] = asio::buffer(head);
      head_pending_ = false;
    }
    if (chunked_) {
      if (size > 0) {
        size_t length = formatChunkLine(chunk_line_, size);
        buffers_[count++] = asio::buffer(chunk_line_, length);
        buffers_[count++] = asio::buffer(data, size);
        buffers_[count++] = asio::buffer(kCrlf.data(), kCrlf.size());
      }
      if (last && !last_chunk_.empty()) {
        buffers_[count++] = asio::buffer(last_chunk_);
      } else if (last) {
        buffers_[count++] = asio::buffer(kLastChunk.data(), kLastChunk.size());
      }
    } else if (size > 0) {
      buffers_[count++] = asio::buffer(data, size);
    }
    return buffers_;
  }

  std::string head; // filled by appendRequestHead or appendResponseHead after start()

private:
  static constexpr std::string_view kCrlf = "\r\n";
  static constexpr std::string_view kLastChunk = "0\r\n\r\n";

  bool head_pending_ = false;
  bool chunked_ = false;
  std::string last_chunk_; // the last-chunk with a trailer section; empty for "0\r\n\r\n"
  char chunk_line_[kChunkLineMax];
  Buffers buffers_;
};

} // namespace

class Http1Session final : public Session,
                           public ChainOwner,
                           public Http2UpstreamHandler,
                           public std::enable_shared_from_this<Http1Session> {
public:
  Http1Session(Worker& worker, Socket socket, size_t listener_index)
      : worker_(worker), snapshot_(worker.snapshot()),
        listener_(&snapshot_->listeners[listener_index]), socket_(std::move(socket)),
        buffer_(listener_->config->limits.max_header_bytes + Worker::kBodyBufferSize) {}

  ~Http1Session() override {
    endRequest(StreamEnd::kDownstreamClosed);
    releaseUpstream(false);
    listener_->stats->connections_active->Decrement();
    worker_.onSessionClosed();
  }

  // `received`: the connection's first bytes, already read by protocol detection.
  void start(std::string_view received) {
    if (!received.empty()) {
      asio::buffer_copy(buffer_.prepare(received.size()),
                        asio::buffer(received.data(), received.size()));
      buffer_.commit(received.size());
    }
    error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    auto remote = socket_.remote_endpoint(ec);
    if (!ec) {
      peer_ip_ = remote.address().to_string();
    }
    // Protocol detection counted the connection in connections_active and connections_total.
    worker_.addSession(*this);
    readHeader();
  }

  // --- Session ---

  void onTick(MonotonicTime now) override {
    if (state_ == State::kIdle && buffer_.size() > 0) {
      // The first bytes of a request arrived: from now on the header timeout applies.
      state_ = State::kReadingHeader;
      deadline_ = now + listener_->config->limits.header_timeout;
    }
    if (deadline_ == MonotonicTime{} || now < deadline_) {
      return;
    }
    deadline_ = {};
    timed_out_ = true;
    if (h2_mode_) {
      onHttp2Deadline();
      return;
    }
    error_code ignored;
    switch (state_) {
    case State::kIdle:
    case State::kReadingHeader:
    case State::kReplying:
      socket_.cancel(ignored);
      break;
    case State::kAwaitingResponse:
      upstream_->socket.cancel(ignored);
      break;
    case State::kSendingRequest:
    case State::kSendingResponse:
      // Either side may be the one that stalled.
      if (upstream_) {
        upstream_->socket.cancel(ignored);
      }
      socket_.cancel(ignored);
      break;
    default:
      break;
    }
  }

  void onDrain() override {
    draining_ = true;
    if (state_ == State::kIdle && buffer_.size() == 0) {
      error_code ignored;
      socket_.cancel(ignored);
    }
  }

  void abort() override {
    endRequest(StreamEnd::kDownstreamClosed);
    close();
  }

  // --- ChainOwner ---

  RequestInfo& requestInfo() override { return info_; }
  Dispatcher& dispatcher() override { return worker_.dispatcher(); }

  void onChainContinue() override {
    stopWatchingDownstream();
    acquireUpstream(nullptr);
  }

  // The breaker sends the request to its fallback cluster: the upstream, its pool and the
  // access log's cluster follow.
  bool onChainRouteToCluster(size_t cluster_index) override {
    if (cluster_index >= snapshot_->clusters.size()) {
      return false;
    }
    cluster_index_ = cluster_index;
    cluster_name_ = snapshot_->clusters[cluster_index].config->name;
    info_.route_cluster = cluster_name_; // the old view may point into a freed buffer
    return true;
  }

  void onChainLocalReply(LocalReplyReason reason) override {
    stopWatchingDownstream();
    sendLocalReply(reason);
  }

private:
  enum class State {
    kIdle,
    kReadingHeader,
    kFiltering,
    kConnecting,
    kSendingRequest,
    kAwaitingResponse,
    kSendingResponse,
    kReplying,
    kClosed,
  };

  // ---- Reading the request ----

  void readHeader() {
    state_ = buffer_.size() > 0 ? State::kReadingHeader : State::kIdle;
    auto now = std::chrono::steady_clock::now();
    deadline_ = now + (state_ == State::kIdle ? listener_->config->limits.idle_timeout
                                              : listener_->config->limits.header_timeout);
    timed_out_ = false;

    request_.emplace();
    request_->header_limit(listener_->config->limits.max_header_bytes);
    request_->body_limit(boost::none);
    http::async_read_header(
        socket_, buffer_, *request_,
        [self = shared_from_this()](error_code ec, size_t) { self->onReadHeader(ec); });
  }

  // Drops the empty lines a client may send before a request line, which RFC 9112 section 2.2
  // recommends a server ignore (some clients add CRLF after a POST body). Returns whether any
  // were dropped.
  bool skipLeadingEmptyLines() {
    size_t skipped = 0;
    auto data = static_cast<const char*>(buffer_.data().data());
    size_t size = buffer_.size();
    while (skipped < size && (data[skipped] == '\r' || data[skipped] == '\n') && skipped < 4) {
      skipped++;
    }
    buffer_.consume(skipped);
    return skipped > 0;
  }

  void onReadHeader(error_code ec) {
    if (ec && ec.category() == http::make_error_code(http::error::bad_method).category() &&
        skipLeadingEmptyLines()) {
      readHeader();
      return;
    }
    if (ec) {
      if (timed_out_ && state_ == State::kReadingHeader) {
        beginRequest();
        sendLocalReply(LocalReplyReason::kHeaderTimeout);
        return;
      }
      if (ec == http::error::end_of_stream || ec == asio::error::operation_aborted ||
          ec == asio::error::connection_reset || ec == asio::error::eof || timed_out_ ||
          draining_) {
        close();
        return;
      }
      beginRequest();
      if (ec == http::error::header_limit) {
        sendLocalReply(LocalReplyReason::kHeaderTooLarge);
        return;
      }
      spdlog::debug("listener {}: malformed request from {}: {}", listener_->config->name, peer_ip_,
                    ec.message());
      sendLocalReply(LocalReplyReason::kBadRequest);
      return;
    }

    // A connection accepted before a reload serves its next request with the new config.
    adoptCurrentSnapshot();
    beginRequest();
    http::request<http::buffer_body>& request = request_->get();

    // Hop-by-hop fields go first, so the rest of the request is judged as it will be sent.
    // The parser has already worked out the connection's persistence from them.
    keep_alive_ = request_->keep_alive() && request.version() >= 11;
    removeHopByHop(request);

    RequestFields fields(request);
    std::string_view framing = framingError(fields, request.version());
    if (!framing.empty()) {
      spdlog::debug("listener {}: rejected request from {}: {}", listener_->config->name, peer_ip_,
                    framing);
      sendLocalReply(LocalReplyReason::kBadRequest);
      return;
    }
    if (fields.count > listener_->config->limits.max_header_count) {
      sendLocalReply(LocalReplyReason::kTooManyHeaders);
      return;
    }
    if (!resolveTarget(request)) {
      sendLocalReply(LocalReplyReason::kBadRequest);
      return;
    }

    if (fields.has_expect && client_http10_) {
      // HTTP/1.0 has no expectations: a server must ignore them (RFC 9110, section 10.1.1).
      request.erase(http::field::expect);
    } else if (fields.has_expect) {
      if (!beast::iequals(trimWhitespace(fields.expect), "100-continue")) {
        sendLocalReply(LocalReplyReason::kExpectationFailed);
        return;
      }
      // deferd sends the 100 Continue itself once the request has an upstream connection, as
      // Envoy does by default, and does not forward the Expect field.
      expect_continue_ = true;
      request.erase(http::field::expect);
    }

    headers_.emplace(request);
    std::optional<size_t> route_index =
        matchRoute(listener_->config->routes, authority_, path_view(), *headers_);
    if (!route_index) {
      sendLocalReply(LocalReplyReason::kNoRoute);
      return;
    }
    route_ = &listener_->routes[*route_index];
    cluster_name_ = route_->config->cluster;
    cluster_index_ = route_->cluster_index;
    info_.route_cluster = route_->config->cluster;

    prepareUpstreamRequest(request, fields);

    state_ = State::kFiltering;
    deadline_ = {};
    if (route_->filters.empty()) {
      acquireUpstream(nullptr);
      return;
    }
    std::vector<std::unique_ptr<StreamFilter>> filters;
    filters.reserve(route_->filters.size());
    for (const auto& factory : route_->filters) {
      filters.push_back(factory->createFilter());
    }
    chain_ = std::make_unique<FilterChain>(*this, std::move(filters));
    auto self = shared_from_this(); // the chain may finish the request synchronously
    chain_->runRequestHeaders(*headers_);
    if (chain_ && chain_->held()) {
      watchDownstream();
    }
  }

  std::string_view path_view() const { return path_; }

  // Records what the access log and metrics need, once per request.
  void beginRequest() {
    request_start_ = std::chrono::steady_clock::now();
    in_request_ = true;
    listener_->stats->requests_in_flight->Increment();

    info_ = RequestInfo{};
    info_.listener = listener_->config->name;
    info_.downstream_address = peer_ip_;
    info_.start = request_start_;
    route_ = nullptr;
    cluster_name_.clear();
    endpoint_label_.clear();
    expect_continue_ = false;
    request_bytes_ = 0;
    response_bytes_ = 0;
    response_status_ = 0;
    upstream_seconds_ = -1;
    reason_ = {};
    retried_ = false;
    h2_mode_ = false;
    h2_body_.clear();
    h2_body_ended_ = false;
    h2_body_reading_ = false;
    h2_sent_ = 0;
    h2_pending_.clear();
    h2_complete_ = false;
    h2_last_written_ = false;
    h2_trailers_.clear();
    request_trailers_.clear();
    forward_response_trailers_ = false;
    response_started_ = false;
    request_sent_ = false;
    route_deadline_ = {};

    if (request_ && request_->is_header_done()) {
      const auto& request = request_->get();
      method_ = request.method_string();
      path_ = request.target();
      client_http10_ = request.version() < 11;
      protocol_ = client_http10_ ? "HTTP/1.0" : "HTTP/1.1";
    } else {
      client_http10_ = false;
      method_.clear();
      path_.clear();
      protocol_ = "HTTP/1.1";
    }
    info_.method = method_;
    info_.path = path_;
  }

  // Splits an absolute-form target into authority and origin-form path (a client configured to
  // use deferd as an HTTP proxy sends those). Returns false on a target deferd cannot forward.
  bool resolveTarget(http::request<http::buffer_body>& request) {
    std::string_view target = request.target();
    if (!target.starts_with('/')) {
      std::optional<AbsoluteTarget> absolute = parseAbsoluteTarget(target);
      if (!absolute || !validHost(absolute->authority)) {
        return false;
      }
      authority_ = absolute->authority;
      path_ = absolute->path;
      request.target(path_);
      request.set(http::field::host, authority_);
    } else {
      auto host = request.find(http::field::host);
      authority_ = host == request.end() ? std::string() : std::string(host->value());
    }
    info_.authority = authority_;
    info_.path = path_;
    return true;
  }

  // The views in `fields` point into `request`; nothing before their last use here removes the
  // fields they view.
  void prepareUpstreamRequest(http::request<http::buffer_body>& request,
                              const RequestFields& fields) {
    // Transfer-Encoding stays as it is: it was checked to be exactly "chunked", and
    // OutgoingMessage frames the body to match.
    request.version(11);

    if (!fields.has_forwarded_for) {
      request.insert("x-forwarded-for", peer_ip_);
    } else {
      // Several field lines form one list (RFC 9110, section 5.3): keep every hop.
      std::string value;
      for (auto range = request.equal_range("x-forwarded-for"); range.first != range.second;
           ++range.first) {
        if (!value.empty()) {
          value.append(", ");
        }
        value.append(range.first->value());
      }
      value.append(", ").append(peer_ip_);
      request.set("x-forwarded-for", value);
    }

    if (!fields.has_request_id || fields.request_id.empty()) {
      if (listener_->config->generate_request_id) {
        request_id_ = worker_.generateRequestId();
        request.set("x-request-id", request_id_);
      }
    } else {
      request_id_ = fields.request_id;
    }
    info_.request_id = request_id_;
  }

  // While a filter keeps the request waiting, a client that closes its connection must free the
  // request's place at once, so watch the socket for readability without consuming data.
  void watchDownstream() {
    watching_ = true;
    socket_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](error_code ec) {
      if (!self->watching_ || ec) {
        return;
      }
      self->watching_ = false;
      char byte;
      ssize_t received = ::recv(self->socket_.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (received == 0 || (received < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        spdlog::debug("listener {}: client {} closed while its request was held",
                      self->listener_->config->name, self->peer_ip_);
        self->endRequest(StreamEnd::kDownstreamClosed);
        self->close();
      }
      // Bytes of a pipelined request: leave them for the next read.
    });
  }

  void stopWatchingDownstream() {
    if (watching_) {
      watching_ = false;
      error_code ignored;
      socket_.cancel(ignored);
    }
  }

  // ---- Upstream connection ----

  void acquireUpstream(const UpstreamEndpoint* exclude) {
    if (state_ == State::kClosed) {
      return;
    }
    state_ = State::kConnecting;
    // The worker's current cluster: after a reload, a request that waited in a filter gets the
    // new endpoints and settings. A cluster the reload removed has no endpoint left.
    WorkerCluster* cluster = worker_.cluster(cluster_name_);
    UpstreamEndpoint* endpoint =
        cluster ? cluster->pick(cluster->config->lb, worker_.random(), exclude) : nullptr;
    if (!endpoint) {
      sendLocalReply(LocalReplyReason::kNoHealthyEndpoint);
      return;
    }
    const config::Cluster& cluster_config = *cluster->config;
    endpoint_ = endpoint->shared_from_this();
    endpoint_label_ = endpoint->label();
    info_.upstream = endpoint->shared.get();
    endpoint_->in_flight++;
    counted_in_flight_ = true;

    if (cluster_config.protocol == config::UpstreamProtocol::kHttp2) {
      startHttp2Upstream(*endpoint, cluster_config);
      return;
    }

    bool has_body = !request_->is_done();
    if (ConnectionPtr idle = endpoint->takeIdle(std::chrono::steady_clock::now(), has_body)) {
      onUpstreamAcquired(AcquireResult{std::move(idle), UpstreamFailure::kCount});
      return;
    }
    ConnectionPtr connection = endpoint->acquire(cluster_config.connect_timeout,
                                                 [self = shared_from_this()](AcquireResult result) {
                                                   self->onUpstreamAcquired(std::move(result));
                                                 });
    if (connection) {
      onUpstreamAcquired(AcquireResult{std::move(connection), UpstreamFailure::kCount});
    }
  }

  void onUpstreamAcquired(AcquireResult result) {
    if (state_ != State::kConnecting) {
      // The client left while the connection was being made; keep it for someone else.
      if (result.connection) {
        result.connection->endpoint->release(std::move(result.connection), true,
                                             std::chrono::steady_clock::now());
      }
      return;
    }
    if (!result.connection) {
      warnUpstreamFailure(upstreamFailureName(result.failure));
      recordUpstreamFailure(result.failure);
      releaseEndpoint();

      // Nothing was sent: trying another endpoint once is always safe.
      const UpstreamEndpoint* failed = endpoint_.get();
      if (!retried_ && result.failure != UpstreamFailure::kConnectionLimit) {
        WorkerCluster* cluster = worker_.cluster(cluster_name_);
        if (cluster && cluster->endpoints.size() > 1) {
          retried_ = true;
          acquireUpstream(failed);
          return;
        }
      }
      sendLocalReply(
          result.failure == UpstreamFailure::kConnectTimeout    ? LocalReplyReason::kConnectTimeout
          : result.failure == UpstreamFailure::kConnectionLimit ? LocalReplyReason::kConnectionLimit
                                                                : LocalReplyReason::kConnectFailed);
      return;
    }
    upstream_ = std::move(result.connection);

    if (expect_continue_ && !request_->is_done()) {
      expect_continue_ = false;
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      state_ = State::kSendingRequest;
      asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                        [self = shared_from_this()](error_code ec, size_t) {
                          if (ec) {
                            self->abortRequest(StreamEnd::kDownstreamClosed);
                            return;
                          }
                          self->sendRequest();
                        });
      return;
    }
    sendRequest();
  }

  // ---- Sending the request ----

  // Starts the route timeout, once per request, or keeps the one already running. It lasts from
  // the end of the client's request until the response head, across retries. Envoy's route
  // timeout starts at the same point, so an upstream that stops reading cannot hold a request
  // until stream_idle_timeout.
  void startRouteTimeout() {
    if (response_started_) {
      return; // the response head has arrived
    }
    if (route_deadline_ == MonotonicTime{}) {
      route_deadline_ = std::chrono::steady_clock::now() + route_->config->timeout;
    }
    deadline_ = route_deadline_;
  }

  void sendRequest() {
    state_ = State::kSendingRequest;
    deadline_ = std::chrono::steady_clock::now() + listener_->config->limits.stream_idle_timeout;
    if (request_->is_done()) {
      startRouteTimeout();
    }
    auto& request = request_->get();
    if (request.find(http::field::host) == request.end()) {
      // Only an HTTP/1.0 request can lack Host, and HTTP/1.1 requires it: name the upstream,
      // as a proxy that was given no authority does.
      request.set(http::field::host, endpoint_label_);
    }
    request_out_.start(request_->chunked());
    appendRequestHead(request_out_.head, request);
    if (request_->chunked()) {
      request_head_fields_.record(request);
    }

    if (request_->is_done()) {
      // No body: the head goes alone.
      asio::async_write(
          upstream_->socket, request_out_.frame(nullptr, 0, false),
          [self = shared_from_this()](error_code ec, size_t) { self->onRequestWritten(ec); });
      return;
    }
    if (!body_buffer_) {
      body_buffer_ = worker_.takeBuffer();
    }
    readRequestBody();
  }

  void readRequestBody() {
    h2_body_reading_ = h2_mode_;
    auto& body = request_->get().body();
    body.data = body_buffer_.get();
    body.size = Worker::kBodyBufferSize;
    if (parseBuffered(*request_, buffer_)) {
      return;
    }
    if (error_code ec = stalledFraming(*request_, buffer_)) {
      onRequestBodyRead(ec);
      return;
    }
    socket_.async_read_some(buffer_.prepare(readSize(buffer_)),
                            [self = shared_from_this()](error_code ec, size_t received) {
                              self->buffer_.commit(received);
                              if (ec == asio::error::eof) {
                                // A request body must be framed: EOF inside it is an error.
                                self->request_->put_eof(ec);
                              }
                              if (ec) {
                                self->onRequestBodyRead(ec);
                                return;
                              }
                              self->readRequestBody();
                            });
  }

  // How much to read into `buffer`: up to a body buffer's worth, within the buffer's limit.
  static size_t readSize(const beast::flat_buffer& buffer) {
    return std::min(Worker::kBodyBufferSize, buffer.max_size() - buffer.size());
  }

  // Returns an error when the bytes `parser` left in `buffer` can never complete a message.
  // That is a full buffer, or chunk framing with a bare LF: RFC 9112 does not allow it, and the
  // parser would wait for a CRLF until the idle timeout. Empty when more bytes may help.
  template <bool IsRequest>
  static error_code stalledFraming(const http::parser<IsRequest, http::buffer_body>& parser,
                                   const beast::flat_buffer& buffer) {
    if (buffer.size() >= buffer.max_size()) {
      return http::make_error_code(http::error::buffer_overflow);
    }
    if (!parser.chunked() || buffer.size() == 0) {
      return {};
    }
    auto data = static_cast<const char*>(buffer.data().data());
    for (size_t i = 0; i < buffer.size(); i++) {
      if (data[i] == '\n' && (i == 0 || data[i - 1] != '\r')) {
        return http::make_error_code(http::error::bad_chunk);
      }
    }
    return {};
  }

  // Parses body bytes that already sit in `buffer` (they often arrive with the headers) and, if
  // that produced data, an error or the end of the body, hands the result on at once. Going
  // through async_read_some would post the same work to the event loop first. Returns false
  // when the caller must read from the socket.
  template <bool IsRequest>
  bool parseBuffered(http::parser<IsRequest, http::buffer_body>& parser,
                     beast::flat_buffer& buffer) {
    if (buffer.size() == 0) {
      return false;
    }
    auto& body = parser.get().body();
    error_code ec;
    while (buffer.size() > 0 && !parser.is_done() && body.size > 0) {
      size_t used = parser.put(buffer.data(), ec);
      buffer.consume(used);
      if (ec == http::error::need_more || ec == http::error::need_buffer) {
        ec = {};
        break;
      }
      if (ec || used == 0) {
        break;
      }
    }
    bool produced = body.size < Worker::kBodyBufferSize;
    if (!ec && !produced && !parser.is_done()) {
      return false;
    }
    if constexpr (IsRequest) {
      onRequestBodyRead(ec);
    } else {
      onResponseBodyRead(ec);
    }
    return true;
  }

  void onRequestBodyRead(error_code ec) {
    if (ec == http::error::need_buffer) {
      ec = {};
    }
    h2_body_reading_ = false;
    if (state_ == State::kClosed) {
      return; // the read was cancelled when the connection closed
    }
    if (ec) {
      if (!request_sent_ && !response_started_ && ec != asio::error::eof &&
          ec != http::error::end_of_stream && ec != asio::error::connection_reset && !timed_out_) {
        // A framing error in the first piece of the body: nothing has reached the upstream, so
        // the upstream connection is still clean and the client gets a 400. Once a response
        // has started, only closing the connection is left.
        spdlog::debug("listener {}: invalid request body from {}: {}", listener_->config->name,
                      peer_ip_, ec.message());
        releaseUpstream(true);
        sendLocalReply(LocalReplyReason::kBadRequest);
        return;
      }
      abortRequest(StreamEnd::kDownstreamClosed);
      return;
    }
    auto& body = request_->get().body();
    size_t received = Worker::kBodyBufferSize - body.size;
    request_bytes_ += received;
    if (received == 0 && !request_->is_done()) {
      // Only framing was parsed (a chunk header, say): read on before writing anything.
      readRequestBody();
      return;
    }
    deadline_ = std::chrono::steady_clock::now() + listener_->config->limits.stream_idle_timeout;
    if (request_->is_done()) {
      startRouteTimeout();
    }

    if (request_->is_done() && request_->chunked()) {
      // The parser has read the trailer section into the request's fields by now.
      request_trailers_ = request_head_fields_.trailers(request_->get());
      request_out_.setTrailers(request_trailers_);
    }
    if (h2_mode_) {
      // The HTTP/2 upstream pulls the piece through readUpstreamBody(), which reads the next.
      if (h2_upstream_) {
        h2_body_.append(body_buffer_.get(), received);
        h2_body_ended_ = request_->is_done();
        h2_upstream_->resumeBody();
        // One piece is read ahead of the upstream. A short request whose upstream window is
        // shut then still arrives in full, and its route timeout starts.
        if (!h2_body_ended_ && !h2_body_reading_ && h2_body_.size() < Worker::kBodyBufferSize &&
            sendingRequestBody()) {
          readRequestBody();
        }
      }
      return;
    }
    asio::async_write(upstream_->socket,
                      request_out_.frame(body_buffer_.get(), received, request_->is_done()),
                      [self = shared_from_this()](error_code write_ec, size_t) {
                        self->onRequestWritten(write_ec);
                      });
  }

  void onRequestWritten(error_code ec) {
    if (ec) {
      onUpstreamError(ec);
      return;
    }
    request_sent_ = true;
    if (!request_->is_done()) {
      readRequestBody();
      return;
    }
    readResponseHeader();
  }

  // ---- Receiving the response ----

  void readResponseHeader() {
    state_ = State::kAwaitingResponse;
    upstream_sent_at_ = std::chrono::steady_clock::now();
    startRouteTimeout();
    response_.emplace();
    response_->header_limit(kMaxResponseHeaderBytes);
    response_->body_limit(boost::none);
    if (request_->get().method() == http::verb::head) {
      response_->skip(true);
    }
    http::async_read_header(
        upstream_->socket, upstream_->buffer, *response_,
        [self = shared_from_this()](error_code ec, size_t) { self->onResponseHeader(ec); });
  }

  void onResponseHeader(error_code ec) {
    if (ec) {
      onUpstreamError(ec);
      return;
    }
    http::response<http::buffer_body>& response = response_->get();
    if (response.result_int() == 101) {
      // deferd strips Upgrade, so the upstream had no request to switch protocols.
      onUpstreamError(http::make_error_code(http::error::bad_status));
      return;
    }
    if (!isValidStatus(response.result_int())) {
      onUpstreamError(http::make_error_code(http::error::bad_status));
      return;
    }
    if (response.result_int() < 200) {
      // Interim responses (103 Early Hints and the like) are not forwarded.
      readResponseHeader();
      return;
    }
    upstream_seconds_ =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - upstream_sent_at_).count();
    response_status_ = response.result_int();

    bool upstream_keep_alive = response_->keep_alive();
    removeHopByHop(response);
    if (response_status_ == 204) {
      // A 204 has no body, and RFC 9110 section 8.6 forbids a Content-Length on it.
      response.erase(http::field::content_length);
    }
    upstream_reusable_ = upstream_keep_alive && response.result_int() != 101;

    // A body delimited by the upstream closing the connection is re-framed as chunked for an
    // HTTP/1.1 client so its connection can stay open.
    bool has_body = !response_->is_done();
    bool chunked = response_->chunked();
    bool delimited = response_->content_length().has_value() || chunked;
    if (has_body && !delimited) {
      upstream_reusable_ = false;
      if (!client_http10_) {
        response.set(http::field::transfer_encoding, "chunked");
        chunked = true;
      } else {
        keep_alive_ = false;
      }
    }
    if (chunked && client_http10_) {
      // HTTP/1.0 has no chunked coding: the body goes as it is, ended by closing.
      response.erase(http::field::transfer_encoding);
      chunked = false;
      keep_alive_ = false;
    }
    if (draining_ || worker_.draining()) {
      keep_alive_ = false;
    }
    response.version(11);
    if (!keep_alive_) {
      // HTTP/1.1 is persistent by default; only closing needs saying.
      response.set(http::field::connection, "close");
    }

    if (chain_) {
      BeastHeaderMap headers(response);
      chain_->runResponseHeaders(static_cast<int>(response_status_), headers);
    }

    state_ = State::kSendingResponse;
    deadline_ = std::chrono::steady_clock::now() + listener_->config->limits.stream_idle_timeout;
    response_started_ = true;
    response_out_.start(chunked && has_body);
    appendResponseHead(response_out_.head, response);
    forward_response_trailers_ = response_->chunked() && chunked && has_body;
    if (forward_response_trailers_) {
      response_head_fields_.record(response);
    }

    if (response_->is_done()) {
      asio::async_write(socket_, response_out_.frame(nullptr, 0, false),
                        [self = shared_from_this()](error_code write_ec, size_t) {
                          self->onResponseWritten(write_ec);
                        });
      return;
    }
    if (!body_buffer_) {
      body_buffer_ = worker_.takeBuffer();
    }
    readResponseBody();
  }

  void readResponseBody() {
    auto& body = response_->get().body();
    body.data = body_buffer_.get();
    body.size = Worker::kBodyBufferSize;
    if (parseBuffered(*response_, upstream_->buffer)) {
      return;
    }
    if (error_code ec = stalledFraming(*response_, upstream_->buffer)) {
      onResponseBodyRead(ec);
      return;
    }
    upstream_->socket.async_read_some(upstream_->buffer.prepare(readSize(upstream_->buffer)),
                                      [self = shared_from_this()](error_code ec, size_t received) {
                                        self->upstream_->buffer.commit(received);
                                        if (ec == asio::error::eof) {
                                          // Ends a body delimited by the close; any other body is
                                          // cut short.
                                          self->response_->put_eof(ec);
                                          if (!ec) {
                                            self->onResponseBodyRead(ec);
                                            return;
                                          }
                                        }
                                        if (ec) {
                                          self->onResponseBodyRead(ec);
                                          return;
                                        }
                                        self->readResponseBody();
                                      });
  }

  void onResponseBodyRead(error_code ec) {
    if (ec == http::error::need_buffer) {
      ec = {};
    }
    if (ec) {
      onUpstreamError(ec);
      return;
    }
    auto& body = response_->get().body();
    size_t received = Worker::kBodyBufferSize - body.size;
    response_bytes_ += received;
    if (received == 0 && !response_->is_done()) {
      // Only framing was parsed (a chunk header, say): read on before writing anything.
      readResponseBody();
      return;
    }
    deadline_ = std::chrono::steady_clock::now() + listener_->config->limits.stream_idle_timeout;

    if (response_->is_done() && forward_response_trailers_) {
      // The upstream's trailer section, parsed into the response's fields. It reaches the client
      // only when the client's response is chunked too (not for HTTP/1.0).
      response_out_.setTrailers(response_head_fields_.trailers(response_->get()));
    }
    asio::async_write(socket_,
                      response_out_.frame(body_buffer_.get(), received, response_->is_done()),
                      [self = shared_from_this()](error_code write_ec, size_t) {
                        self->onResponseWritten(write_ec);
                      });
  }

  void onResponseWritten(error_code ec) {
    if (ec) {
      releaseUpstream(false);
      abortRequest(StreamEnd::kDownstreamClosed);
      return;
    }
    if (!response_->is_done()) {
      readResponseBody();
      return;
    }
    releaseUpstream(upstream_reusable_);
    finishRequest(StreamEnd::kCompleted);
  }

  // ---- HTTP/2 upstream (http2 clusters) ----
  //
  // The request goes out as a stream on one of the endpoint's multiplexed HTTP/2 connections.
  // Its body is read from the client one piece at a time, as the upstream's flow control pulls
  // it (readUpstreamBody). Response DATA is written to the client as HTTP/1.1 (chunked when the
  // upstream gave no content-length, with HTTP/2 trailers as chunked trailers) and acknowledged
  // upstream once written, so a slow client slows the upstream server.

  void startHttp2Upstream(UpstreamEndpoint& endpoint, const config::Cluster& cluster) {
    h2_mode_ = true;
    state_ = State::kSendingRequest;
    auto& request = request_->get();
    Http2RequestHead head;
    head.method = request.method_string();
    head.scheme = "http";
    head.authority = authority_.empty() ? endpoint_label_ : authority_;
    head.path = path_;
    for (const auto& field : request) {
      std::string name(field.name_string());
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (name == "host" || name == "expect" || isConnectionSpecific(name)) {
        continue;
      }
      head.fields.push_back(HeaderField{std::move(name), std::string(field.value())});
    }

    bool has_body = !request_->is_done();
    h2_body_ended_ = !has_body;
    if (request_->chunked()) {
      request_head_fields_.record(request);
    }
    upstream_sent_at_ = std::chrono::steady_clock::now();
    deadline_ = upstream_sent_at_ + listener_->config->limits.stream_idle_timeout;
    if (!has_body) {
      startRouteTimeout();
      state_ = State::kAwaitingResponse;
      request_sent_ = true;
    }
    // The pool calls back through a plain pointer, so the exchange itself keeps the session.
    h2_self_ = shared_from_this();
    h2_upstream_ =
        endpoint.http2Pool().startRequest(head, has_body, *this, cluster.connect_timeout);
    if (!has_body) {
      return;
    }
    if (!body_buffer_) {
      body_buffer_ = worker_.takeBuffer();
    }
    if (expect_continue_) {
      expect_continue_ = false;
      // The body is read once "100 Continue" is written. Until then the upstream stream may
      // already request body bytes, so the read counts as pending, which keeps that request
      // from starting a second read into the same buffer.
      h2_body_reading_ = true;
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                        [self = shared_from_this()](error_code ec, size_t) {
                          if (ec) {
                            self->abortRequest(StreamEnd::kDownstreamClosed);
                            return;
                          }
                          if (self->h2_upstream_ && self->sendingRequestBody()) {
                            self->readRequestBody();
                          } else {
                            self->h2_body_reading_ = false;
                          }
                        });
      return;
    }
    readRequestBody();
  }

  // Whether the request body still flows to an HTTP/2 upstream. It goes on after the response
  // head, since an HTTP/2 server may respond before the request ends (RFC 9113 section 8.1).
  bool sendingRequestBody() const {
    return state_ == State::kSendingRequest ||
           (state_ == State::kSendingResponse && !request_->is_done());
  }

  void releaseHttp2Upstream() {
    if (h2_upstream_) {
      if (h2_unconsumed_ > 0) {
        h2_upstream_->consumeResponse(h2_unconsumed_);
        h2_unconsumed_ = 0;
      }
      h2_upstream_.reset(); // resets the upstream stream unless it completed
    }
    if (h2_self_) {
      // Dropped by a posted handler: this may be the last reference to the session.
      asio::post(socket_.get_executor(), [self = std::move(h2_self_)] {});
    }
  }

  ssize_t readUpstreamBody(uint8_t* out, size_t length, uint32_t* flags,
                           HeaderList* trailers) override {
    size_t size = std::min(length, h2_body_.size());
    std::memcpy(out, h2_body_.data(), size);
    h2_body_.erase(0, size);
    h2_sent_ += size;
    if (size > 0) {
      request_sent_ = true;
    }
    if (!h2_body_.empty()) {
      return static_cast<ssize_t>(size);
    }
    if (!h2_body_ended_) {
      if (!h2_body_reading_) {
        // Posted: reading may end the request, which must not happen inside nghttp2's call.
        h2_body_reading_ = true;
        asio::post(socket_.get_executor(), [self = shared_from_this()] {
          if (self->h2_upstream_ && self->sendingRequestBody()) {
            self->readRequestBody();
          } else {
            self->h2_body_reading_ = false;
          }
        });
      }
      return size > 0 ? static_cast<ssize_t>(size) : static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED);
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    *trailers = std::move(request_trailers_);
    request_sent_ = true;
    if (!response_started_) {
      state_ = State::kAwaitingResponse;
      startRouteTimeout();
    }
    return static_cast<ssize_t>(size);
  }

  void onUpstreamHeaders(unsigned status, HeaderList fields, bool end_stream) override {
    if (state_ == State::kClosed || state_ == State::kReplying) {
      return;
    }
    upstream_seconds_ =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - upstream_sent_at_).count();
    response_status_ = status;
    removeConnectionSpecific(fields);

    http::response_header<> head;
    head.version(11);
    head.result(status);
    bool has_length = false;
    for (const HeaderField& field : fields) {
      head.insert(field.name, field.value);
      has_length = has_length || field.is("content-length");
    }
    bool head_request = request_->get().method() == http::verb::head;
    bool bodiless_status = status == 204 || status == 304;
    bool no_body = end_stream || head_request || bodiless_status;
    h2_chunked_ = false;
    if (!has_length && !head_request && !bodiless_status) {
      if (no_body) {
        head.set(http::field::content_length, "0");
      } else if (!client_http10_) {
        head.set(http::field::transfer_encoding, "chunked");
        h2_chunked_ = true;
      } else {
        keep_alive_ = false; // HTTP/1.0: the body ends when the connection closes
      }
    }
    if (!request_->is_done() || draining_ || worker_.draining()) {
      keep_alive_ = false;
    }
    if (!keep_alive_) {
      head.set(http::field::connection, "close");
    }
    if (chain_) {
      BeastHeaderMap headers(head);
      chain_->runResponseHeaders(static_cast<int>(status), headers);
    }

    state_ = State::kSendingResponse;
    response_started_ = true;
    deadline_ = std::chrono::steady_clock::now() + listener_->config->limits.stream_idle_timeout;
    h2_out_.clear();
    appendResponseHead(h2_out_, head);
    writeHttp2Response();
  }

  void onUpstreamData(const uint8_t* data, size_t size) override {
    if (state_ != State::kSendingResponse) {
      return;
    }
    h2_pending_.append(reinterpret_cast<const char*>(data), size);
    response_bytes_ += size;
    h2_unconsumed_ += size;
    writeHttp2Response();
  }

  void onUpstreamComplete(HeaderList trailers) override {
    if (state_ != State::kSendingResponse) {
      return;
    }
    removeConnectionSpecific(trailers);
    h2_trailers_ = std::move(trailers);
    h2_complete_ = true;
    writeHttp2Response();
  }

  void writeHttp2Response() {
    if (h2_writing_ || state_ != State::kSendingResponse) {
      return;
    }
    size_t body_bytes = h2_pending_.size();
    if (body_bytes > 0) {
      if (h2_chunked_) {
        char line[kChunkLineMax];
        h2_out_.append(line, formatChunkLine(line, body_bytes));
        h2_out_.append(h2_pending_);
        h2_out_.append("\r\n");
      } else {
        h2_out_.append(h2_pending_);
      }
      h2_pending_.clear();
    }
    bool last = h2_complete_ && !h2_last_written_;
    if (last) {
      h2_last_written_ = true;
      if (h2_chunked_) {
        appendLastChunk(h2_out_, h2_trailers_);
      }
    }
    if (h2_out_.empty()) {
      if (last) {
        // Nothing left to write, as after a response whose END_STREAM came in an empty DATA
        // frame. Finish outside this call, which may be nghttp2's.
        h2_writing_ = true;
        asio::post(socket_.get_executor(), [self = shared_from_this()] {
          if (self->state_ != State::kSendingResponse) {
            self->h2_writing_ = false;
            return;
          }
          self->onHttp2ResponseWritten({}, 0, true);
        });
      }
      return;
    }
    h2_writing_ = true;
    asio::async_write(socket_, asio::buffer(h2_out_),
                      [self = shared_from_this(), body_bytes, last](error_code ec, size_t) {
                        self->onHttp2ResponseWritten(ec, body_bytes, last);
                      });
  }

  void onHttp2ResponseWritten(error_code ec, size_t body_bytes, bool last) {
    h2_writing_ = false;
    h2_out_.clear();
    if (ec) {
      abortRequest(StreamEnd::kDownstreamClosed);
      return;
    }
    if (h2_upstream_ && body_bytes > 0) {
      size_t consumed = std::min(body_bytes, h2_unconsumed_);
      h2_unconsumed_ -= consumed;
      h2_upstream_->consumeResponse(consumed);
    }
    deadline_ = std::chrono::steady_clock::now() + listener_->config->limits.stream_idle_timeout;
    if (last) {
      releaseHttp2Upstream();
      finishRequest(StreamEnd::kCompleted);
      return;
    }
    writeHttp2Response();
  }

  void onUpstreamFailed(UpstreamFailure failure, bool retryable, std::string_view cause) override {
    if (state_ == State::kClosed || state_ == State::kReplying || !h2_mode_) {
      return;
    }
    if (retryable && !retried_ && h2_sent_ == 0 && !response_started_) {
      // The upstream did not process the request and no body byte is lost: send it once more.
      retried_ = true;
      h2_upstream_.reset();
      releaseEndpoint();
      h2_body_reading_ = false;
      acquireUpstream(nullptr);
      return;
    }
    warnUpstreamFailure(cause);
    recordUpstreamFailure(failure);
    releaseHttp2Upstream();
    if (response_started_) {
      reason_ = upstreamFailureName(failure);
      abortRequest(StreamEnd::kUpstreamFailed);
      return;
    }
    sendLocalReply(failure == UpstreamFailure::kConnectFailed    ? LocalReplyReason::kConnectFailed
                   : failure == UpstreamFailure::kConnectTimeout ? LocalReplyReason::kConnectTimeout
                   : failure == UpstreamFailure::kBadResponse
                       ? LocalReplyReason::kBadUpstreamResponse
                       : LocalReplyReason::kUpstreamReset);
  }

  // The session's deadline passed during an HTTP/2 upstream exchange.
  void onHttp2Deadline() {
    timed_out_ = false;
    bool route_timeout = route_deadline_ != MonotonicTime{} && !response_started_;
    switch (state_) {
    case State::kAwaitingResponse:
    case State::kSendingRequest:
      if (route_timeout) {
        warnUpstreamFailure("timed out");
        recordUpstreamFailure(UpstreamFailure::kTimeout);
        releaseHttp2Upstream();
        sendLocalReply(LocalReplyReason::kUpstreamTimeout);
        break;
      }
      [[fallthrough]];
    case State::kSendingResponse:
      // Nothing moved for stream_idle_timeout: close both sides.
      reason_ = upstreamFailureName(UpstreamFailure::kTimeout);
      abortRequest(response_started_ ? StreamEnd::kUpstreamFailed : StreamEnd::kDownstreamClosed);
      break;
    case State::kIdle:
    case State::kReadingHeader:
    case State::kReplying: {
      error_code ignored;
      socket_.cancel(ignored);
      break;
    }
    default:
      break;
    }
  }

  // ---- Failures ----

  void onUpstreamError(error_code ec) {
    bool timed_out = timed_out_;
    timed_out_ = false;

    // A kept-alive connection the upstream closed just as it was reused: if nothing of the
    // request body was consumed and nothing of a response arrived, send the request again on a
    // new connection. This is the race every HTTP/1.1 keep-alive client has to handle.
    bool nothing_received = !response_ || !response_->got_some();
    bool retryable = upstream_ && upstream_->reused && !retried_ && !timed_out &&
                     request_bytes_ == 0 && !response_started_ && nothing_received;
    if (retryable) {
      retried_ = true;
      releaseUpstream(false);
      releaseEndpoint();
      response_.reset();
      request_->get().body().data = nullptr;
      request_->get().body().size = 0;
      acquireUpstream(nullptr);
      return;
    }

    UpstreamFailure failure = UpstreamFailure::kReset;
    LocalReplyReason reason = LocalReplyReason::kUpstreamReset;
    if (timed_out) {
      failure = UpstreamFailure::kTimeout;
      reason = LocalReplyReason::kUpstreamTimeout;
    } else if (ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message) {
      failure = UpstreamFailure::kBadResponse;
      reason = LocalReplyReason::kBadUpstreamResponse;
    }
    warnUpstreamFailure(timed_out ? std::string("timed out") : ec.message());
    recordUpstreamFailure(failure);
    releaseUpstream(false);

    if (response_started_ && !response_out_.headPending()) {
      // Part of the response is already with the client: all that is left is to cut it off.
      reason_ = upstreamFailureName(failure);
      abortRequest(StreamEnd::kUpstreamFailed);
      return;
    }
    // The head waits for the first body bytes, so a body that fails at once still gets a reply.
    response_started_ = false;
    sendLocalReply(reason);
  }

  // Logs an upstream failure at warn level, at most once a second per worker. The counter
  // deferd_upstream_failures_total counts every one, and each line gives the number it stands
  // for.
  void warnUpstreamFailure(std::string_view cause) {
    worker_.warnUpstreamFailure(cluster_name_, endpoint_label_, cause);
  }

  void recordUpstreamFailure(UpstreamFailure failure) {
    snapshot_->clusters[cluster_index_].stats->failures[static_cast<size_t>(failure)]->Increment();
  }

  // ---- Local replies ----

  void sendLocalReply(LocalReplyReason reason) {
    const LocalReplySpec& spec = localReplySpec(reason);
    info_.local_reply = reason;
    listener_->stats->localReply(Protocol::kHttp1, reason)->Increment();
    reason_ = spec.reason;

    // A gRPC client reads the outcome from grpc-status, so such a reply is an HTTP 200.
    unsigned status = info_.grpc_status ? 200 : info_.local_reply_status.value_or(spec.status);
    response_status_ = status;
    state_ = State::kReplying;
    deadline_ = std::chrono::steady_clock::now() + listener_->config->limits.idle_timeout;
    releaseEndpoint();

    // A request body that was not read would be taken for the next request: close instead.
    bool body_pending = request_ && request_->is_header_done() && !request_->is_done();
    if (spec.close_connection || body_pending || !request_ || !request_->is_header_done()) {
      keep_alive_ = false;
    }
    if (draining_ || worker_.draining()) {
      keep_alive_ = false;
    }

    http::response<http::string_body> reply;
    reply.version(11);
    reply.result(status);
    reply.set(http::field::content_type, info_.grpc_status ? "application/grpc" : "text/plain");
    reply.set(kReasonHeader, spec.reason);
    if (info_.grpc_status) {
      reply.set("grpc-status", std::to_string(*info_.grpc_status));
      reply.set("grpc-message", spec.reason);
    }
    if (status == 503) {
      int64_t seconds = info_.retry_after ? info_.retry_after->count() : kRetryAfterSeconds;
      reply.set(http::field::retry_after, std::to_string(seconds));
    }
    if (!request_id_.empty()) {
      reply.set("x-request-id", request_id_);
    }
    bool head_request =
        request_ && request_->is_header_done() && request_->get().method() == http::verb::head;
    if (head_request) {
      reply.content_length(spec.reason.size() + 1);
    } else if (info_.grpc_status) {
      reply.content_length(0); // a trailers-only gRPC response has no message
    } else {
      reply.body() = std::string(spec.reason) + "\n";
      reply.prepare_payload();
      response_bytes_ = reply.body().size();
    }
    reply.keep_alive(keep_alive_);
    if (chain_) {
      BeastHeaderMap headers(reply);
      chain_->runResponseHeaders(static_cast<int>(status), headers);
    }

    // The head is written by appendResponseHead, as for forwarded responses, so a status
    // without a reason phrase gets an empty one rather than Beast's "<unknown-status>".
    auto out = std::make_shared<std::string>();
    appendResponseHead(*out, reply);
    if (!head_request) {
      out->append(reply.body());
    }
    asio::async_write(
        socket_, asio::buffer(*out),
        [self = shared_from_this(), out](error_code ec, size_t) { self->onLocalReplyWritten(ec); });
  }

  void onLocalReplyWritten(error_code ec) {
    if (ec) {
      keep_alive_ = false;
    }
    finishRequest(StreamEnd::kLocalReply);
  }

  // ---- Ending a request ----

  void releaseEndpoint() {
    if (counted_in_flight_ && endpoint_) {
      endpoint_->in_flight--;
    }
    counted_in_flight_ = false;
  }

  void releaseUpstream(bool reusable) {
    releaseHttp2Upstream();
    if (!upstream_) {
      return;
    }
    std::shared_ptr<UpstreamEndpoint> endpoint = upstream_->endpoint;
    endpoint->release(std::move(upstream_), reusable && !worker_.draining(),
                      std::chrono::steady_clock::now());
  }

  // Ends the current request's bookkeeping: metrics, access log, filters. Idempotent.
  void endRequest(StreamEnd end) {
    if (!in_request_) {
      return;
    }
    in_request_ = false;
    releaseEndpoint();
    if (chain_) {
      chain_->endStream(end);
    }
    listener_->stats->requests_in_flight->Decrement();

    auto now = std::chrono::steady_clock::now();
    double seconds = std::chrono::duration<double>(now - request_start_).count();
    if (route_ && response_status_ != 0) {
      route_->stats->recordRequest(Protocol::kHttp1, response_status_, seconds);
    }
    if (AccessLog* log = worker_.accessLog()) {
      AccessLogEntry entry;
      entry.listener = listener_->config->name;
      entry.cluster = cluster_name_;
      entry.method = method_;
      entry.authority = authority_;
      entry.path = path_;
      entry.protocol = protocol_;
      entry.request_id = request_id_;
      entry.downstream_address = peer_ip_;
      entry.upstream_endpoint = endpoint_label_;
      entry.status =
          end == StreamEnd::kCompleted || end == StreamEnd::kLocalReply ? response_status_ : 0;
      entry.request_bytes = request_bytes_;
      entry.response_bytes = response_bytes_;
      entry.duration_seconds = seconds;
      entry.upstream_seconds = upstream_seconds_;
      entry.reason = end == StreamEnd::kDownstreamClosed && reason_.empty()
                         ? std::string_view("downstream-closed")
                         : reason_;
      entry.decision = info_.decision;
      entry.urgency = info_.urgency;
      entry.requested_urgency = info_.requested_urgency;
      entry.priority_source = info_.priority_source;
      log->record(entry);
    }
  }

  void finishRequest(StreamEnd end) {
    endRequest(end);
    chain_.reset();
    headers_.reset();
    response_.reset();
    if (body_buffer_) {
      worker_.returnBuffer(std::move(body_buffer_));
    }
    if (!keep_alive_ || draining_ || worker_.draining()) {
      close();
      return;
    }
    adoptCurrentSnapshot();
    readHeader();
  }

  // Moves the connection to the worker's current snapshot between two requests, so a reload or
  // a runtime policy switch applies from the next request on. A connection whose listener (same
  // name and address) is gone from the new snapshot keeps the old one.
  void adoptCurrentSnapshot() {
    const std::shared_ptr<const Snapshot>& current = worker_.snapshot();
    if (!current || current == snapshot_) {
      return;
    }
    for (const ListenerRuntime& candidate : current->listeners) {
      if (candidate.config->name != listener_->config->name ||
          !(candidate.config->address == listener_->config->address)) {
        continue;
      }
      // Same name, so the same ListenerStats: connections_active stays balanced.
      snapshot_ = current;
      listener_ = &candidate;
      size_t needed = listener_->config->limits.max_header_bytes + Worker::kBodyBufferSize;
      if (buffer_.max_size() < needed) {
        buffer_.max_size(needed);
      }
      return;
    }
  }

  void abortRequest(StreamEnd end) {
    releaseUpstream(false);
    endRequest(end);
    close();
  }

  void close() {
    if (state_ == State::kClosed) {
      return;
    }
    state_ = State::kClosed;
    deadline_ = {};
    watching_ = false;
    releaseHttp2Upstream();
    error_code ignored;
    if (upstream_) {
      // An operation on the connection may still be pending and refers to its buffer: close
      // the socket to end it, and leave returning the connection to the destructor.
      upstream_->socket.close(ignored);
    }
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    socket_.close(ignored);
    unlink(); // leaves the worker's session list; the destructor runs with the last handler
  }

  Worker& worker_;
  std::shared_ptr<const Snapshot> snapshot_;
  const ListenerRuntime* listener_;
  Socket socket_;
  beast::flat_buffer buffer_;
  std::string peer_ip_;

  State state_ = State::kIdle;
  MonotonicTime deadline_{};
  MonotonicTime route_deadline_{}; // set by startRouteTimeout()
  bool timed_out_ = false;
  bool draining_ = false;
  bool watching_ = false;

  // The current request.
  std::optional<http::request_parser<http::buffer_body>> request_;
  OutgoingMessage request_out_;
  HeadFieldSnapshot request_head_fields_; // recorded for chunked requests, to find trailers
  HeaderList request_trailers_;           // the chunked request's trailers, once it ended
  std::optional<http::response_parser<http::buffer_body>> response_;
  OutgoingMessage response_out_;
  HeadFieldSnapshot response_head_fields_; // recorded for chunked responses
  bool forward_response_trailers_ = false; // both the upstream's and the client's are chunked
  std::optional<BeastHeaderMap> headers_;
  std::unique_ptr<FilterChain> chain_;
  std::unique_ptr<char[]> body_buffer_;
  ConnectionPtr upstream_;
  std::shared_ptr<UpstreamEndpoint> endpoint_;
  const RouteRuntime* route_ = nullptr;
  RequestInfo info_;

  bool in_request_ = false;
  bool keep_alive_ = true;
  bool expect_continue_ = false;
  bool client_http10_ = false; // an HTTP/1.0 request; the upstream always gets HTTP/1.1
  bool counted_in_flight_ = false;
  bool retried_ = false;
  bool request_sent_ = false;
  bool response_started_ = false;
  bool upstream_reusable_ = false;

  // The current request's HTTP/2 upstream exchange (http2 clusters).
  bool h2_mode_ = false;
  std::unique_ptr<Http2UpstreamRequest> h2_upstream_;
  std::shared_ptr<Http1Session> h2_self_; // keeps the session while h2_upstream_ is open
  std::string h2_body_;          // request body read from the client, not yet sent upstream
  bool h2_body_ended_ = false;   // h2_body_ ends the request body
  bool h2_body_reading_ = false; // a read of the request body is pending or posted
  uint64_t h2_sent_ = 0;         // request body bytes handed to the upstream
  std::string h2_out_;           // response bytes being written to the client
  std::string h2_pending_;       // response body received, waiting for the write
  size_t h2_unconsumed_ = 0;     // response bytes not yet acknowledged upstream
  bool h2_chunked_ = false;
  bool h2_writing_ = false;
  bool h2_complete_ = false;
  bool h2_last_written_ = false;
  HeaderList h2_trailers_;
  MonotonicTime request_start_{};
  MonotonicTime upstream_sent_at_{};
  unsigned response_status_ = 0;
  uint64_t request_bytes_ = 0;
  uint64_t response_bytes_ = 0;
  double upstream_seconds_ = -1;
  std::string method_;
  std::string path_;
  std::string authority_;
  std::string request_id_;
  std::string cluster_name_; // where the request goes: the route's, or a filter's choice
  size_t cluster_index_ = 0; // of cluster_name_ in the snapshot
  std::string endpoint_label_;
  std::string_view protocol_ = "HTTP/1.1";
  std::string_view reason_;
};

void startHttp1Session(Worker& worker, Socket socket, size_t listener_index,
                       std::string_view received) {
  auto session = std::make_shared<Http1Session>(worker, std::move(socket), listener_index);
  session->start(received);
}

} // namespace deferd
