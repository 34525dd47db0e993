#pragma once

// The admin listener: /metrics, /healthz, /ready and /config, and the runtime switch
// POST /policies/NAME/mode.
//
// It runs on the main thread's io_context, apart from the workers, so a scrape never competes
// with request handling for a worker's loop. Requests other than GET or HEAD on the read-only
// paths, and other than POST on a switch, get 405; unknown paths get 404. Each connection serves
// requests one at a time with keep-alive, and is closed after 30 seconds without a request.
//
// Authorization of POST: when a token is configured, the request must carry
// `authorization: Bearer TOKEN`. Without a token, POST is allowed only when the listener is
// bound to a loopback address. Any other POST gets 401 and is counted through `unauthorized`.

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "config/config.h"

namespace boost::asio {
class io_context;
}

namespace deferd {

// The status and plain-text body of a runtime switch's response.
struct AdminReply {
  unsigned status = 200;
  std::string body;
};

struct AdminHandlers {
  std::function<std::string()> metrics;     // Prometheus text format
  std::function<bool()> ready;              // false while starting or draining
  std::function<std::string()> config_yaml; // the effective config

  // POST /policies/NAME/mode with the request body; `peer` is the caller's address.
  std::function<AdminReply(const std::string& policy, const std::string& body,
                           const std::string& peer)>
      set_policy_mode;
  std::function<std::optional<std::string>()> token; // bearer token; nullopt: none configured
  std::function<void()> unauthorized;                // once per POST rejected with 401
};

class AdminServer {
public:
  AdminServer(boost::asio::io_context& io, AdminHandlers handlers);
  ~AdminServer();

  // Binds and starts accepting. Returns false with `error` set when binding fails.
  bool start(const config::Address& address, std::string* error);
  void stop();

  // The bound port, useful when the config asked for port 0.
  uint16_t port() const;

private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace deferd
