#include "proxy/admin.h"

#include <array>
#include <chrono>
#include <exception>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

// Thread model: everything here runs on the one thread that runs the io_context given to
// AdminServer. start(), stop(), port() and the destructor must be called on that thread, or
// while the io_context is not running. Nothing takes a lock.
//
// Lifetime: the acceptor, the handlers and the set of open sessions live in an AdminState that
// the accept loop and every session hold by shared_ptr. Handlers that complete after the
// AdminServer is destroyed therefore find the state alive, see `stopped` and return.

namespace deferd {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr std::chrono::seconds kIdleTimeout{30};
constexpr std::chrono::seconds kAcceptRetryDelay{1};

// Limits of the wait for the client to close after a response with `connection: close`.
constexpr std::chrono::seconds kLingerTimeout{2};
constexpr size_t kMaxDiscardedBytes = 64 * 1024;
constexpr uint32_t kMaxHeaderBytes = 8 * 1024; // request line plus headers
constexpr uint32_t kMaxPostBodyBytes = 64;     // a switch's body is one word

constexpr std::string_view kPoliciesPrefix = "/policies/";
constexpr std::string_view kModeSuffix = "/mode";

constexpr std::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr std::string_view kTextContentType = "text/plain; charset=utf-8";
constexpr std::string_view kYamlContentType = "application/yaml";

using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

std::shared_ptr<spdlog::logger> logger() {
  auto named = spdlog::get("admin");
  return named != nullptr ? named : spdlog::default_logger();
}

bool isHttpError(const beast::error_code& ec) {
  return ec.category() == http::make_error_code(http::error::end_of_stream).category();
}

Response makeResponse(http::status status, unsigned version, std::string_view content_type,
                      std::string body) {
  Response response{status, version};
  response.set(http::field::content_type, content_type);
  response.body() = std::move(body);
  response.prepare_payload();
  return response;
}

// Compares in time that depends only on the lengths, so a caller cannot find the token byte by
// byte from response times.
bool tokensEqual(std::string_view given, std::string_view expected) {
  if (given.size() != expected.size()) {
    return false;
  }
  unsigned char difference = 0;
  for (size_t i = 0; i < given.size(); i++) {
    difference |= static_cast<unsigned char>(given[i] ^ expected[i]);
  }
  return difference == 0;
}

// The NAME of /policies/NAME/mode, or nothing for any other path.
std::optional<std::string> policyOfSwitchPath(std::string_view path) {
  size_t affixes = kPoliciesPrefix.size() + kModeSuffix.size();
  if (path.size() <= affixes || !path.starts_with(kPoliciesPrefix) ||
      !path.ends_with(kModeSuffix)) {
    return std::nullopt;
  }
  std::string_view name = path.substr(kPoliciesPrefix.size(), path.size() - affixes);
  if (name.find('/') != std::string_view::npos) {
    return std::nullopt;
  }
  return std::string(name);
}

} // namespace

class AdminSession;

struct AdminState {
  AdminState(asio::io_context& io, AdminHandlers admin_handlers)
      : acceptor(io), retry_timer(io), handlers(std::move(admin_handlers)) {}

  tcp::acceptor acceptor;
  asio::steady_timer retry_timer; // delays the next accept after EMFILE and similar errors
  AdminHandlers handlers;
  uint16_t port = 0;
  bool loopback = true; // bound to a loopback address, where POST needs no configured token
  bool stopped = false;
  std::unordered_map<AdminSession*, std::weak_ptr<AdminSession>> sessions;
};

// One admin connection. It reads a request, writes the response and then reads the next one,
// so requests on a connection are served one at a time and in order.
class AdminSession : public std::enable_shared_from_this<AdminSession> {
public:
  AdminSession(tcp::socket socket, std::shared_ptr<AdminState> state)
      : stream_(std::move(socket)), state_(std::move(state)) {}

  ~AdminSession() { state_->sessions.erase(this); }

  AdminSession(const AdminSession&) = delete;
  AdminSession& operator=(const AdminSession&) = delete;

  void start() {
    state_->sessions[this] = weak_from_this();
    beast::error_code ec;
    auto remote = stream_.socket().remote_endpoint(ec);
    peer_ = ec ? std::string("unknown")
               : remote.address().to_string() + ":" + std::to_string(remote.port());
    doRead();
  }

  // Closes the socket, which completes any pending read or write with operation_aborted.
  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

private:
  void doRead() {
    parser_.emplace();
    parser_->header_limit(kMaxHeaderBytes);
    parser_->body_limit(kMaxPostBodyBytes); // only POST takes a body; others are checked later

    // The deadline covers the wait for the next request and the request itself.
    stream_.expires_after(kIdleTimeout);
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->onRead(ec); });
  }

  void onRead(beast::error_code ec) {
    if (state_->stopped || ec == asio::error::operation_aborted) {
      return;
    }

    // The client closed the connection or sent nothing for kIdleTimeout.
    if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
        ec == beast::error::timeout) {
      close();
      return;
    }

    if (ec == http::error::header_limit) {
      doWrite(makeResponse(http::status::request_header_fields_too_large, 11, kTextContentType,
                           "request headers too large\n"),
              true);
      return;
    }
    if (ec == http::error::body_limit || ec == http::error::unexpected_body) {
      rejectBody(parser_->get());
      return;
    }
    if (ec && isHttpError(ec)) {
      doWrite(makeResponse(http::status::bad_request, 11, kTextContentType, "bad request\n"), true);
      return;
    }
    if (ec) {
      logger()->debug("admin connection read failed: {}", ec.message());
      close();
      return;
    }

    const auto& request = parser_->get();
    if (!request.body().empty() && request.method() != http::verb::post) {
      rejectBody(request);
      return;
    }
    doWrite(serve(request), !request.keep_alive());
  }

  // Rejects a request whose body is not allowed or too large, and closes the connection, since
  // the rest of the body may still be unread.
  void rejectBody(const Request& request) {
    // A method the path does not allow is the more useful reply than the body's size. The
    // request line is parsed before any header, so the method is known here.
    http::verb method = request.method();
    if (method != http::verb::get && method != http::verb::head && method != http::verb::post) {
      doWrite(serve(request), true);
      return;
    }
    std::string message = method == http::verb::post
                              ? "request body too large: send one of enforce, shadow or off\n"
                              : "admin requests must not have a body\n";
    doWrite(makeResponse(http::status::payload_too_large, 11, kTextContentType, message), true);
  }

  Response serve(const Request& request) const {
    std::string_view target = request.target();
    std::string_view path = target.substr(0, target.find('?'));
    unsigned version = request.version();

    Response response = route(request, path, version);
    if (request.method() == http::verb::head) {
      // HEAD gets the headers of the GET response, with its content-length, and no body.
      auto length = response.body().size();
      response.body().clear();
      response.content_length(length);
    }
    response.keep_alive(request.keep_alive());
    return response;
  }

  Response route(const Request& request, std::string_view path, unsigned version) const {
    const AdminHandlers& handlers = state_->handlers;
    http::verb method = request.method();
    if (std::optional<std::string> policy = policyOfSwitchPath(path)) {
      return routeSwitch(request, *policy, version);
    }

    bool known = path == "/metrics" || path == "/healthz" || path == "/ready" || path == "/config";
    if (!known) {
      return makeResponse(http::status::not_found, version, kTextContentType, "not found\n");
    }
    if (method != http::verb::get && method != http::verb::head) {
      Response response = makeResponse(http::status::method_not_allowed, version, kTextContentType,
                                       "method not allowed\n");
      response.set(http::field::allow, "GET, HEAD");
      return response;
    }

    // The handlers belong to the daemon, and an exception from one becomes a 500, not a crash.
    try {
      if (path == "/healthz") {
        return makeResponse(http::status::ok, version, kTextContentType, "ok");
      }
      if (path == "/ready") {
        bool ready = handlers.ready && handlers.ready();
        return ready ? makeResponse(http::status::ok, version, kTextContentType, "ready")
                     : makeResponse(http::status::service_unavailable, version, kTextContentType,
                                    "draining");
      }
      if (path == "/metrics" && handlers.metrics) {
        return makeResponse(http::status::ok, version, kMetricsContentType, handlers.metrics());
      }
      if (path == "/config" && handlers.config_yaml) {
        return makeResponse(http::status::ok, version, kYamlContentType, handlers.config_yaml());
      }
    } catch (const std::exception& e) {
      logger()->error("admin handler for {} failed: {}", path, e.what());
      return makeResponse(http::status::internal_server_error, version, kTextContentType,
                          "internal error\n");
    }

    // An endpoint whose handler the daemon did not set.
    return makeResponse(http::status::not_found, version, kTextContentType, "not found\n");
  }

  // POST /policies/NAME/mode.
  Response routeSwitch(const Request& request, const std::string& policy, unsigned version) const {
    const AdminHandlers& handlers = state_->handlers;
    if (request.method() != http::verb::post) {
      Response response = makeResponse(http::status::method_not_allowed, version, kTextContentType,
                                       "method not allowed: runtime switches need POST\n");
      response.set(http::field::allow, "POST");
      return response;
    }
    if (!handlers.set_policy_mode) {
      return makeResponse(http::status::not_found, version, kTextContentType, "not found\n");
    }
    if (std::optional<Response> rejected = authorize(request, version)) {
      return *rejected;
    }

    try {
      AdminReply reply = handlers.set_policy_mode(policy, request.body(), peer_);
      return makeResponse(static_cast<http::status>(reply.status), version, kTextContentType,
                          std::move(reply.body));
    } catch (const std::exception& e) {
      logger()->error("admin switch for policy {} from {} failed: {}", policy, peer_, e.what());
      return makeResponse(http::status::internal_server_error, version, kTextContentType,
                          "internal error\n");
    }
  }

  // Returns a 401 response when the request may not change anything, nothing when it may.
  std::optional<Response> authorize(const Request& request, unsigned version) const {
    const AdminHandlers& handlers = state_->handlers;
    std::optional<std::string> token = handlers.token ? handlers.token() : std::nullopt;
    if (!token && state_->loopback) {
      return std::nullopt;
    }

    std::string_view given = request[http::field::authorization];
    constexpr std::string_view kScheme = "Bearer ";
    std::string message;
    if (!token) {
      message = "unauthorized: the admin listener is not on loopback and admin.token_file is "
                "not set, so runtime switches are disabled\n";
    } else if (!given.starts_with(kScheme)) {
      message = "unauthorized: missing 'authorization: Bearer TOKEN' header\n";
    } else if (!tokensEqual(given.substr(kScheme.size()), *token)) {
      message = "unauthorized: wrong bearer token\n";
    } else {
      return std::nullopt;
    }

    if (handlers.unauthorized) {
      handlers.unauthorized();
    }
    logger()->warn("admin: rejected {} {} from {}: {}", request.method_string(), request.target(),
                   peer_, message.substr(0, message.size() - 1));
    Response response =
        makeResponse(http::status::unauthorized, version, kTextContentType, std::move(message));
    response.set(http::field::www_authenticate, "Bearer realm=\"deferd-admin\"");
    return response;
  }

  void doWrite(Response response, bool close_after) {
    response_ = std::move(response);
    if (close_after) {
      response_->keep_alive(false);
    }

    stream_.expires_after(kIdleTimeout);
    http::async_write(stream_, *response_,
                      [self = shared_from_this(), close_after](beast::error_code ec, size_t) {
                        self->onWrite(ec, close_after);
                      });
  }

  void onWrite(beast::error_code ec, bool close_after) {
    if (state_->stopped || ec == asio::error::operation_aborted) {
      return;
    }
    if (ec) {
      logger()->debug("admin connection write failed: {}", ec.message());
      close();
      return;
    }
    if (close_after) {
      doLinger();
      return;
    }
    doRead();
  }

  // Half-closes the connection, then reads and discards what the client still sends until it
  // closes too. Closing with unread request bytes would make the kernel send a reset, which can
  // destroy the response before the client has read it.
  void doLinger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(kLingerTimeout);
    readDiscarded();
  }

  void readDiscarded() {
    stream_.async_read_some(asio::buffer(discard_),
                            [self = shared_from_this()](beast::error_code ec, size_t bytes) {
                              self->onReadDiscarded(ec, bytes);
                            });
  }

  void onReadDiscarded(beast::error_code ec, size_t bytes) {
    if (state_->stopped || ec == asio::error::operation_aborted) {
      return;
    }

    // Stop waiting at end of stream, timeout or reset, and when the client keeps sending.
    discarded_bytes_ += bytes;
    if (ec || discarded_bytes_ > kMaxDiscardedBytes) {
      close();
      return;
    }
    readDiscarded();
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<Response> response_; // kept alive until its write completes
  std::array<char, 4096> discard_;   // receives the bytes read while lingering
  size_t discarded_bytes_ = 0;
  std::string peer_; // the client's address and port, for the log
  std::shared_ptr<AdminState> state_;
};

class AdminServer::Impl {
public:
  Impl(asio::io_context& io, AdminHandlers handlers)
      : state_(std::make_shared<AdminState>(io, std::move(handlers))) {}

  bool start(const config::Address& address, std::string* error);
  void stop();
  uint16_t port() const { return state_->port; }

private:
  static void doAccept(const std::shared_ptr<AdminState>& state);
  static void onAccept(const std::shared_ptr<AdminState>& state, beast::error_code ec,
                       tcp::socket socket);
  bool bindTo(const tcp::endpoint& endpoint, beast::error_code& ec);

  std::shared_ptr<AdminState> state_;
};

bool AdminServer::Impl::start(const config::Address& address, std::string* error) {
  std::string where = address.host + ":" + std::to_string(address.port);
  auto fail = [&](const std::string& message) {
    if (error != nullptr) {
      *error = "failed to start admin listener on " + where + ": " + message;
    }
    return false;
  };

  if (state_->acceptor.is_open()) {
    return fail("the admin server is already started");
  }
  if (state_->stopped) {
    return fail("the admin server was stopped and cannot be started again");
  }

  // Resolving blocks, but only once at startup, and an IP literal needs no DNS query.
  beast::error_code ec;
  tcp::resolver resolver(state_->acceptor.get_executor());
  auto endpoints = resolver.resolve(address.host, std::to_string(address.port),
                                    tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec) {
    return fail(ec.message());
  }

  // The first resolved address that binds wins.
  ec = asio::error::host_not_found;
  for (const auto& entry : endpoints) {
    if (bindTo(entry.endpoint(), ec)) {
      break;
    }
  }
  if (ec) {
    return fail(ec.message());
  }

  tcp::endpoint bound = state_->acceptor.local_endpoint(ec);
  if (ec) {
    beast::error_code ignored;
    state_->acceptor.close(ignored);
    return fail(ec.message());
  }
  state_->port = bound.port();
  state_->loopback = bound.address().is_loopback();
  logger()->info("admin listener started on {}:{}", address.host, state_->port);
  doAccept(state_);
  return true;
}

bool AdminServer::Impl::bindTo(const tcp::endpoint& endpoint, beast::error_code& ec) {
  tcp::acceptor& acceptor = state_->acceptor;
  beast::error_code ignored;
  acceptor.close(ignored);

  acceptor.open(endpoint.protocol(), ec);
  if (!ec) {
    acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  }
  if (!ec) {
    acceptor.bind(endpoint, ec);
  }
  if (!ec) {
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
  }
  if (ec) {
    acceptor.close(ignored);
    return false;
  }
  return true;
}

void AdminServer::Impl::stop() {
  if (state_->stopped) {
    return;
  }
  state_->stopped = true;

  beast::error_code ignored;
  bool was_listening = state_->acceptor.is_open();
  state_->acceptor.close(ignored);
  state_->retry_timer.cancel();

  // Sessions leave the map only in their destructors, which run later, once their pending
  // handlers complete. The copy keeps the loop independent of that.
  std::vector<std::shared_ptr<AdminSession>> open_sessions;
  for (const auto& [raw, weak] : state_->sessions) {
    if (auto session = weak.lock()) {
      open_sessions.push_back(std::move(session));
    }
  }
  for (const auto& session : open_sessions) {
    session->close();
  }

  if (was_listening) {
    logger()->info("admin listener on port {} stopped, open connections closed: {}", state_->port,
                   open_sessions.size());
  }
}

void AdminServer::Impl::doAccept(const std::shared_ptr<AdminState>& state) {
  state->acceptor.async_accept([state](beast::error_code ec, tcp::socket socket) {
    onAccept(state, ec, std::move(socket));
  });
}

void AdminServer::Impl::onAccept(const std::shared_ptr<AdminState>& state, beast::error_code ec,
                                 tcp::socket socket) {
  if (state->stopped || ec == asio::error::operation_aborted) {
    return;
  }

  // A client reset its connection before accept() returned, which needs no action.
  if (ec == asio::error::connection_aborted) {
    doAccept(state);
    return;
  }

  // After running out of descriptors or memory, wait before accepting again instead of spinning.
  if (ec) {
    logger()->warn("admin listener accept failed: {}; retrying in {} s", ec.message(),
                   kAcceptRetryDelay.count());
    state->retry_timer.expires_after(kAcceptRetryDelay);
    state->retry_timer.async_wait([state](beast::error_code wait_ec) {
      if (!wait_ec && !state->stopped) {
        doAccept(state);
      }
    });
    return;
  }

  std::make_shared<AdminSession>(std::move(socket), state)->start();
  doAccept(state);
}

AdminServer::AdminServer(boost::asio::io_context& io, AdminHandlers handlers)
    : impl_(std::make_unique<Impl>(io, std::move(handlers))) {}

AdminServer::~AdminServer() { impl_->stop(); }

bool AdminServer::start(const config::Address& address, std::string* error) {
  return impl_->start(address, error);
}

void AdminServer::stop() { impl_->stop(); }

uint16_t AdminServer::port() const { return impl_->port(); }

} // namespace deferd
