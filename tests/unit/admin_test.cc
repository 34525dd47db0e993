#include "proxy/admin.h"

#include <atomic>
#include <future>
#include <optional>
#include <string>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <gtest/gtest.h>

namespace deferd {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr std::string_view kMetricsText = "# TYPE deferd_ready gauge\ndeferd_ready 1\n";
constexpr std::string_view kConfigYaml = "listeners: []\nclusters: []\n";
constexpr std::string_view kToken = "admin-token-1";

// A blocking HTTP/1.1 client for one loopback connection, with its own io_context.
class Client {
public:
  explicit Client(uint16_t port) : socket_(io_) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }

  http::response<http::string_body> fetch(http::verb method, const std::string& target,
                                          const std::string& body = "") {
    http::request<http::string_body> request{method, target, 11};
    request.set(http::field::host, "127.0.0.1");
    if (!body.empty()) {
      request.body() = body;
      request.prepare_payload();
    }
    http::write(socket_, request);
    return read(method == http::verb::head);
  }

  // Sends a POST with an `authorization` header, when `authorization` is not empty.
  http::response<http::string_body> post(const std::string& target, const std::string& body,
                                         const std::string& authorization = "") {
    http::request<http::string_body> request{http::verb::post, target, 11};
    request.set(http::field::host, "127.0.0.1");
    if (!authorization.empty()) {
      request.set(http::field::authorization, authorization);
    }
    request.body() = body;
    request.prepare_payload();
    http::write(socket_, request);
    return read(false);
  }

  // Sends `raw` as it is, for requests a well-behaved client would not send.
  http::response<http::string_body> fetchRaw(const std::string& raw) {
    asio::write(socket_, asio::buffer(raw));
    return read(false);
  }

  // Returns the error of the next read, which is asio::error::eof once the server has closed the
  // connection.
  beast::error_code readError() {
    char byte;
    beast::error_code ec;
    socket_.read_some(asio::buffer(&byte, 1), ec);
    return ec;
  }

private:
  http::response<http::string_body> read(bool head) {
    http::response_parser<http::string_body> parser;
    parser.skip(head); // a response to HEAD has no body even when content-length is set
    http::read(socket_, buffer_, parser);
    return parser.release();
  }

  asio::io_context io_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
};

class AdminServerTest : public ::testing::Test {
protected:
  void SetUp() override {
    AdminHandlers handlers;
    handlers.metrics = [] { return std::string(kMetricsText); };
    handlers.ready = [this] { return ready_.load(); };
    handlers.config_yaml = [] { return std::string(kConfigYaml); };
    handlers.set_policy_mode = [this](const std::string& policy, const std::string& body,
                                      const std::string&) {
      switch_calls_++;
      if (policy != "checkout") {
        return AdminReply{404, "policy " + policy + " not found\n"};
      }
      return AdminReply{200, policy + "=" + body};
    };
    handlers.token = [this]() -> std::optional<std::string> {
      if (token_required_) {
        return std::string(kToken);
      }
      return std::nullopt;
    };
    handlers.unauthorized = [this] { unauthorized_++; };
    server_.emplace(io_, std::move(handlers));

    std::string error;
    ASSERT_TRUE(server_->start(config::Address{"127.0.0.1", 0}, &error)) << error;
    ASSERT_NE(server_->port(), 0);
    thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    // stop() must run on the io_context's thread.
    if (thread_.joinable()) {
      asio::post(io_, [this] { server_->stop(); });
      work_.reset();
      thread_.join();
    }
    server_.reset();
  }

  // Runs stop() on the io_context's thread and waits until it has returned.
  void stopServer() {
    std::promise<void> stopped;
    asio::post(io_, [&] {
      server_->stop();
      stopped.set_value();
    });
    stopped.get_future().wait();
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
  std::optional<AdminServer> server_;
  std::atomic<bool> ready_{true};
  std::atomic<bool> token_required_{false};
  std::atomic<int> switch_calls_{0};
  std::atomic<int> unauthorized_{0};
  std::thread thread_;
};

TEST_F(AdminServerTest, MetricsServedAsPrometheusText) {
  Client client(server_->port());

  auto response = client.fetch(http::verb::get, "/metrics");

  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_EQ(response[http::field::content_type], "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(response.body(), kMetricsText);
}

TEST_F(AdminServerTest, MetricsIgnoresQueryString) {
  Client client(server_->port());

  auto response = client.fetch(http::verb::get, "/metrics?name[]=deferd_ready");

  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_EQ(response.body(), kMetricsText);
}

TEST_F(AdminServerTest, HeadHasLengthWithoutBody) {
  Client client(server_->port());

  auto response = client.fetch(http::verb::head, "/metrics");

  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_EQ(response[http::field::content_length], std::to_string(kMetricsText.size()));
  EXPECT_EQ(response.body(), "");

  // No stray body bytes precede the next response, so the connection stays usable.
  auto next = client.fetch(http::verb::get, "/healthz");
  EXPECT_EQ(next.result(), http::status::ok);
  EXPECT_EQ(next.body(), "ok");
}

TEST_F(AdminServerTest, HealthzReturnsOk) {
  Client client(server_->port());

  auto response = client.fetch(http::verb::get, "/healthz");

  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_EQ(response.body(), "ok");
}

TEST_F(AdminServerTest, ReadyFollowsHandler) {
  Client client(server_->port());

  auto ready = client.fetch(http::verb::get, "/ready");
  EXPECT_EQ(ready.result(), http::status::ok);
  EXPECT_EQ(ready.body(), "ready");

  ready_ = false;
  auto draining = client.fetch(http::verb::get, "/ready");
  EXPECT_EQ(draining.result(), http::status::service_unavailable);
  EXPECT_EQ(draining.body(), "draining");
}

TEST_F(AdminServerTest, ConfigServedAsYaml) {
  Client client(server_->port());

  auto response = client.fetch(http::verb::get, "/config");

  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_EQ(response[http::field::content_type], "application/yaml");
  EXPECT_EQ(response.body(), kConfigYaml);
}

TEST_F(AdminServerTest, UnknownPathNotFound) {
  Client client(server_->port());

  EXPECT_EQ(client.fetch(http::verb::get, "/nope").result(), http::status::not_found);
  EXPECT_EQ(client.fetch(http::verb::get, "/metrics/").result(), http::status::not_found);
  EXPECT_EQ(client.fetch(http::verb::post, "/nope").result(), http::status::not_found);
}

TEST_F(AdminServerTest, OtherMethodsNotAllowed) {
  Client client(server_->port());

  for (http::verb method : {http::verb::post, http::verb::put, http::verb::delete_}) {
    auto response = client.fetch(method, "/metrics");
    EXPECT_EQ(response.result(), http::status::method_not_allowed) << method;
    EXPECT_EQ(response[http::field::allow], "GET, HEAD") << method;
  }
}

TEST_F(AdminServerTest, KeepAliveServesSeveralRequests) {
  Client client(server_->port());

  for (int i = 0; i < 5; ++i) {
    auto response = client.fetch(http::verb::get, "/healthz");
    EXPECT_EQ(response.result(), http::status::ok);
    EXPECT_TRUE(response.keep_alive());
  }
}

TEST_F(AdminServerTest, RequestBodyRejected) {
  Client client(server_->port());

  auto response = client.fetch(http::verb::get, "/metrics", "some body");

  EXPECT_EQ(response.result(), http::status::payload_too_large);
  EXPECT_FALSE(response.keep_alive());
  EXPECT_EQ(client.readError(), asio::error::eof);
}

TEST_F(AdminServerTest, LargeBodyRejectedWithResponse) {
  Client client(server_->port());
  std::string body(30000, 'b');
  std::string raw =
      "GET /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: " + std::to_string(body.size()) +
      "\r\n\r\n" + body;

  // The server rejects the request after its headers and leaves the body unread.
  auto response = client.fetchRaw(raw);

  EXPECT_EQ(response.result(), http::status::payload_too_large);
  EXPECT_EQ(client.readError(), asio::error::eof);
}

TEST_F(AdminServerTest, LargeHeadersRejected) {
  Client client(server_->port());
  std::string raw =
      "GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nx-filler: " + std::string(9000, 'a') +
      "\r\n\r\n";

  auto response = client.fetchRaw(raw);

  EXPECT_EQ(response.result(), http::status::request_header_fields_too_large);
  EXPECT_EQ(client.readError(), asio::error::eof);
}

TEST_F(AdminServerTest, MalformedRequestRejected) {
  Client client(server_->port());

  auto response = client.fetchRaw("NOT HTTP AT ALL\r\n\r\n");

  EXPECT_EQ(response.result(), http::status::bad_request);
  EXPECT_EQ(client.readError(), asio::error::eof);
}

TEST_F(AdminServerTest, ConnectionCloseHonoured) {
  Client client(server_->port());

  auto response = client.fetchRaw("GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");

  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_FALSE(response.keep_alive());
  EXPECT_EQ(client.readError(), asio::error::eof);
}

TEST_F(AdminServerTest, StopClosesOpenConnections) {
  Client client(server_->port());
  ASSERT_EQ(client.fetch(http::verb::get, "/healthz").result(), http::status::ok);

  stopServer();

  beast::error_code ec = client.readError();
  EXPECT_TRUE(ec == asio::error::eof || ec == asio::error::connection_reset) << ec.message();
  EXPECT_THROW(Client{server_->port()}, boost::system::system_error);
}

TEST_F(AdminServerTest, BindFailureReported) {
  asio::io_context other_io;
  AdminServer other(other_io, AdminHandlers{});
  std::string error;

  bool started = other.start(config::Address{"127.0.0.1", server_->port()}, &error);

  EXPECT_FALSE(started);
  EXPECT_NE(error.find("failed to start admin listener on 127.0.0.1:"), std::string::npos) << error;
}

TEST_F(AdminServerTest, MissingHandlersNotFound) {
  asio::io_context other_io;
  AdminServer other(other_io, AdminHandlers{});
  std::string error;
  ASSERT_TRUE(other.start(config::Address{"127.0.0.1", 0}, &error)) << error;
  std::thread other_thread([&] { other_io.run_for(std::chrono::seconds(5)); });

  {
    Client client(other.port());
    EXPECT_EQ(client.fetch(http::verb::get, "/metrics").result(), http::status::not_found);
    EXPECT_EQ(client.fetch(http::verb::get, "/config").result(), http::status::not_found);
    EXPECT_EQ(client.fetch(http::verb::get, "/ready").result(), http::status::service_unavailable);
    EXPECT_EQ(client.fetch(http::verb::get, "/healthz").result(), http::status::ok);
  }

  asio::post(other_io, [&] { other.stop(); });
  other_thread.join();
}

TEST_F(AdminServerTest, PolicySwitchNeedsPost) {
  Client client(server_->port());

  for (http::verb method : {http::verb::get, http::verb::head, http::verb::put}) {
    auto response = client.fetch(method, "/policies/checkout/mode");
    EXPECT_EQ(response.result(), http::status::method_not_allowed) << method;
    EXPECT_EQ(response[http::field::allow], "POST") << method;
  }
  EXPECT_EQ(switch_calls_, 0);
}

TEST_F(AdminServerTest, PolicySwitchOnLoopbackWithoutToken) {
  Client client(server_->port());

  auto response = client.post("/policies/checkout/mode", "off");

  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_EQ(response.body(), "checkout=off");
  EXPECT_EQ(switch_calls_, 1);
  EXPECT_EQ(unauthorized_, 0);
}

TEST_F(AdminServerTest, PolicySwitchHandlerStatusReturned) {
  Client client(server_->port());

  auto response = client.post("/policies/other/mode", "off");

  EXPECT_EQ(response.result(), http::status::not_found);
  EXPECT_EQ(response.body(), "policy other not found\n");
}

TEST_F(AdminServerTest, PolicySwitchMalformedPathsNotFound) {
  Client client(server_->port());

  for (const char* target : {"/policies/mode", "/policies//mode", "/policies/a/b/mode",
                             "/policies/checkout", "/policies/checkout/modes"}) {
    auto response = client.post(target, "off");
    EXPECT_EQ(response.result(), http::status::not_found) << target;
  }
  EXPECT_EQ(switch_calls_, 0);
}

TEST_F(AdminServerTest, PolicySwitchChecksBearerToken) {
  token_required_ = true;
  Client client(server_->port());
  std::string right = "Bearer " + std::string(kToken);

  for (const std::string& authorization :
       {std::string(), std::string("Bearer wrong"), std::string("Basic ") + std::string(kToken),
        right + "x", std::string("Bearer ")}) {
    auto response = client.post("/policies/checkout/mode", "off", authorization);
    EXPECT_EQ(response.result(), http::status::unauthorized) << authorization;
    EXPECT_EQ(response[http::field::www_authenticate], "Bearer realm=\"deferd-admin\"");
  }
  EXPECT_EQ(unauthorized_, 5);
  EXPECT_EQ(switch_calls_, 0);

  auto response = client.post("/policies/checkout/mode", "off", right);
  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_EQ(switch_calls_, 1);
  EXPECT_EQ(unauthorized_, 5);
}

TEST_F(AdminServerTest, PolicySwitchLargeBodyRejected) {
  Client client(server_->port());

  auto response = client.post("/policies/checkout/mode", std::string(100, 'o'));

  EXPECT_EQ(response.result(), http::status::payload_too_large);
  EXPECT_EQ(switch_calls_, 0);
  EXPECT_EQ(client.readError(), asio::error::eof);
}

} // namespace
} // namespace deferd
