// deferd: a sidecar proxy that decides who yields to whom when capacity runs short.
//
//   deferd --config FILE      run the proxy in the foreground
//   deferd validate PATH...   check configs (a main file, or a directory holding deferd.yaml)
//                             with their policy files, and exit: 0 valid, 1 invalid, 2 usage

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "config/loader.h"
#include "proxy/server.h"

namespace {

constexpr const char* kVersion = "0.1.0";

// The main file that `deferd validate DIR` reads in a config directory.
constexpr const char* kMainFileName = "deferd.yaml";

void printUsage(FILE* out) {
  std::fprintf(out,
               "usage: deferd --config FILE [--log-level LEVEL]\n"
               "       deferd validate PATH...\n"
               "       deferd --version\n"
               "\n"
               "  --config FILE      run the proxy with the YAML config in FILE\n"
               "  --log-level LEVEL  trace, debug, info, warn, error, critical or off; overrides\n"
               "                     log.level\n"
               "  validate PATH...   check each config as the daemon loads it, with the policy\n"
               "                     files it names; PATH is a main file or a directory that\n"
               "                     holds deferd.yaml. Prints file:line:column: message for\n"
               "                     every problem; exits 0 when all are valid, 1 otherwise\n");
}

int validate(const std::vector<std::string>& paths) {
  int invalid = 0;
  for (const std::string& path : paths) {
    std::error_code ec;
    std::string file = path;
    if (std::filesystem::is_directory(path, ec)) {
      file = (std::filesystem::path(path) / kMainFileName).string();
    }
    deferd::config::LoadResult result = deferd::config::loadFile(file);
    for (const deferd::config::Diagnostic& diagnostic : result.diagnostics) {
      std::printf("%s\n", diagnostic.toString().c_str());
    }
    if (result.ok()) {
      std::printf("%s: valid\n", file.c_str());
    } else {
      invalid++;
    }
  }
  return invalid == 0 ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    printUsage(stderr);
    return 2;
  }
  if (args[0] == "--help" || args[0] == "-h") {
    printUsage(stdout);
    return 0;
  }
  if (args[0] == "--version") {
    std::printf("deferd %s\n", kVersion);
    return 0;
  }
  if (args[0] == "validate") {
    if (args.size() < 2) {
      std::fprintf(stderr, "deferd validate: missing PATH\n");
      printUsage(stderr);
      return 2;
    }
    return validate(std::vector<std::string>(args.begin() + 1, args.end()));
  }

  std::string config_path;
  std::string log_level;
  for (size_t i = 0; i < args.size(); i++) {
    if ((args[i] == "--config" || args[i] == "-c") && i + 1 < args.size()) {
      config_path = args[++i];
    } else if (args[i] == "--log-level" && i + 1 < args.size()) {
      log_level = args[++i];
    } else {
      std::fprintf(stderr, "deferd: unknown or incomplete argument '%s'\n", args[i].c_str());
      printUsage(stderr);
      return 2;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "deferd: missing --config FILE\n");
    printUsage(stderr);
    return 2;
  }

  auto logger = spdlog::stderr_color_mt("deferd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%Y-%m-%dT%H:%M:%S.%e%z] [%l] %v");

  // The peer closing a socket mid-write must be an error code, not a signal that kills us.
  std::signal(SIGPIPE, SIG_IGN);

  int code = 0;
  {
    // The server, and with it every worker, is gone before the logger: handlers that run while
    // the workers close their last connections still log.
    deferd::Server server(config_path, log_level);
    code = server.run();
  }
  spdlog::shutdown();
  return code;
}
