#pragma once

// The admin listener: /metrics, /healthz, /ready and /config.
//
// It runs on the main thread's io_context, apart from the workers, so a scrape never competes
// with request handling for a worker's loop. Requests other than GET or HEAD on these paths get
// 405, unknown paths 404. Each connection serves requests one at a time with keep-alive, and is
// closed after 30 seconds without a request.

#include <functional>
#include <memory>
#include <string>

#include "config/config.h"

namespace boost::asio {
class io_context;
}

namespace deferd {

struct AdminHandlers {
  std::function<std::string()> metrics;     // Prometheus text format
  std::function<bool()> ready;              // false while starting or draining
  std::function<std::string()> config_yaml; // the effective config
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
