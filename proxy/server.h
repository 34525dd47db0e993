#pragma once

// The daemon: workers, the admin listener, signals, config reload and DNS re-resolution.
//
// The main thread runs its own io_context for everything that is not request handling:
// signals, the admin listener, reloads and DNS. It hands results to the workers by posting to
// their io_contexts, so workers never wait on the main thread.
//
// Reload (SIGHUP, or a change that ConfigWatch detects in the config's directories): the main
// file and its policy files are read, hashed, loaded and validated on the main thread. Bytes
// whose hash is the running config's change nothing and are not counted. A change the watch
// reports is loaded only when a second read, one debounce later, finds the same hash. A valid
// config gets new acceptors bound for new listeners (in the main thread, so a bind error rejects
// the reload), then each worker swaps snapshots. In-flight requests keep the snapshot they started
// with, and keep-alive connections move to the new one at their next request. An invalid config
// changes nothing; it is logged and counted.
//
// Drain (SIGTERM or SIGINT): /ready turns 503 at once, every worker closes its acceptors and
// idle connections, in-flight requests finish and their connections close; when no connection
// is left, or drain_timeout passes, the process exits 0.

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"

namespace deferd {

class Server {
public:
  // `log_level`, when not empty, overrides the config's log.level.
  Server(std::string config_path, std::string log_level);
  ~Server();

  // Runs until drained. Returns the process exit code; a config or bind error at startup
  // returns 1 after logging it.
  int run();

private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace deferd
