#include "proxy/http2_upstream.h"

#include <boost/asio/buffer.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <nghttp2/nghttp2.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <limits>

#include "proxy/http2_memory.h"
#include "proxy/http2_stream_map.h"
#include "proxy/http_translation.h"
#include "proxy/net.h"

namespace deferd {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr size_t kReadBufferSize = 16 * 1024;
constexpr size_t kWriteBatchBytes = 64 * 1024;
// Streams per connection until the peer's SETTINGS sets a limit (RFC 9113 section 6.5.2
// recommends a limit of at least 100).
constexpr uint32_t kAssumedMaxConcurrentStreams = 100;
constexpr uint32_t kUpstreamWindowSize = 256 * 1024;
// The receive window of a whole upstream connection, shared by its streams: response bytes
// taken from the upstream and not yet passed downstream, at most.
constexpr int32_t kUpstreamConnectionWindowSize = 4 * 1024 * 1024;
// Response fields reserved per request, enough for a typical response in one allocation.
constexpr size_t kExpectedResponseFields = 8;

nghttp2_nv makeNv(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), NGHTTP2_NV_FLAG_NONE};
}

} // namespace

// The state of one request, shared by the connection and the owner's Http2UpstreamRequest.
struct Http2Exchange {
  Http2UpstreamHandler* handler = nullptr; // null once cancelled or finished
  Http2RequestHead head;                   // a copy, kept only while the connection is made
  bool has_body = false;
  int32_t stream_id = 0; // 0 until submitted
  bool request_sent = false;
  bool request_ended = false; // the request's END_STREAM is with nghttp2
  unsigned status = 0;
  HeaderList fields;
  HeaderList trailers;
  bool headers_done = false;
  bool complete = false;
  // nghttp2 found the response malformed (a field or pseudo-header RFC 9113 forbids, or a
  // content-length the DATA did not match) and resets the stream.
  bool malformed = false;
};

class Http2UpstreamConnection : public std::enable_shared_from_this<Http2UpstreamConnection> {
public:
  Http2UpstreamConnection(asio::io_context& io, tcp::endpoint address, std::string label,
                          ClusterStats* stats)
      : socket_(io), connect_timer_(io), address_(address), label_(std::move(label)),
        stats_(stats) {}

  ~Http2UpstreamConnection() {
    if (session_) {
      nghttp2_session_del(session_);
    }
  }

  void connect(std::chrono::milliseconds timeout);

  // Streams open or waiting, and the most this connection takes.
  size_t load() const { return streams_.size() + pending_.size(); }
  size_t capacity() const;
  bool usable() const { return !closed_ && !goaway_; }
  MonotonicTime idleSince() const { return idle_since_; }

  // Submits `head` at once on a ready session, which copies it. Otherwise the exchange keeps a
  // copy until the connection is ready.
  void add(std::shared_ptr<Http2Exchange> exchange, const Http2RequestHead& head);
  void resume(Http2Exchange& exchange);
  void consume(Http2Exchange& exchange, size_t size);
  void cancel(Http2Exchange& exchange);
  void shutdown();
  void close(UpstreamFailure failure, std::string_view cause);

  // Writes what nghttp2 has to send. From inside an nghttp2 call it only marks the need, and
  // the flush happens when that call returns.
  void flush();
  void scheduleFlush();

private:
  static int onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t name_length, const uint8_t* value, size_t value_length, uint8_t,
                      void* user_data);
  static int onFrameReceived(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static int onDataChunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data,
                         size_t length, void* user_data);
  static int onInvalidFrame(nghttp2_session*, const nghttp2_frame* frame, int error,
                            void* user_data);
  static int onStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                           void* user_data);
  static ssize_t readBody(nghttp2_session*, int32_t stream_id, uint8_t* buf, size_t length,
                          uint32_t* flags, nghttp2_data_source* source, void* user_data);

  bool createSession();
  void submit(const std::shared_ptr<Http2Exchange>& exchange, const Http2RequestHead& head);
  void read();

  Socket socket_;
  asio::steady_timer connect_timer_;
  tcp::endpoint address_;
  std::string label_;
  ClusterStats* stats_;
  nghttp2_session* session_ = nullptr;
  bool connected_ = false;
  bool closed_ = false;
  bool goaway_ = false;
  bool writing_ = false;
  bool in_nghttp2_ = false;
  bool flush_scheduled_ = false;
  int32_t goaway_last_stream_id_ = std::numeric_limits<int32_t>::max();
  Http2StreamMap<Http2Exchange> streams_;
  std::vector<std::shared_ptr<Http2Exchange>> pending_; // waiting for the connection
  std::array<uint8_t, kReadBufferSize> read_buffer_{};
  std::string write_buffer_;
  std::vector<nghttp2_nv> nv_; // the request being submitted
  MonotonicTime idle_since_ = std::chrono::steady_clock::now();
};

// ---------------------------------------------------------------------------------------------
// Connection

void Http2UpstreamConnection::connect(std::chrono::milliseconds timeout) {
  auto self = shared_from_this();
  connect_timer_.expires_after(timeout);
  connect_timer_.async_wait([self](const error_code& ec) {
    if (!ec && !self->connected_ && !self->closed_) {
      self->close(UpstreamFailure::kConnectTimeout, "connect timed out");
    }
  });
  socket_.async_connect(address_, [self](const error_code& ec) {
    self->connect_timer_.cancel();
    if (self->closed_) {
      return;
    }
    if (ec) {
      self->close(UpstreamFailure::kConnectFailed, ec.message());
      return;
    }
    error_code ignored;
    self->socket_.set_option(tcp::no_delay(true), ignored);
    self->connected_ = true;
    self->stats_->connections_created->Increment();
    self->stats_->connections_active->Increment();
    if (!self->createSession()) {
      self->close(UpstreamFailure::kConnectFailed, "creating the HTTP/2 session failed");
      return;
    }
    auto pending = std::move(self->pending_);
    self->pending_.clear();
    for (auto& exchange : pending) {
      if (exchange->handler) {
        self->submit(exchange, exchange->head);
      }
    }
    self->flush();
    self->read();
  });
}

bool Http2UpstreamConnection::createSession() {
  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, &onHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &onFrameReceived);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &onDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &onStreamClose);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks, &onInvalidFrame);
  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_max_send_header_block_length(option, kMaxSendHeaderBlock);
  int rv = nghttp2_session_client_new3(&session_, callbacks, this, option, http2Allocator());
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(callbacks);
  if (rv != 0) {
    return false;
  }
  std::array<nghttp2_settings_entry, 3> settings{{
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kUpstreamWindowSize},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
  }};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings.data(), settings.size());
  // SETTINGS cannot change the connection's window, which starts at 65535 bytes, so a
  // WINDOW_UPDATE on stream 0 raises it.
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                        kUpstreamConnectionWindowSize);
  return true;
}

size_t Http2UpstreamConnection::capacity() const {
  if (!session_) {
    return kAssumedMaxConcurrentStreams;
  }
  uint32_t remote =
      nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return std::min<uint32_t>(remote, 1000);
}

void Http2UpstreamConnection::add(std::shared_ptr<Http2Exchange> exchange,
                                  const Http2RequestHead& head) {
  idle_since_ = MonotonicTime{};
  if (!session_) {
    exchange->head = head;
    pending_.push_back(std::move(exchange));
    return;
  }
  submit(exchange, head);
  scheduleFlush();
}

void Http2UpstreamConnection::submit(const std::shared_ptr<Http2Exchange>& exchange,
                                     const Http2RequestHead& head) {
  // Reused from request to request: nghttp2_submit_request copies the fields.
  std::vector<nghttp2_nv>& nv = nv_;
  nv.clear();
  nv.push_back(makeNv(":method", head.method));
  nv.push_back(makeNv(":scheme", head.scheme.empty() ? std::string_view("http") : head.scheme));
  nv.push_back(makeNv(":authority", head.authority));
  nv.push_back(makeNv(":path", head.path));

  for (const HeaderField& field : head.fields) {
    if (isConnectionSpecific(field.name) && !field.is("te")) {
      continue;
    }
    if (field.is("host")) {
      continue; // :authority carries it
    }
    nv.push_back(makeNv(field.name, field.value));
    if (field.is("x-request-id")) {
      // Unique per request, so indexing it in HPACK's dynamic table would only evict entries
      // that later requests could reuse.
      nv.back().flags = NGHTTP2_NV_FLAG_NO_INDEX;
    }
  }

  nghttp2_data_provider provider{};
  provider.source.ptr = exchange.get();
  provider.read_callback = &readBody;
  int32_t stream_id = nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(),
                                             exchange->has_body ? &provider : nullptr, nullptr);
  if (stream_id < 0) {
    // Deferred, so the caller of startRequest() is never re-entered. A cancel in between clears
    // the handler.
    asio::post(socket_.get_executor(), [exchange, stream_id] {
      if (Http2UpstreamHandler* handler = std::exchange(exchange->handler, nullptr)) {
        handler->onUpstreamFailed(UpstreamFailure::kReset, true,
                                  nghttp2_strerror(static_cast<int>(stream_id)));
      }
    });
    goaway_ = true; // out of stream ids: new requests go to a new connection
    return;
  }
  exchange->stream_id = stream_id;
  exchange->request_ended = !exchange->has_body;
  exchange->head = {};
  streams_.insert(stream_id, exchange);
}

void Http2UpstreamConnection::resume(Http2Exchange& exchange) {
  if (session_ && exchange.stream_id > 0 && !closed_) {
    nghttp2_session_resume_data(session_, exchange.stream_id);
    scheduleFlush();
  }
}

void Http2UpstreamConnection::consume(Http2Exchange& exchange, size_t size) {
  if (session_ && exchange.stream_id > 0 && !closed_) {
    nghttp2_session_consume(session_, exchange.stream_id, size);
    scheduleFlush();
  }
}

void Http2UpstreamConnection::cancel(Http2Exchange& exchange) {
  exchange.handler = nullptr;
  if (exchange.stream_id == 0) {
    std::erase_if(pending_, [&exchange](const auto& item) { return item.get() == &exchange; });
    return;
  }
  // A response that ended before its request (RFC 9113 section 8.1) leaves the stream open on
  // this side until it is reset too.
  bool open = !exchange.complete || !exchange.request_ended;
  if (session_ && !closed_ && open && streams_.contains(exchange.stream_id)) {
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, exchange.stream_id, NGHTTP2_CANCEL);
    scheduleFlush();
  }
}

void Http2UpstreamConnection::shutdown() {
  if (closed_) {
    return;
  }
  if (load() == 0) {
    close(UpstreamFailure::kReset, "closed while idle");
    return;
  }
  if (session_) {
    goaway_ = true;
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);
    flush();
  }
}

void Http2UpstreamConnection::close(UpstreamFailure failure, std::string_view cause) {
  if (closed_) {
    return;
  }
  closed_ = true;
  if (connected_) {
    stats_->connections_active->Decrement();
  }
  error_code ignored;
  connect_timer_.cancel();
  socket_.close(ignored);

  // Every request still open fails. Those never sent (or refused) may go elsewhere.
  auto streams = streams_.takeAll();
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& exchange : pending) {
    if (Http2UpstreamHandler* handler = std::exchange(exchange->handler, nullptr)) {
      handler->onUpstreamFailed(failure, true, cause);
    }
  }
  // In stream order, so requests retried elsewhere keep the order they arrived in.
  std::vector<std::pair<int32_t, std::shared_ptr<Http2Exchange>>> open(streams.begin(),
                                                                       streams.end());
  std::sort(open.begin(), open.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [id, exchange] : open) {
    if (Http2UpstreamHandler* handler = std::exchange(exchange->handler, nullptr)) {
      bool retryable = !exchange->request_sent && !exchange->headers_done && id > 0 &&
                       id > goaway_last_stream_id_;
      handler->onUpstreamFailed(connected_ ? UpstreamFailure::kReset : failure, retryable, cause);
    }
  }
}

void Http2UpstreamConnection::scheduleFlush() {
  if (flush_scheduled_) {
    return;
  }
  flush_scheduled_ = true;
  asio::post(socket_.get_executor(), [self = shared_from_this()] {
    self->flush_scheduled_ = false;
    self->flush();
  });
}

void Http2UpstreamConnection::flush() {
  if (!session_ || in_nghttp2_ || writing_ || closed_) {
    return;
  }
  in_nghttp2_ = true;
  while (write_buffer_.size() < kWriteBatchBytes) {
    const uint8_t* data = nullptr;
    ssize_t length = nghttp2_session_mem_send(session_, &data);
    if (length < 0) {
      in_nghttp2_ = false;
      close(UpstreamFailure::kReset, nghttp2_strerror(static_cast<int>(length)));
      return;
    }
    if (length == 0) {
      break;
    }
    write_buffer_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(length));
  }
  in_nghttp2_ = false;
  if (write_buffer_.empty()) {
    if (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_)) {
      close(UpstreamFailure::kReset, "the HTTP/2 session ended");
    }
    return;
  }
  writing_ = true;
  asio::async_write(socket_, asio::buffer(write_buffer_),
                    [self = shared_from_this()](error_code ec, size_t) {
                      self->writing_ = false;
                      self->write_buffer_.clear();
                      if (ec) {
                        self->close(UpstreamFailure::kReset, ec.message());
                        return;
                      }
                      self->flush();
                    });
}

void Http2UpstreamConnection::read() {
  socket_.async_read_some(asio::buffer(read_buffer_), [self = shared_from_this()](error_code ec,
                                                                                  size_t received) {
    if (self->closed_) {
      return;
    }
    if (ec) {
      self->close(UpstreamFailure::kReset,
                  ec == asio::error::eof ? "the upstream closed the connection" : ec.message());
      return;
    }
    self->in_nghttp2_ = true;
    ssize_t used = nghttp2_session_mem_recv(self->session_, self->read_buffer_.data(), received);
    self->in_nghttp2_ = false;
    if (used < 0) {
      spdlog::debug("upstream {}: HTTP/2 protocol error: {}", self->label_,
                    nghttp2_strerror(static_cast<int>(used)));
      self->close(UpstreamFailure::kBadResponse, nghttp2_strerror(static_cast<int>(used)));
      return;
    }
    if (self->load() == 0) {
      self->idle_since_ = std::chrono::steady_clock::now();
    }
    self->flush();
    if (!self->closed_) {
      self->read();
    }
  });
}

int Http2UpstreamConnection::onHeader(nghttp2_session*, const nghttp2_frame* frame,
                                      const uint8_t* name, size_t name_length, const uint8_t* value,
                                      size_t value_length, uint8_t, void* user_data) {
  auto* self = static_cast<Http2UpstreamConnection*>(user_data);
  Http2Exchange* exchange = self->streams_.find(frame->hd.stream_id);
  if (!exchange || frame->hd.type != NGHTTP2_HEADERS) {
    return 0;
  }
  std::string_view key(reinterpret_cast<const char*>(name), name_length);
  std::string_view text(reinterpret_cast<const char*>(value), value_length);
  if (exchange->headers_done) {
    exchange->trailers.push_back(HeaderField{std::string(key), std::string(text)});
  } else if (key == ":status") {
    exchange->status = 0;
    for (char digit : text) {
      exchange->status = exchange->status * 10 + static_cast<unsigned>(digit - '0');
    }
  } else if (!key.starts_with(':')) {
    exchange->fields.push_back(HeaderField{std::string(key), std::string(text)});
  }
  return 0;
}

int Http2UpstreamConnection::onFrameReceived(nghttp2_session*, const nghttp2_frame* frame,
                                             void* user_data) {
  auto* self = static_cast<Http2UpstreamConnection*>(user_data);
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    self->goaway_ = true;
    self->goaway_last_stream_id_ = frame->goaway.last_stream_id;
    return 0;
  }
  Http2Exchange* exchange = self->streams_.find(frame->hd.stream_id);
  if (!exchange) {
    return 0;
  }
  bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (frame->hd.type == NGHTTP2_HEADERS && !exchange->headers_done) {
    if (!isValidStatus(exchange->status)) {
      nghttp2_submit_rst_stream(self->session_, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                NGHTTP2_PROTOCOL_ERROR);
      if (Http2UpstreamHandler* handler = std::exchange(exchange->handler, nullptr)) {
        handler->onUpstreamFailed(UpstreamFailure::kBadResponse, false,
                                  "status code outside 100 to 599");
      }
      return 0;
    }
    if (exchange->status < 200) {
      // An interim response: its fields are not forwarded, the final head follows.
      exchange->fields.clear();
      return 0;
    }
    exchange->headers_done = true;
    if (exchange->handler) {
      exchange->handler->onUpstreamHeaders(exchange->status, std::move(exchange->fields),
                                           end_stream);
    }
  }
  if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) && end_stream) {
    exchange->complete = true;
    if (Http2UpstreamHandler* handler = std::exchange(exchange->handler, nullptr)) {
      handler->onUpstreamComplete(std::move(exchange->trailers));
    }
  }
  return 0;
}

int Http2UpstreamConnection::onDataChunk(nghttp2_session*, uint8_t, int32_t stream_id,
                                         const uint8_t* data, size_t length, void* user_data) {
  auto* self = static_cast<Http2UpstreamConnection*>(user_data);
  Http2Exchange* exchange = self->streams_.find(stream_id);
  if (exchange && exchange->handler) {
    exchange->handler->onUpstreamData(data, length);
  } else {
    nghttp2_session_consume(self->session_, stream_id, length);
  }
  return 0;
}

int Http2UpstreamConnection::onInvalidFrame(nghttp2_session*, const nghttp2_frame* frame, int error,
                                            void* user_data) {
  auto* self = static_cast<Http2UpstreamConnection*>(user_data);
  if (Http2Exchange* exchange = self->streams_.find(frame->hd.stream_id)) {
    exchange->malformed = true;
    spdlog::debug("upstream {}: malformed HTTP/2 response on stream {}: {}", self->label_,
                  frame->hd.stream_id, nghttp2_strerror(error));
  }
  return 0;
}

int Http2UpstreamConnection::onStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                                           void* user_data) {
  auto* self = static_cast<Http2UpstreamConnection*>(user_data);
  std::shared_ptr<Http2Exchange> exchange = self->streams_.take(stream_id);
  if (!exchange) {
    return 0;
  }
  if (Http2UpstreamHandler* handler = std::exchange(exchange->handler, nullptr)) {
    if (exchange->malformed) {
      handler->onUpstreamFailed(UpstreamFailure::kBadResponse, false, "malformed HTTP/2 response");
    } else {
      // Closed without END_STREAM from the upstream: a reset (or GOAWAY above its last stream).
      bool refused =
          error_code == NGHTTP2_REFUSED_STREAM || stream_id > self->goaway_last_stream_id_;
      bool retryable = refused && !exchange->headers_done;
      handler->onUpstreamFailed(UpstreamFailure::kReset, retryable,
                                nghttp2_http2_strerror(error_code));
    }
  }
  if (self->load() == 0) {
    self->idle_since_ = std::chrono::steady_clock::now();
  }
  return 0;
}

ssize_t Http2UpstreamConnection::readBody(nghttp2_session* session, int32_t stream_id, uint8_t* buf,
                                          size_t length, uint32_t* flags,
                                          nghttp2_data_source* source, void*) {
  auto* exchange = static_cast<Http2Exchange*>(source->ptr);
  if (!exchange->handler) {
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  HeaderList trailers;
  ssize_t size = exchange->handler->readUpstreamBody(buf, length, flags, &trailers);
  if (size > 0) {
    exchange->request_sent = true;
  }
  if (*flags & NGHTTP2_DATA_FLAG_EOF) {
    exchange->request_ended = true;
  }
  if ((*flags & NGHTTP2_DATA_FLAG_EOF) && !trailers.empty()) {
    std::vector<nghttp2_nv> nv;
    for (const HeaderField& field : trailers) {
      nv.push_back(makeNv(field.name, field.value));
    }
    if (nghttp2_submit_trailer(session, stream_id, nv.data(), nv.size()) == 0) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
  }
  return size;
}

// ---------------------------------------------------------------------------------------------
// Request handle

Http2UpstreamRequest::Http2UpstreamRequest(std::shared_ptr<Http2UpstreamConnection> connection,
                                           std::shared_ptr<Http2Exchange> exchange)
    : connection_(std::move(connection)), exchange_(std::move(exchange)) {}

Http2UpstreamRequest::~Http2UpstreamRequest() { cancel(); }

void Http2UpstreamRequest::resumeBody() {
  if (exchange_->handler) {
    connection_->resume(*exchange_);
  }
}

void Http2UpstreamRequest::consumeResponse(size_t size) { connection_->consume(*exchange_, size); }

void Http2UpstreamRequest::cancel() { connection_->cancel(*exchange_); }

// ---------------------------------------------------------------------------------------------
// Pool

Http2ConnectionPool::Http2ConnectionPool(asio::io_context& io, tcp::endpoint address,
                                         std::string label, ClusterStats* stats,
                                         uint32_t max_connections)
    : io_(io), address_(address), label_(std::move(label)), stats_(stats),
      max_connections_(std::max<uint32_t>(max_connections, 1)) {}

Http2ConnectionPool::~Http2ConnectionPool() {
  for (auto& connection : connections_) {
    connection->shutdown();
  }
}

std::unique_ptr<Http2UpstreamRequest>
Http2ConnectionPool::startRequest(const Http2RequestHead& head, bool has_body,
                                  Http2UpstreamHandler& handler,
                                  std::chrono::milliseconds connect_timeout) {
  std::erase_if(connections_, [](const auto& connection) {
    return !connection->usable() && connection->load() == 0;
  });

  std::shared_ptr<Http2UpstreamConnection> chosen;
  std::shared_ptr<Http2UpstreamConnection> least_busy;
  size_t usable = 0;
  for (auto& connection : connections_) {
    if (!connection->usable()) {
      continue;
    }
    usable++;
    if (connection->load() < connection->capacity()) {
      chosen = connection;
      break;
    }
    if (!least_busy || connection->load() < least_busy->load()) {
      least_busy = connection;
    }
  }
  if (!chosen && usable >= max_connections_ && least_busy) {
    chosen = least_busy; // nghttp2 queues the request until the peer allows another stream
  }
  if (!chosen) {
    chosen = std::make_shared<Http2UpstreamConnection>(io_, address_, label_, stats_);
    connections_.push_back(chosen);
    chosen->connect(connect_timeout);
  }

  auto exchange = std::make_shared<Http2Exchange>();
  exchange->handler = &handler;
  exchange->has_body = has_body;
  exchange->fields.reserve(kExpectedResponseFields);
  chosen->add(exchange, head);
  return std::make_unique<Http2UpstreamRequest>(chosen, std::move(exchange));
}

void Http2ConnectionPool::closeIdle(MonotonicTime now, std::chrono::milliseconds idle_timeout) {
  for (auto& connection : connections_) {
    MonotonicTime since = connection->idleSince();
    if (connection->load() == 0 && since != MonotonicTime{} && now - since >= idle_timeout) {
      connection->shutdown();
    }
  }
  std::erase_if(connections_, [](const auto& connection) {
    return !connection->usable() && connection->load() == 0;
  });
}

void Http2ConnectionPool::closeAllIdle() {
  for (auto& connection : connections_) {
    connection->shutdown();
  }
}

} // namespace deferd
