#include "proxy/http2_session.h"

#include <boost/asio/buffer.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>

#include <nghttp2/nghttp2.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proxy/coarse_clock.h"
#include "proxy/filter_chain.h"
#include "proxy/grpc.h"
#include "proxy/http1_response_parser.h"
#include "proxy/http2_memory.h"
#include "proxy/http2_stream_map.h"
#include "proxy/http2_upstream.h"
#include "proxy/http_translation.h"
#include "proxy/worker.h"

namespace deferd {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr size_t kReadBufferSize = 16 * 1024;
constexpr size_t kWriteBatchBytes = 64 * 1024;
// Response bytes a stream keeps for its client before it stops reading the upstream.
constexpr size_t kSendBufferLimit = 128 * 1024;
constexpr std::string_view kProtocolName = "HTTP/2";
// Time between the drain's two GOAWAY frames, at least a round trip on any sane network. The
// worker's tick sends the second, so it goes out up to a tick later.
constexpr std::chrono::milliseconds kDrainNoticeLead{1000};
// Request fields reserved per stream, so a typical request (plus the x-forwarded-for and
// x-request-id that deferd adds) fills one allocation.
constexpr size_t kExpectedFields = 16;

nghttp2_nv makeNv(std::string_view name, std::string_view value,
                  uint8_t flags = NGHTTP2_NV_FLAG_NONE) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), flags};
}

// For fields that outlive their HEADERS frame: nghttp2 encodes them from the caller's memory
// when it sends the frame, instead of copying them when the frame is submitted.
constexpr uint8_t kNvNoCopy = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;

} // namespace

class Http2Session;

// One request stream of a downstream HTTP/2 connection and its upstream exchange: HTTP/1.1 on a
// pooled connection, or a stream on a multiplexed HTTP/2 connection for http2 clusters.
//
// Lifetime: the session's stream map and every pending upstream handler hold a shared_ptr.
// When nghttp2 closes the stream, detach() ends the upstream exchange and drops the pointer to
// the session. Handlers that complete later find `detached_` set and return.
class Http2Stream final : public ChainOwner,
                          public Http2UpstreamHandler,
                          public std::enable_shared_from_this<Http2Stream> {
public:
  Http2Stream(std::shared_ptr<Http2Session> session, int32_t id);
  ~Http2Stream() override;

  // --- Called by the session from nghttp2 callbacks. ---
  void onHeader(std::string_view name, std::string_view value, bool trailer);
  // `end_stream`: the HEADERS frame ended the request, so it has no body.
  void onRequestHeaders(bool end_stream);
  void onRequestData(const uint8_t* data, size_t size);
  void onRequestEnd();
  void onClosed(uint32_t error_code);
  // The frame with the response's END_STREAM went out.
  void onResponseSent();
  // nghttp2 dropped one of this stream's header blocks unsent (larger than the sending limit).
  // A response head that never left becomes a 502; trailers end the stream with a reset.
  void onHeadersNotSent(bool response_head);
  // Submits the response head from status_ and response_fields_, with the body from
  // readResponseBody() when `has_body`. Returns nghttp2's result.
  int submitHead(bool has_body);
  ssize_t readResponseBody(uint8_t* out, size_t length, uint32_t* flags);
  void onTick(MonotonicTime now);

  // --- ChainOwner ---
  RequestInfo& requestInfo() override { return info_; }
  Dispatcher& dispatcher() override;
  void onChainContinue() override { acquireUpstream(nullptr); }
  void onChainLocalReply(LocalReplyReason reason) override { sendLocalReply(reason); }
  bool onChainRouteToCluster(size_t cluster_index) override;

  // --- Http2UpstreamHandler (http2 clusters) ---
  void onUpstreamHeaders(unsigned status, HeaderList fields, bool end_stream) override;
  void onUpstreamData(const uint8_t* data, size_t size) override;
  void onUpstreamComplete(HeaderList trailers) override;
  void onUpstreamFailed(UpstreamFailure failure, bool retryable, std::string_view cause) override;
  ssize_t readUpstreamBody(uint8_t* out, size_t length, uint32_t* flags,
                           HeaderList* trailers) override;

private:
  enum class State {
    kReceivingHeaders,
    kFiltering,
    kConnecting,
    kProxying,
    kReplied,   // a local reply was submitted
    kResetting, // RST_STREAM was submitted
    kClosed,
  };

  nghttp2_session* nghttp2() const;
  void flushSession();

  void beginRequest();
  void acquireUpstream(const UpstreamEndpoint* exclude);
  void onUpstreamAcquired(AcquireResult result);
  void startHttp2Upstream(UpstreamEndpoint& endpoint, const config::Cluster& cluster);
  void releaseHttp2Upstream();
  void setUpstreamGrpcTimeout();
  void startRouteTimeout();
  void restartIdleTimeout();
  bool submitResponse(unsigned status, HeaderList fields, bool has_body);
  void writeUpstream();
  void onUpstreamWritten(error_code ec, size_t body_bytes);
  void readUpstream();
  void onUpstreamRead(error_code ec, size_t received);
  void processUpstreamBytes();
  bool onResponseHead();
  void onResponseComplete();
  void onUpstreamError(UpstreamFailure failure, LocalReplyReason reason, std::string_view cause);
  bool retryOnNewConnection();
  void sendLocalReply(LocalReplyReason reason);
  void resetStream(uint32_t error_code, std::string_view reason);
  void resumeResponseData();
  void acknowledgeRequestBytes(size_t size);
  void releaseEndpoint();
  void releaseUpstream(bool reusable);
  void endRequest(StreamEnd end);
  void detach();
  void recordUpstreamFailure(UpstreamFailure failure);

  std::shared_ptr<Http2Session> session_;
  int32_t id_;
  State state_ = State::kReceivingHeaders;
  bool detached_ = false;

  // Request.
  Http2RequestHead head_;
  HeaderList request_trailers_;
  size_t header_bytes_ = 0;
  size_t header_count_ = 0;
  bool header_overflow_ = false;
  bool too_many_headers_ = false;
  bool request_ended_ = false;
  bool is_grpc_ = false;
  BodyFraming framing_ = BodyFraming::kNone;
  std::string request_body_;  // received, not yet written upstream
  size_t unacknowledged_ = 0; // request body bytes not yet passed to nghttp2_session_consume
  std::string upstream_out_;  // bytes being written upstream
  bool upstream_writing_ = false;
  bool request_head_sent_ = false;
  bool request_sent_ = false; // head, body and end of the body all written
  std::optional<HeaderListMap> header_map_;
  std::unique_ptr<FilterChain> chain_;
  const RouteRuntime* route_ = nullptr;
  RequestInfo info_;
  std::string request_id_;
  std::string cluster_name_;
  size_t cluster_index_ = 0; // the route's cluster, or the one a filter sent the stream to

  // Upstream.
  std::shared_ptr<UpstreamEndpoint> endpoint_;
  std::string endpoint_label_;
  bool counted_in_flight_ = false;
  bool retried_ = false;
  ConnectionPtr upstream_;
  bool upstream_reading_ = false;
  bool upstream_paused_ = false;
  bool upstream_unparsed_ = false; // upstream bytes read but not parsed while paused
  std::optional<Http1ResponseParser> parser_;
  std::unique_ptr<Http2UpstreamRequest> h2_upstream_; // http2 clusters
  size_t h2_unconsumed_ = 0;  // response bytes not yet passed to consumeResponse()
  uint64_t h2_body_sent_ = 0; // request body bytes handed to the HTTP/2 upstream

  // Response.
  bool response_submitted_ = false;
  bool response_complete_ = false; // every response byte and the trailers are with nghttp2
  std::string response_body_;      // waiting for the data provider
  HeaderList response_trailers_;
  HeaderList response_fields_;
  std::string status_text_;
  std::string grpc_status_;

  // Deadlines and accounting.
  MonotonicTime deadline_{};       // stream idle timeout
  MonotonicTime route_deadline_{}; // see startRouteTimeout()
  MonotonicTime grpc_deadline_{};  // from grpc-timeout
  bool in_request_ = false;
  MonotonicTime start_{};
  MonotonicTime upstream_sent_at_{}; // when the upstream connection was ready
  unsigned status_ = 0;
  uint64_t request_bytes_ = 0;
  uint64_t response_bytes_ = 0;
  double upstream_seconds_ = -1;
  std::string_view reason_;
};

class Http2Session final : public Session, public std::enable_shared_from_this<Http2Session> {
public:
  Http2Session(Worker& worker, Socket socket, size_t listener_index)
      : worker_(worker), snapshot_(worker.snapshot()),
        listener_(&snapshot_->listeners[listener_index]), socket_(std::move(socket)) {}

  ~Http2Session() override {
    if (session_) {
      nghttp2_session_del(session_);
    }
    listener_->stats->connections_active->Decrement();
    worker_.onSessionClosed();
  }

  bool start(std::string_view received);

  // --- Session ---
  void onTick(MonotonicTime now) override;
  void onDrain() override;
  // Submits the drain's GOAWAY with the last stream received.
  void sendFinalGoaway();
  void abort() override { close(); }

  // --- Used by streams ---
  Worker& worker() { return worker_; }
  const Snapshot& snapshot() const { return *snapshot_; }
  const ListenerRuntime& listener() const { return *listener_; }
  const std::string& peerIp() const { return peer_ip_; }
  nghttp2_session* nghttp2() const { return session_; }
  bool closed() const { return closed_; }

  // Writes whatever nghttp2 has to send. Called from inside an nghttp2 callback it does
  // nothing, and the caller of nghttp2 flushes afterwards.
  void flush();
  // Submits RST_STREAM for the stream once its queued frames, its response HEADERS among them,
  // are serialized.
  void resetAfterHeaders(int32_t id, uint32_t error_code);

  // Flushes once the handlers that are ready now have run, so the responses of several
  // upstream reads leave in one write instead of one write each.
  void scheduleFlush();

  // Returns an empty name-value array to build a header list in. It is shared by the
  // connection's streams and reused, so it is valid until the next call only. nghttp2's submit
  // functions copy the array, and the names and values unless flagged not to.
  std::vector<nghttp2_nv>& nvScratch() {
    nv_scratch_.clear();
    return nv_scratch_;
  }

private:
  static int onBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static int onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t name_length, const uint8_t* value, size_t value_length, uint8_t,
                      void* user_data);
  static int onFrameReceived(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static int onDataChunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data,
                         size_t length, void* user_data);
  static int onStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                           void* user_data);
  static int onFrameSent(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static int onFrameNotSent(nghttp2_session*, const nghttp2_frame* frame, int error,
                            void* user_data);

  // Takes a token from the client's RST_STREAM budget: the listener's reset_burst tokens,
  // refilled at reset_rate per second. Returns false when the budget is spent.
  bool takeResetToken();
  // Counts a received DATA frame. Returns false when the client has sent more empty DATA
  // frames in a row than the listener's max_empty_frames.
  bool countDataFrame(const nghttp2_frame* frame);
  // Writes GOAWAY ENHANCE_YOUR_CALM straight to the socket, without waiting, and counts it.
  // nghttp2 reports a flood of unread control frames without queueing a GOAWAY of its own.
  void sendFloodGoaway();

  void read();
  void onRead(error_code ec, size_t received);
  // Appends nghttp2's outgoing frames to the write buffer until it is full or nghttp2 has
  // nothing more (then `drained` is set). Returns false after closing the session on an error.
  bool serialize(bool& drained);
  void close();

  Worker& worker_;
  std::shared_ptr<const Snapshot> snapshot_;
  const ListenerRuntime* listener_;
  Socket socket_;
  std::string peer_ip_;
  nghttp2_session* session_ = nullptr;
  Http2StreamMap<Http2Stream> streams_;
  std::array<uint8_t, kReadBufferSize> read_buffer_{};
  std::string write_buffer_;
  std::vector<nghttp2_nv> nv_scratch_;
  // Stream ids and error codes of resets that wait for their stream's HEADERS to go out.
  std::vector<std::pair<int32_t, uint32_t>> resets_after_headers_;
  bool writing_ = false;
  bool flush_scheduled_ = false;
  bool in_nghttp2_ = false; // inside mem_recv or mem_send: nghttp2 must not be re-entered
  bool draining_ = false;
  bool final_goaway_sent_ = false;  // the drain's GOAWAY with the last stream id
  MonotonicTime drain_notice_at_{}; // when the drain's first GOAWAY was submitted
  bool closed_ = false;
  MonotonicTime idle_since_{};
  double reset_tokens_ = 0;   // set from the listener's reset_burst in start()
  uint32_t empty_frames_ = 0; // DATA frames in a row with no payload and no END_STREAM
  MonotonicTime reset_refilled_at_{};
};

// ---------------------------------------------------------------------------------------------
// Session

bool Http2Session::start(std::string_view received) {
  error_code ec;
  socket_.set_option(tcp::no_delay(true), ec);
  auto remote = socket_.remote_endpoint(ec);
  if (!ec) {
    peer_ip_ = remote.address().to_string();
  }
  // Protocol detection counted the connection in connections_active and connections_total.
  worker_.addSession(*this);
  idle_since_ = coarseNow();

  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, &onBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, &onHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &onFrameReceived);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &onDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &onStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, &onFrameSent);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks, &onFrameNotSent);

  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_auto_window_update(option, 1);
  const config::Http2Limits& http2 = listener_->config->http2;
  reset_tokens_ = http2.reset_burst;
  nghttp2_option_set_max_outbound_ack(option, http2.max_control_frames);
  // deferd's own limit (takeResetToken) is lower and ends the connection first; nghttp2's is
  // a backstop.
  nghttp2_option_set_stream_reset_rate_limit(option, uint64_t{http2.reset_burst} * 2,
                                             http2.reset_rate);
  nghttp2_option_set_max_continuations(option, http2.max_continuations);
  nghttp2_option_set_max_send_header_block_length(option, kMaxSendHeaderBlock);

  int rv = nghttp2_session_server_new3(&session_, callbacks, this, option, http2Allocator());
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(callbacks);
  if (rv != 0) {
    spdlog::error("listener {}: creating an HTTP/2 session failed: {}", listener_->config->name,
                  nghttp2_strerror(rv));
    close();
    return false;
  }

  std::array<nghttp2_settings_entry, 4> settings{{
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, http2.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, http2.initial_window_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, listener_->config->limits.max_header_bytes},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
  }};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings.data(), settings.size());
  // SETTINGS cannot change the connection's window, which starts at 65535 bytes for all streams
  // to share, so a WINDOW_UPDATE on stream 0 raises it.
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                        static_cast<int32_t>(http2.connection_window_size));

  in_nghttp2_ = true;
  ssize_t used = nghttp2_session_mem_recv(
      session_, reinterpret_cast<const uint8_t*>(received.data()), received.size());
  in_nghttp2_ = false;
  if (used < 0) {
    close();
    return false;
  }
  flush();
  read();
  return true;
}

void Http2Session::sendFloodGoaway() {
  listener_->stats->http2_flood_goaways->Increment();
  spdlog::info("listener {}: HTTP/2 client {} queued too many control frames unread; sent "
               "GOAWAY ENHANCE_YOUR_CALM",
               listener_->config->name, peer_ip_);
  if (writing_) {
    return; // the socket is busy with earlier frames: closing is all that is left
  }

  // RFC 9113 section 6.8: a 9-byte frame header and an 8-byte payload.
  auto last_stream = static_cast<uint32_t>(nghttp2_session_get_last_proc_stream_id(session_));
  std::array<uint8_t, 17> frame{0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0};
  for (int i = 0; i < 4; ++i) {
    frame[9 + i] = static_cast<uint8_t>(last_stream >> (24 - 8 * i));
    frame[13 + i] = static_cast<uint8_t>(uint32_t{NGHTTP2_ENHANCE_YOUR_CALM} >> (24 - 8 * i));
  }

  // A flooding client may not read at all, so the write must not wait for room.
  error_code ignored;
  socket_.non_blocking(true, ignored);
  socket_.write_some(asio::buffer(frame), ignored);
}

bool Http2Session::countDataFrame(const nghttp2_frame* frame) {
  // Padding is no payload either.
  bool empty =
      frame->hd.length <= frame->data.padlen && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0;
  empty_frames_ = empty ? empty_frames_ + 1 : 0;
  return empty_frames_ <= listener_->config->http2.max_empty_frames;
}

bool Http2Session::takeResetToken() {
  const config::Http2Limits& limits = listener_->config->http2;
  MonotonicTime now = std::chrono::steady_clock::now();
  if (reset_refilled_at_ != MonotonicTime{}) {
    double seconds = std::chrono::duration<double>(now - reset_refilled_at_).count();
    reset_tokens_ =
        std::min<double>(limits.reset_burst, reset_tokens_ + seconds * limits.reset_rate);
  }
  reset_refilled_at_ = now;
  if (reset_tokens_ < 1) {
    return false;
  }
  reset_tokens_ -= 1;
  return true;
}

void Http2Session::read() {
  if (closed_) {
    return;
  }
  socket_.async_read_some(
      asio::buffer(read_buffer_),
      [self = shared_from_this()](error_code ec, size_t received) { self->onRead(ec, received); });
}

void Http2Session::onRead(error_code ec, size_t received) {
  if (closed_) {
    return;
  }
  if (ec) {
    if (ec != asio::error::eof && ec != asio::error::connection_reset &&
        ec != asio::error::operation_aborted) {
      spdlog::debug("listener {}: HTTP/2 read from {} failed: {}", listener_->config->name,
                    peer_ip_, ec.message());
    }
    close();
    return;
  }
  idle_since_ = coarseNow();

  in_nghttp2_ = true;
  ssize_t used = nghttp2_session_mem_recv(session_, read_buffer_.data(), received);
  in_nghttp2_ = false;
  if (used < 0) {
    // A connection error: nghttp2 has queued GOAWAY where the protocol requires one, except
    // after a flood, which ends the session without it.
    spdlog::debug("listener {}: HTTP/2 connection from {} failed: {}", listener_->config->name,
                  peer_ip_, nghttp2_strerror(static_cast<int>(used)));
    listener_->stats->http2_connection_errors->Increment();
    if (used == NGHTTP2_ERR_FLOODED) {
      sendFloodGoaway();
      close();
      return;
    }
    if (used == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
      close();
      return;
    }
    nghttp2_session_terminate_session(session_, NGHTTP2_PROTOCOL_ERROR);
  }
  flush();
  if (!closed_ && nghttp2_session_want_read(session_)) {
    read();
  }
}

void Http2Session::flush() {
  if (in_nghttp2_ || writing_ || closed_) {
    return;
  }
  in_nghttp2_ = true;
  bool drained = false;
  if (!serialize(drained)) {
    return;
  }
  if (drained && !resets_after_headers_.empty()) {
    // Every queued HEADERS frame is in the buffer now, so the resets waiting for them go out.
    for (auto [id, error_code] : std::exchange(resets_after_headers_, {})) {
      if (streams_.find(id)) {
        nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, error_code);
      }
    }
    if (!serialize(drained)) {
      return;
    }
  }
  in_nghttp2_ = false;

  if (write_buffer_.empty()) {
    bool finished = !nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_);
    if (finished || (final_goaway_sent_ && streams_.empty())) {
      close();
    }
    return;
  }
  writing_ = true;
  asio::async_write(socket_, asio::buffer(write_buffer_),
                    [self = shared_from_this()](error_code ec, size_t) {
                      self->writing_ = false;
                      self->write_buffer_.clear();
                      if (ec) {
                        self->close();
                        return;
                      }
                      self->flush();
                    });
}

bool Http2Session::serialize(bool& drained) {
  drained = false;
  while (write_buffer_.size() < kWriteBatchBytes) {
    const uint8_t* data = nullptr;
    ssize_t length = nghttp2_session_mem_send(session_, &data);
    if (length < 0) {
      spdlog::debug("listener {}: HTTP/2 send to {} failed: {}", listener_->config->name, peer_ip_,
                    nghttp2_strerror(static_cast<int>(length)));
      in_nghttp2_ = false;
      close();
      return false;
    }
    if (length == 0) {
      drained = true;
      break;
    }
    write_buffer_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(length));
  }
  return true;
}

void Http2Session::resetAfterHeaders(int32_t id, uint32_t error_code) {
  resets_after_headers_.emplace_back(id, error_code);
  if (in_nghttp2_ || writing_) {
    scheduleFlush(); // a write in flight flushes again when it completes
    return;
  }
  flush();
}

void Http2Session::scheduleFlush() {
  if (flush_scheduled_ || closed_) {
    return;
  }
  flush_scheduled_ = true;
  asio::post(socket_.get_executor(), [self = shared_from_this()] {
    self->flush_scheduled_ = false;
    self->flush();
  });
}

void Http2Session::onTick(MonotonicTime now) {
  if (closed_) {
    return;
  }
  if (draining_ && !final_goaway_sent_ && now - drain_notice_at_ >= kDrainNoticeLead) {
    sendFinalGoaway();
    if (closed_) {
      return;
    }
  }
  if (streams_.empty() && now - idle_since_ >= listener_->config->limits.idle_timeout) {
    nghttp2_session_terminate_session(session_, NGHTTP2_NO_ERROR);
    flush();
    return;
  }
  if (!streams_.empty()) {
    idle_since_ = now;
  }
  // A stream's tick may reply or reset it, and a flush from inside could close streams and
  // change the map, so the loop runs over a copy.
  for (auto& stream : streams_.copy()) {
    stream->onTick(now);
  }
  flush();
}

void Http2Session::onDrain() {
  if (closed_ || draining_) {
    return;
  }
  draining_ = true;
  // RFC 9113 section 6.8: a first GOAWAY with the highest stream id stops new streams without
  // failing one already on its way. The tick sends the final GOAWAY, with the last stream
  // received, once the first had time to arrive. Streams up to that one finish, and the
  // client retries later ones elsewhere.
  nghttp2_submit_shutdown_notice(session_);
  drain_notice_at_ = std::chrono::steady_clock::now();
  flush();
}

void Http2Session::sendFinalGoaway() {
  final_goaway_sent_ = true;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                        nullptr, 0);
  flush();
}

void Http2Session::close() {
  if (closed_) {
    return;
  }
  closed_ = true;
  for (auto& [id, stream] : streams_.takeAll()) {
    stream->onClosed(NGHTTP2_CANCEL);
  }
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
  socket_.close(ignored);
  unlink(); // leaves the worker's session list; the destructor runs with the last handler
}

int Http2Session::onBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  auto* self = static_cast<Http2Session*>(user_data);
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    return 0;
  }
  int32_t id = frame->hd.stream_id;
  self->streams_.insert(id, std::make_shared<Http2Stream>(self->shared_from_this(), id));
  return 0;
}

int Http2Session::onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                           size_t name_length, const uint8_t* value, size_t value_length, uint8_t,
                           void* user_data) {
  auto* self = static_cast<Http2Session*>(user_data);
  if (frame->hd.type != NGHTTP2_HEADERS) {
    return 0;
  }
  if (Http2Stream* stream = self->streams_.find(frame->hd.stream_id)) {
    stream->onHeader(std::string_view(reinterpret_cast<const char*>(name), name_length),
                     std::string_view(reinterpret_cast<const char*>(value), value_length),
                     frame->headers.cat != NGHTTP2_HCAT_REQUEST);
  }
  return 0;
}

int Http2Session::onFrameReceived(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  auto* self = static_cast<Http2Session*>(user_data);
  if (frame->hd.type == NGHTTP2_RST_STREAM && !self->takeResetToken()) {
    // Rapid reset: each reset stream costs deferd a stream's setup and an upstream request,
    // and the client nothing. nghttp2 1.52 has a limit of its own, but it ends the connection
    // with INTERNAL_ERROR, while this one sends the error code meant for it.
    nghttp2_session_terminate_session(self->session_, NGHTTP2_ENHANCE_YOUR_CALM);
    return 0;
  }
  if (frame->hd.type == NGHTTP2_DATA && !self->countDataFrame(frame)) {
    nghttp2_session_terminate_session(self->session_, NGHTTP2_ENHANCE_YOUR_CALM);
    return 0;
  }
  Http2Stream* stream = self->streams_.find(frame->hd.stream_id);
  if (!stream) {
    return 0;
  }
  bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    // The stream learns of END_STREAM with the headers, so a request without a body is framed
    // as one upstream.
    stream->onRequestHeaders(end_stream);
    return 0;
  }
  if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) && end_stream) {
    stream->onRequestEnd();
  }
  return 0;
}

int Http2Session::onDataChunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data,
                              size_t length, void* user_data) {
  auto* self = static_cast<Http2Session*>(user_data);
  if (Http2Stream* stream = self->streams_.find(stream_id)) {
    stream->onRequestData(data, length);
  } else {
    nghttp2_session_consume(self->session_, stream_id, length);
  }
  return 0;
}

int Http2Session::onStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                                void* user_data) {
  auto* self = static_cast<Http2Session*>(user_data);
  std::shared_ptr<Http2Stream> stream = self->streams_.take(stream_id);
  if (!stream) {
    return 0;
  }
  stream->onClosed(error_code);
  return 0;
}

int Http2Session::onFrameNotSent(nghttp2_session*, const nghttp2_frame* frame, int error,
                                 void* user_data) {
  auto* self = static_cast<Http2Session*>(user_data);
  if (frame->hd.type != NGHTTP2_HEADERS) {
    return 0;
  }
  if (Http2Stream* stream = self->streams_.find(frame->hd.stream_id)) {
    spdlog::warn("listener {}: HTTP/2 stream {} to {}: nghttp2 could not send a header block: {}",
                 self->listener_->config->name, frame->hd.stream_id, self->peer_ip_,
                 nghttp2_strerror(error));
    stream->onHeadersNotSent(frame->headers.cat == NGHTTP2_HCAT_RESPONSE);
  }
  return 0;
}

int Http2Session::onFrameSent(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  auto* self = static_cast<Http2Session*>(user_data);
  bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (end_stream && (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA)) {
    if (Http2Stream* stream = self->streams_.find(frame->hd.stream_id)) {
      stream->onResponseSent();
    }
    return 0;
  }
  if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code == NGHTTP2_ENHANCE_YOUR_CALM) {
    self->listener_->stats->http2_flood_goaways->Increment();
    spdlog::warn("listener {}: HTTP/2 client {} sent frames too fast (rapid reset or "
                 "control-frame flood); sent GOAWAY ENHANCE_YOUR_CALM",
                 self->listener_->config->name, self->peer_ip_);
  }
  return 0;
}

static ssize_t readResponseBodyCallback(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                                        uint32_t* data_flags, nghttp2_data_source* source, void*) {
  auto* stream = static_cast<Http2Stream*>(source->ptr);
  return stream->readResponseBody(buf, length, data_flags);
}

// ---------------------------------------------------------------------------------------------
// Stream

Http2Stream::Http2Stream(std::shared_ptr<Http2Session> session, int32_t id)
    : session_(std::move(session)), id_(id) {
  head_.fields.reserve(kExpectedFields);
}

Http2Stream::~Http2Stream() {
  if (upstream_) {
    std::shared_ptr<UpstreamEndpoint> endpoint = upstream_->endpoint;
    endpoint->release(std::move(upstream_), false, std::chrono::steady_clock::now());
  }
}

Dispatcher& Http2Stream::dispatcher() { return session_->worker().dispatcher(); }

nghttp2_session* Http2Stream::nghttp2() const { return session_->nghttp2(); }

void Http2Stream::flushSession() {
  if (session_) {
    session_->scheduleFlush();
  }
}

void Http2Stream::onHeader(std::string_view name, std::string_view value, bool trailer) {
  const config::ListenerLimits& limits = session_->listener().config->limits;
  // RFC 9113 section 6.5.2 counts 32 bytes of overhead per field.
  header_bytes_ += name.size() + value.size() + 32;
  header_count_++;
  if (header_bytes_ > limits.max_header_bytes) {
    header_overflow_ = true;
    return;
  }
  if (header_count_ > limits.max_header_count) {
    too_many_headers_ = true;
    return;
  }
  if (trailer) {
    request_trailers_.push_back(HeaderField{std::string(name), std::string(value)});
    return;
  }
  if (name == ":method") {
    head_.method = value;
  } else if (name == ":scheme") {
    head_.scheme = value;
  } else if (name == ":authority") {
    head_.authority = value;
  } else if (name == ":path") {
    head_.path = value;
  } else {
    head_.fields.push_back(HeaderField{std::string(name), std::string(value)});
  }
}

void Http2Stream::beginRequest() {
  in_request_ = true;
  start_ = std::chrono::steady_clock::now();
  session_->listener().stats->requests_in_flight->Increment();
  info_ = RequestInfo{};
  info_.listener = session_->listener().config->name;
  info_.start = start_;
  info_.downstream_address = session_->peerIp();
  info_.method = head_.method;
  info_.path = head_.path;
}

void Http2Stream::onRequestHeaders(bool end_stream) {
  const ListenerRuntime& listener = session_->listener();
  request_ended_ = end_stream;
  beginRequest();
  header_count_ = 0;
  header_bytes_ = 0;

  if (header_overflow_) {
    sendLocalReply(LocalReplyReason::kHeaderTooLarge);
    return;
  }
  if (too_many_headers_) {
    sendLocalReply(LocalReplyReason::kTooManyHeaders);
    return;
  }

  // gRPC is known before anything else can fail, so every reply below is a gRPC status.
  HeaderListMap headers(head_.fields);
  std::optional<std::string_view> content_type = headers.get("content-type");
  is_grpc_ = content_type && isGrpcContentType(*content_type);

  std::string_view invalid = http2RequestError(head_);
  if (!invalid.empty()) {
    spdlog::debug("listener {}: rejected HTTP/2 request from {}: {}", listener.config->name,
                  session_->peerIp(), invalid);
    sendLocalReply(LocalReplyReason::kBadRequest);
    return;
  }
  if (head_.authority.empty()) {
    if (std::optional<std::string_view> host = headers.get("host")) {
      head_.authority = *host;
    }
  }
  info_.authority = head_.authority;

  if (std::optional<std::string_view> timeout = headers.get("grpc-timeout")) {
    if (std::optional<std::chrono::nanoseconds> parsed = parseGrpcTimeout(*timeout)) {
      grpc_deadline_ = start_ + std::chrono::duration_cast<MonotonicTime::duration>(*parsed);
    }
  }

  std::optional<size_t> route_index =
      matchRoute(listener.config->routes, head_.authority, head_.path, headers);
  if (!route_index) {
    sendLocalReply(LocalReplyReason::kNoRoute);
    return;
  }
  route_ = &listener.routes[*route_index];
  cluster_name_ = route_->config->cluster;
  cluster_index_ = route_->cluster_index;
  info_.route_cluster = cluster_name_;

  // The same forwarding fields as the HTTP/1.1 path.
  if (std::optional<std::string_view> forwarded = headers.get("x-forwarded-for")) {
    std::string value;
    for (const HeaderField& field : head_.fields) {
      if (field.is("x-forwarded-for")) {
        value.append(value.empty() ? "" : ", ").append(field.value);
      }
    }
    value.append(", ").append(session_->peerIp());
    headers.set("x-forwarded-for", value);
  } else {
    headers.append("x-forwarded-for", session_->peerIp());
  }
  std::optional<std::string_view> request_id = headers.get("x-request-id");
  if (!listener.config->generate_request_id && (!request_id || request_id->empty())) {
    request_id_.clear();
  } else if (!request_id) {
    request_id_ = session_->worker().generateRequestId();
    headers.append("x-request-id", request_id_);
  } else if (request_id->empty()) {
    request_id_ = session_->worker().generateRequestId();
    headers.set("x-request-id", request_id_);
  } else {
    request_id_ = *request_id;
  }
  info_.request_id = request_id_;

  state_ = State::kFiltering;
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
  header_map_.emplace(head_.fields);
  auto self = shared_from_this(); // the chain may finish the request synchronously
  chain_->runRequestHeaders(*header_map_);
}

void Http2Stream::onRequestData(const uint8_t* data, size_t size) {
  request_bytes_ += size;
  if (state_ == State::kReplied || state_ == State::kResetting || state_ == State::kClosed ||
      request_sent_ || response_complete_) {
    // No upstream will receive it, so return the flow-control credit at once.
    nghttp2_session_consume(nghttp2(), id_, size);
    return;
  }
  request_body_.append(reinterpret_cast<const char*>(data), size);
  unacknowledged_ += size;
  if (state_ == State::kProxying) {
    restartIdleTimeout();
  }
  if (h2_upstream_) {
    h2_upstream_->resumeBody();
    return;
  }
  writeUpstream();
}

void Http2Stream::onRequestEnd() {
  request_ended_ = true;
  startRouteTimeout();
  if (h2_upstream_) {
    h2_upstream_->resumeBody();
    return;
  }
  writeUpstream();
}

void Http2Stream::acknowledgeRequestBytes(size_t size) {
  size = std::min(size, unacknowledged_);
  unacknowledged_ -= size;
  if (size > 0 && !detached_) {
    nghttp2_session_consume(nghttp2(), id_, size);
    if (state_ == State::kProxying) {
      restartIdleTimeout(); // the upstream took them
    }
  }
}

// ---- Upstream connection ----

void Http2Stream::acquireUpstream(const UpstreamEndpoint* exclude) {
  if (detached_ || state_ == State::kReplied) {
    return;
  }
  state_ = State::kConnecting;
  Worker& worker = session_->worker();
  // The worker's current cluster: after a reload, a request that waited in a filter gets the
  // new endpoints and settings. A cluster the reload removed has no endpoint left.
  WorkerCluster* cluster = worker.cluster(cluster_name_);
  UpstreamEndpoint* endpoint =
      cluster ? cluster->pick(cluster->config->lb, worker.random(), exclude) : nullptr;
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

  bool has_body = !request_ended_ || !request_body_.empty();
  if (ConnectionPtr idle = endpoint->takeIdle(std::chrono::steady_clock::now(), has_body)) {
    onUpstreamAcquired(AcquireResult{std::move(idle), UpstreamFailure::kCount});
    return;
  }
  ConnectionPtr connection = endpoint->acquire(cluster_config.connect_timeout,
                                               [self = shared_from_this()](AcquireResult result) {
                                                 self->onUpstreamAcquired(std::move(result));
                                                 self->flushSession();
                                               });
  if (connection) {
    onUpstreamAcquired(AcquireResult{std::move(connection), UpstreamFailure::kCount});
  }
}

void Http2Stream::onUpstreamAcquired(AcquireResult result) {
  if (state_ != State::kConnecting || detached_) {
    // The stream ended while the connection was being made; keep it for someone else.
    if (result.connection) {
      result.connection->endpoint->release(std::move(result.connection), true,
                                           std::chrono::steady_clock::now());
    }
    return;
  }
  if (!result.connection) {
    session_->worker().warnUpstreamFailure(cluster_name_, endpoint_label_,
                                           upstreamFailureName(result.failure));
    recordUpstreamFailure(result.failure);
    releaseEndpoint();
    const UpstreamEndpoint* failed = endpoint_.get();
    if (!retried_ && result.failure != UpstreamFailure::kConnectionLimit) {
      WorkerCluster* cluster = session_->worker().cluster(cluster_name_);
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
  state_ = State::kProxying;
  upstream_sent_at_ = std::chrono::steady_clock::now();
  restartIdleTimeout();
  startRouteTimeout();

  // The framing is fixed now, so a body that arrives later keeps it.
  HeaderListMap headers(head_.fields);
  if (request_ended_ && request_body_.empty() && !headers.get("content-length")) {
    framing_ = BodyFraming::kNone;
  } else if (headers.get("content-length")) {
    framing_ = BodyFraming::kContentLength;
  } else {
    framing_ = BodyFraming::kChunked;
  }
  setUpstreamGrpcTimeout();
  upstream_out_.clear();
  appendHttp1RequestHead(upstream_out_, head_, framing_);
  request_head_sent_ = false;

  parser_.emplace(head_.method == "HEAD");
  writeUpstream();
  readUpstream();
}

// Starts the route timeout once the client's request has ended and an upstream is ready. It
// lasts until the response head, across retries. Envoy's route timeout starts at the same point,
// so an upstream that stops reading, or whose flow-control window stays shut, cannot hold a
// request until stream_idle_timeout.
void Http2Stream::startRouteTimeout() {
  if (request_ended_ && state_ == State::kProxying && route_deadline_ == MonotonicTime{}) {
    route_deadline_ = std::chrono::steady_clock::now() + route_->config->timeout;
  }
}

// Pushes stream_idle_timeout back after body bytes moved, in either direction.
void Http2Stream::restartIdleTimeout() {
  deadline_ = coarseNow() + session_->listener().config->limits.stream_idle_timeout;
}

void Http2Stream::setUpstreamGrpcTimeout() {
  if (grpc_deadline_ == MonotonicTime{}) {
    return;
  }
  // The upstream gets the time that is left, not the time the client started with.
  auto left = grpc_deadline_ - std::chrono::steady_clock::now();
  HeaderListMap(head_.fields)
      .set("grpc-timeout",
           formatGrpcTimeout(std::chrono::duration_cast<std::chrono::nanoseconds>(left)));
}

// ---- HTTP/2 upstream ----

void Http2Stream::startHttp2Upstream(UpstreamEndpoint& endpoint, const config::Cluster& cluster) {
  state_ = State::kProxying;
  upstream_sent_at_ = std::chrono::steady_clock::now();
  setUpstreamGrpcTimeout();
  bool has_body = !request_ended_ || !request_body_.empty();
  restartIdleTimeout();
  startRouteTimeout();
  request_sent_ = !has_body;
  h2_upstream_ = endpoint.http2Pool().startRequest(head_, has_body, *this, cluster.connect_timeout);
}

void Http2Stream::releaseHttp2Upstream() {
  if (!h2_upstream_) {
    return;
  }
  // Bytes still waiting for the client belong to the connection's window too.
  if (h2_unconsumed_ > 0) {
    h2_upstream_->consumeResponse(h2_unconsumed_);
    h2_unconsumed_ = 0;
  }
  h2_upstream_.reset(); // resets the upstream stream unless it completed
}

// Each of the four upstream callbacks below holds the stream while it runs: a reset inside may
// close the stream and drop the session's reference before the final flush.

void Http2Stream::onUpstreamHeaders(unsigned status, HeaderList fields, bool end_stream) {
  if (detached_ || state_ != State::kProxying) {
    return;
  }
  auto self = shared_from_this();
  upstream_seconds_ =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - upstream_sent_at_).count();
  removeConnectionSpecific(fields);
  submitResponse(status, std::move(fields), !end_stream);
  flushSession();
}

void Http2Stream::onUpstreamData(const uint8_t* data, size_t size) {
  if (detached_ || state_ != State::kProxying) {
    return;
  }
  auto self = shared_from_this();
  response_body_.append(reinterpret_cast<const char*>(data), size);
  response_bytes_ += size;
  h2_unconsumed_ += size;
  restartIdleTimeout();
  resumeResponseData();
  flushSession();
}

void Http2Stream::onUpstreamComplete(HeaderList trailers) {
  if (detached_ || state_ != State::kProxying) {
    return;
  }
  auto self = shared_from_this();
  removeConnectionSpecific(trailers);
  for (const HeaderField& field : trailers) {
    if (field.is("grpc-status")) {
      grpc_status_ = field.value;
    }
  }
  response_trailers_ = std::move(trailers);
  response_complete_ = true;
  resumeResponseData();
  flushSession();
}

void Http2Stream::onUpstreamFailed(UpstreamFailure failure, bool retryable,
                                   std::string_view cause) {
  if (detached_ || state_ != State::kProxying) {
    return;
  }
  auto self = shared_from_this();
  if (retryable && !retried_ && h2_body_sent_ == 0 && !response_submitted_) {
    // The upstream did not process the request (GOAWAY, REFUSED_STREAM or no connection), and
    // no body byte is lost: send it once more, on another connection.
    spdlog::debug("cluster {}: upstream {} did not process an HTTP/2 request ({}); retrying",
                  cluster_name_, endpoint_label_, cause);
    recordUpstreamFailure(failure); // every failed attempt counts, the retried one too
    retried_ = true;
    h2_upstream_.reset();
    releaseEndpoint();
    acquireUpstream(nullptr);
    flushSession();
    return;
  }
  LocalReplyReason reason = LocalReplyReason::kUpstreamReset;
  if (failure == UpstreamFailure::kConnectFailed) {
    reason = LocalReplyReason::kConnectFailed;
  } else if (failure == UpstreamFailure::kConnectTimeout) {
    reason = LocalReplyReason::kConnectTimeout;
  } else if (failure == UpstreamFailure::kBadResponse) {
    reason = LocalReplyReason::kBadUpstreamResponse;
  }
  onUpstreamError(failure, reason, cause);
  flushSession();
}

ssize_t Http2Stream::readUpstreamBody(uint8_t* out, size_t length, uint32_t* flags,
                                      HeaderList* trailers) {
  size_t size = std::min(length, request_body_.size());
  std::memcpy(out, request_body_.data(), size);
  request_body_.erase(0, size);
  h2_body_sent_ += size;
  // The bytes are with the upstream connection's flow control now, so the client may send more.
  acknowledgeRequestBytes(size);
  flushSession();
  if (!request_body_.empty()) {
    return static_cast<ssize_t>(size);
  }
  if (!request_ended_) {
    return size > 0 ? static_cast<ssize_t>(size) : static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED);
  }
  *flags |= NGHTTP2_DATA_FLAG_EOF;
  *trailers = request_trailers_;
  request_sent_ = true;
  return static_cast<ssize_t>(size);
}

// ---- HTTP/1.1 upstream ----

void Http2Stream::writeUpstream() {
  if (!upstream_ || upstream_writing_ || detached_ || request_sent_) {
    return;
  }
  if (request_head_sent_) {
    upstream_out_.clear();
  }
  size_t body_bytes = request_body_.size();
  if (body_bytes > 0) {
    if (framing_ == BodyFraming::kChunked) {
      char line[24];
      int length = std::snprintf(line, sizeof line, "%zx\r\n", body_bytes);
      upstream_out_.append(line, static_cast<size_t>(length));
      upstream_out_.append(request_body_);
      upstream_out_.append("\r\n");
    } else {
      upstream_out_.append(request_body_);
    }
    request_body_.clear();
  }
  bool last = request_ended_;
  if (last && framing_ == BodyFraming::kChunked) {
    appendLastChunk(upstream_out_, request_trailers_);
  }
  if (upstream_out_.empty()) {
    return;
  }
  request_head_sent_ = true;
  upstream_writing_ = true;
  asio::async_write(upstream_->socket, asio::buffer(upstream_out_),
                    [self = shared_from_this(), body_bytes, last](error_code ec, size_t) {
                      self->upstream_writing_ = false;
                      if (!ec && last) {
                        self->request_sent_ = true;
                      }
                      self->onUpstreamWritten(ec, body_bytes);
                    });
}

void Http2Stream::onUpstreamWritten(error_code ec, size_t body_bytes) {
  if (detached_) {
    return;
  }
  if (state_ != State::kProxying) {
    releaseUpstream(false);
    return;
  }
  if (ec) {
    if (response_submitted_) {
      // The upstream sent its response and stopped reading the rest of the request, so the
      // response goes on.
      return;
    }
    if (upstream_reading_) {
      // The pending read fails too and decides between a retry and a local reply.
      error_code ignored;
      upstream_->socket.cancel(ignored);
      return;
    }
    if (retryOnNewConnection()) {
      return;
    }
    onUpstreamError(UpstreamFailure::kReset, LocalReplyReason::kUpstreamReset, ec.message());
    flushSession();
    return;
  }
  acknowledgeRequestBytes(body_bytes);
  if (!request_sent_) {
    writeUpstream();
  }
  flushSession();
}

void Http2Stream::readUpstream() {
  if (!upstream_ || upstream_reading_ || detached_ || response_complete_) {
    return;
  }
  if (response_body_.size() >= kSendBufferLimit) {
    upstream_paused_ = true;
    return;
  }
  upstream_paused_ = false;
  auto& buffer = upstream_->buffer;
  if (upstream_unparsed_) {
    // Parsing stopped when the send buffer filled up, maybe just before the end of the
    // response, and the socket may have nothing more to give. Parse first, outside the
    // caller, which may be nghttp2's data callback.
    upstream_unparsed_ = false;
    upstream_reading_ = true;
    asio::post(upstream_->socket.get_executor(), [self = shared_from_this()] {
      self->onUpstreamRead({}, 0);
      self->flushSession();
    });
    return;
  }
  size_t room = std::min(Worker::kBodyBufferSize, buffer.max_size() - buffer.size());
  if (room == 0) {
    onUpstreamError(UpstreamFailure::kBadResponse, LocalReplyReason::kBadUpstreamResponse,
                    "response framing does not fit the read buffer");
    return;
  }
  upstream_reading_ = true;
  upstream_->socket.async_read_some(buffer.prepare(room),
                                    [self = shared_from_this()](error_code ec, size_t received) {
                                      self->onUpstreamRead(ec, received);
                                      self->flushSession();
                                    });
}

void Http2Stream::onUpstreamRead(error_code ec, size_t received) {
  upstream_reading_ = false;
  if (detached_ || !upstream_) {
    return;
  }
  if (state_ != State::kProxying) {
    // A reply or reset took the stream over and closed the socket to end this read.
    releaseUpstream(false);
    return;
  }
  upstream_->buffer.commit(received);
  if (ec && retryOnNewConnection()) {
    return;
  }
  if (ec == asio::error::eof) {
    processUpstreamBytes();
    if (response_complete_ || state_ != State::kProxying) {
      return;
    }
    if (parser_->onEof() == Http1ResponseParser::Event::kDone) {
      onResponseComplete();
      return;
    }
    onUpstreamError(UpstreamFailure::kReset, LocalReplyReason::kUpstreamReset, parser_->error());
    return;
  }
  if (ec) {
    onUpstreamError(UpstreamFailure::kReset, LocalReplyReason::kUpstreamReset, ec.message());
    return;
  }
  processUpstreamBytes();
  if (!response_complete_ && state_ == State::kProxying) {
    readUpstream();
  }
}

// Retries on a new connection when a kept-alive connection turns out closed as it is reused,
// as the HTTP/1.1 path does. That is safe while no request body byte was taken from the client
// and nothing of a response arrived. Returns whether it retried.
bool Http2Stream::retryOnNewConnection() {
  bool nothing_received = upstream_->buffer.size() == 0 && parser_ && parser_->status() == 0;
  if (!upstream_->reused || retried_ || request_bytes_ > 0 || !nothing_received ||
      response_submitted_ || upstream_writing_ || upstream_reading_) {
    return false;
  }
  retried_ = true;
  releaseUpstream(false);
  releaseEndpoint();
  parser_.reset();
  request_head_sent_ = false;
  request_sent_ = false;
  upstream_out_.clear();
  acquireUpstream(nullptr);
  return true;
}

void Http2Stream::processUpstreamBytes() {
  using Event = Http1ResponseParser::Event;
  auto& buffer = upstream_->buffer;
  bool data_added = false;
  while (state_ == State::kProxying && !response_complete_) {
    std::string_view input(static_cast<const char*>(buffer.data().data()), buffer.size());
    Http1ResponseParser::Step step = parser_->parse(input);
    switch (step.event) {
    case Event::kNeedMore:
      buffer.consume(step.consumed);
      if (step.consumed == 0) {
        if (data_added) {
          resumeResponseData();
        }
        return;
      }
      break;
    case Event::kHead:
      buffer.consume(step.consumed);
      if (parser_->status() == 101) {
        onUpstreamError(UpstreamFailure::kBadResponse, LocalReplyReason::kBadUpstreamResponse,
                        "101 Switching Protocols to a request without Upgrade");
        return;
      }
      if (parser_->status() >= 200 && !onResponseHead()) {
        return;
      }
      break;
    case Event::kData:
      response_body_.append(step.data);
      response_bytes_ += step.data.size();
      buffer.consume(step.consumed);
      data_added = true;
      restartIdleTimeout();
      if (response_body_.size() >= kSendBufferLimit) {
        // The rest of the buffer, or the end of the message that the parser reports on its
        // next call, waits until the client has taken some of the body.
        upstream_unparsed_ = true;
        resumeResponseData();
        return;
      }
      break;
    case Event::kDone:
      buffer.consume(step.consumed);
      onResponseComplete();
      return;
    case Event::kError:
      onUpstreamError(UpstreamFailure::kBadResponse, LocalReplyReason::kBadUpstreamResponse,
                      parser_->error());
      return;
    }
  }
}

bool Http2Stream::onResponseHead() {
  upstream_seconds_ =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - upstream_sent_at_).count();
  HeaderList fields = parser_->takeHeaders();
  removeConnectionSpecific(fields);
  return submitResponse(parser_->status(), std::move(fields), parser_->hasBody());
}

bool Http2Stream::submitResponse(unsigned status, HeaderList fields, bool has_body) {
  status_ = status;
  response_fields_ = std::move(fields);
  if (status == 204) {
    // RFC 9110 section 8.6 forbids a Content-Length on a 204, and HTTP/2 clients reset a
    // stream that has one.
    std::erase_if(response_fields_,
                  [](const HeaderField& field) { return field.is("content-length"); });
  }
  if (chain_) {
    HeaderListMap headers(response_fields_);
    chain_->runResponseHeaders(static_cast<int>(status_), headers);
  }
  for (const HeaderField& field : response_fields_) {
    if (field.is("grpc-status")) {
      grpc_status_ = field.value;
    }
  }

  if (submitHead(has_body) != 0) {
    resetStream(NGHTTP2_INTERNAL_ERROR, "upstream-reset");
    return false;
  }
  response_submitted_ = true;
  restartIdleTimeout();
  return true;
}

void Http2Stream::onResponseComplete() {
  response_complete_ = true;
  response_trailers_ = parser_->trailers();
  removeConnectionSpecific(response_trailers_);
  for (const HeaderField& field : response_trailers_) {
    if (field.is("grpc-status")) {
      grpc_status_ = field.value;
    }
  }
  bool reusable =
      parser_->keepAlive() && parser_->framed() && request_sent_ && upstream_->buffer.size() == 0;
  releaseUpstream(reusable);

  // A request body still arriving goes nowhere now: return its credit.
  acknowledgeRequestBytes(unacknowledged_);
  request_body_.clear();

  if (!parser_->hasBody() && !response_trailers_.empty()) {
    // Only possible for a bodiless response, which has no data provider: nothing to add.
    response_trailers_.clear();
  }
  resumeResponseData();
}

ssize_t Http2Stream::readResponseBody(uint8_t* out, size_t length, uint32_t* flags) {
  size_t size = std::min(length, response_body_.size());
  std::memcpy(out, response_body_.data(), size);
  response_body_.erase(0, size);
  if (h2_upstream_ && size > 0) {
    size_t consumed = std::min(size, h2_unconsumed_);
    h2_unconsumed_ -= consumed;
    h2_upstream_->consumeResponse(consumed);
  }

  if (upstream_paused_ && response_body_.size() < kSendBufferLimit / 2) {
    readUpstream();
  }
  if (!response_body_.empty()) {
    return static_cast<ssize_t>(size);
  }
  if (!response_complete_) {
    return size > 0 ? static_cast<ssize_t>(size) : static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED);
  }
  *flags |= NGHTTP2_DATA_FLAG_EOF;
  if (!response_trailers_.empty()) {
    std::vector<nghttp2_nv> trailers;
    for (const HeaderField& field : response_trailers_) {
      trailers.push_back(makeNv(field.name, field.value));
    }
    if (nghttp2_submit_trailer(nghttp2(), id_, trailers.data(), trailers.size()) == 0) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
  }
  return static_cast<ssize_t>(size);
}

void Http2Stream::resumeResponseData() {
  if (response_submitted_ && !detached_) {
    nghttp2_session_resume_data(nghttp2(), id_);
  }
}

// ---- Failures and replies ----

bool Http2Stream::onChainRouteToCluster(size_t cluster_index) {
  if (cluster_index >= session_->snapshot().clusters.size()) {
    return false;
  }
  cluster_index_ = cluster_index;
  cluster_name_ = session_->snapshot().clusters[cluster_index].config->name;
  info_.route_cluster = cluster_name_;
  return true;
}

void Http2Stream::recordUpstreamFailure(UpstreamFailure failure) {
  session_->snapshot()
      .clusters[cluster_index_]
      .stats->failures[static_cast<size_t>(failure)]
      ->Increment();
}

void Http2Stream::onUpstreamError(UpstreamFailure failure, LocalReplyReason reason,
                                  std::string_view cause) {
  session_->worker().warnUpstreamFailure(cluster_name_, endpoint_label_, cause);
  recordUpstreamFailure(failure);
  releaseUpstream(false);
  if (response_submitted_) {
    // Part of the response is with the client already: all that is left is to cut it off.
    reason_ = upstreamFailureName(failure);
    resetStream(NGHTTP2_INTERNAL_ERROR, reason_);
    return;
  }
  sendLocalReply(reason);
}

void Http2Stream::resetStream(uint32_t error_code, std::string_view reason) {
  if (reason_.empty()) {
    reason_ = reason;
  }
  state_ = State::kResetting;
  releaseUpstream(false);
  if (detached_) {
    return;
  }
  if (response_submitted_ && session_) {
    // nghttp2 drops a stream's queued HEADERS once RST_STREAM is submitted. The session
    // submits the reset after the HEADERS are serialized, so the client sees that the response
    // had started.
    auto self = shared_from_this(); // the flush may close this stream and drop the map's pointer
    session_->resetAfterHeaders(id_, error_code);
    return;
  }
  nghttp2_submit_rst_stream(nghttp2(), NGHTTP2_FLAG_NONE, id_, error_code);
}

void Http2Stream::onHeadersNotSent(bool response_head) {
  if (!response_head || state_ == State::kReplied) {
    resetStream(NGHTTP2_INTERNAL_ERROR,
                localReplySpec(LocalReplyReason::kBadUpstreamResponse).reason);
    return;
  }
  // The response was never seen by the client, so a local reply can still take its place.
  response_submitted_ = false;
  sendLocalReply(LocalReplyReason::kBadUpstreamResponse);
}

void Http2Stream::sendLocalReply(LocalReplyReason reason) {
  if (detached_ || state_ == State::kReplied || state_ == State::kResetting) {
    return;
  }
  if (response_submitted_) {
    resetStream(NGHTTP2_CANCEL, localReplySpec(reason).reason);
    return;
  }
  const LocalReplySpec& spec = localReplySpec(reason);
  info_.local_reply = reason;
  session_->listener().stats->localReply(Protocol::kHttp2, reason)->Increment();
  state_ = State::kReplied;
  reason_ = spec.reason;
  deadline_ = {};
  releaseEndpoint();
  releaseUpstream(false);
  // The rest of the request body goes nowhere: give its credit back.
  acknowledgeRequestBytes(unacknowledged_);
  request_body_.clear();

  response_fields_.clear();
  if (is_grpc_) {
    // Trailers-only: the gRPC status travels in the one HEADERS frame.
    status_ = 200;
    grpc_status_ = info_.grpc_status ? std::to_string(*info_.grpc_status)
                                     : std::to_string(static_cast<int>(grpcStatusFor(reason)));
    response_fields_.push_back({"content-type", "application/grpc"});
    response_fields_.push_back({"grpc-status", grpc_status_});
    response_fields_.push_back({"grpc-message", std::string(spec.reason)});
  } else {
    status_ = info_.local_reply_status.value_or(spec.status);
    response_fields_.push_back({"content-type", "text/plain"});
    if (status_ == 503) {
      int64_t seconds = info_.retry_after ? info_.retry_after->count() : kRetryAfterSeconds;
      response_fields_.push_back({"retry-after", std::to_string(seconds)});
    }
  }
  response_fields_.push_back({"deferd-reason", std::string(spec.reason)});
  if (!request_id_.empty()) {
    response_fields_.push_back({"x-request-id", request_id_});
  }
  bool body = !is_grpc_ && head_.method != "HEAD";
  if (!is_grpc_) {
    response_fields_.push_back({"content-length", std::to_string(spec.reason.size() + 1)});
  }
  if (chain_) {
    HeaderListMap headers(response_fields_);
    chain_->runResponseHeaders(static_cast<int>(status_), headers);
  }

  if (body) {
    response_body_ = std::string(spec.reason) + "\n";
    response_bytes_ = response_body_.size();
  }
  response_complete_ = true;
  if (submitHead(body) != 0) {
    nghttp2_submit_rst_stream(nghttp2(), NGHTTP2_FLAG_NONE, id_, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  response_submitted_ = true;
}

int Http2Stream::submitHead(bool has_body) {
  // nghttp2 encodes the fields from status_text_ and response_fields_ when it sends the
  // HEADERS frame. Both stay unchanged until then, or until nghttp2 drops the frame unsent (a
  // closed stream, a block too large to send), because a stream submits one response head.
  status_text_ = std::to_string(status_);
  std::vector<nghttp2_nv>& nv = session_->nvScratch();
  nv.push_back(makeNv(":status", status_text_, kNvNoCopy));
  for (const HeaderField& field : response_fields_) {
    nv.push_back(makeNv(field.name, field.value, kNvNoCopy));
  }
  nghttp2_data_provider provider{};
  provider.source.ptr = this;
  provider.read_callback = &readResponseBodyCallback;
  return nghttp2_submit_response(nghttp2(), id_, nv.data(), nv.size(),
                                 has_body ? &provider : nullptr);
}

void Http2Stream::onResponseSent() {
  if (request_ended_ || detached_) {
    return;
  }
  // RFC 9113 section 8.1: a server that completes its response before the request ends may
  // ask the client to stop sending with RST_STREAM NO_ERROR. The rest of the body would only
  // be read and discarded, for a local reply or for a response the upstream already finished.
  spdlog::debug("listener {}: HTTP/2 stream {} from {} got its whole response before the "
                "request ended; sending RST_STREAM NO_ERROR",
                session_->listener().config->name, id_, session_->peerIp());
  nghttp2_submit_rst_stream(nghttp2(), NGHTTP2_FLAG_NONE, id_, NGHTTP2_NO_ERROR);
}

void Http2Stream::onTick(MonotonicTime now) {
  if (detached_ || state_ == State::kReplied || state_ == State::kResetting || response_complete_) {
    return;
  }
  if (grpc_deadline_ != MonotonicTime{} && now >= grpc_deadline_) {
    // The client stops waiting at its deadline, so deferd does too.
    if (upstream_) {
      recordUpstreamFailure(UpstreamFailure::kTimeout);
    }
    if (response_submitted_) {
      resetStream(NGHTTP2_CANCEL, localReplySpec(LocalReplyReason::kDeadlineExceeded).reason);
    } else {
      sendLocalReply(LocalReplyReason::kDeadlineExceeded);
    }
    return;
  }
  if (state_ == State::kProxying && !response_submitted_ && route_deadline_ != MonotonicTime{}) {
    // The whole request has arrived: the route timeout alone bounds the wait for the response
    // head, as on HTTP/1.1, whether or not the upstream has taken the body.
    if (now >= route_deadline_) {
      onUpstreamError(UpstreamFailure::kTimeout, LocalReplyReason::kUpstreamTimeout, "timed out");
    }
    return;
  }
  if (deadline_ == MonotonicTime{} || now < deadline_) {
    return;
  }
  deadline_ = {};
  if (state_ == State::kProxying) {
    // Nothing moved for stream_idle_timeout in either direction.
    resetStream(NGHTTP2_CANCEL, "stream-idle-timeout");
  }
}

// ---- Ending ----

void Http2Stream::releaseEndpoint() {
  if (counted_in_flight_ && endpoint_) {
    endpoint_->in_flight--;
  }
  counted_in_flight_ = false;
}

void Http2Stream::releaseUpstream(bool reusable) {
  releaseHttp2Upstream();
  if (!upstream_) {
    return;
  }
  if (upstream_reading_ || upstream_writing_) {
    // A pending operation refers to the connection's buffer: close the socket to end it, and
    // the destructor returns the connection.
    error_code ignored;
    upstream_->socket.close(ignored);
    return;
  }
  std::shared_ptr<UpstreamEndpoint> endpoint = upstream_->endpoint;
  endpoint->release(std::move(upstream_), reusable && !session_->worker().draining(),
                    std::chrono::steady_clock::now());
}

void Http2Stream::onClosed(uint32_t error_code) {
  if (detached_) {
    return;
  }
  StreamEnd end = StreamEnd::kCompleted;
  if (state_ == State::kReplied) {
    end = StreamEnd::kLocalReply;
  } else if (error_code != NGHTTP2_NO_ERROR || !response_complete_) {
    end = reason_.empty() ? StreamEnd::kDownstreamClosed : StreamEnd::kUpstreamFailed;
  }
  if (end == StreamEnd::kDownstreamClosed && upstream_) {
    spdlog::debug("listener {}: HTTP/2 stream {} from {} was reset ({}); cancelling its upstream "
                  "request",
                  session_->listener().config->name, id_, session_->peerIp(),
                  nghttp2_http2_strerror(error_code));
  }
  // Whatever of the request body is still unacknowledged belongs to the connection window.
  if (unacknowledged_ > 0) {
    nghttp2_session_consume_connection(nghttp2(), unacknowledged_);
    unacknowledged_ = 0;
  }
  endRequest(end);
  detach();
}

void Http2Stream::endRequest(StreamEnd end) {
  if (!in_request_) {
    return;
  }
  in_request_ = false;
  releaseEndpoint();
  if (chain_) {
    chain_->endStream(end);
  }
  const ListenerRuntime& listener = session_->listener();
  listener.stats->requests_in_flight->Decrement();

  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  bool answered = end == StreamEnd::kCompleted || end == StreamEnd::kLocalReply;
  if (route_ && status_ != 0 && answered) {
    route_->stats->recordRequest(Protocol::kHttp2, status_, seconds);
  }
  if (AccessLog* log = session_->worker().accessLog()) {
    AccessLogEntry entry;
    entry.listener = listener.config->name;
    entry.cluster = cluster_name_;
    entry.method = head_.method;
    entry.authority = head_.authority;
    entry.path = head_.path;
    entry.protocol = kProtocolName;
    entry.request_id = request_id_;
    entry.downstream_address = session_->peerIp();
    entry.upstream_endpoint = endpoint_label_;
    entry.status = answered ? status_ : 0;
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
    entry.grpc_status = grpc_status_;
    log->record(entry);
  }
}

void Http2Stream::detach() {
  detached_ = true;
  state_ = State::kClosed;
  chain_.reset();
  releaseEndpoint();
  releaseHttp2Upstream();
  if (upstream_) {
    // Cancels the upstream request: a pending read or write ends with operation_aborted.
    error_code ignored;
    upstream_->socket.close(ignored);
    if (!upstream_reading_ && !upstream_writing_) {
      releaseUpstream(false);
    }
  }
  session_.reset();
}

void startHttp2Session(Worker& worker, Socket socket, size_t listener_index,
                       std::string_view received) {
  auto session = std::make_shared<Http2Session>(worker, std::move(socket), listener_index);
  session->start(received);
}

} // namespace deferd
