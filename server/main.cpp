// sluice's command line: run the proxy, check a config file, or print the version.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "server/app.hpp"
#include "server/http.hpp"
#include "server/logging.hpp"
#include "server/version.hpp"

namespace {

constexpr const char* kUsage =
    R"(usage: sluice [--config FILE]     run the proxy with this configuration
       sluice --check-config [FILE] validate a configuration file and exit
       sluice --probe URL           GET an http:// URL (e.g. /healthz), exit 0 on 2xx
       sluice --version             print the version
       sluice --help                print this help

Without --config the file is $SLUICE_CONFIG, else /etc/sluice/sluice.yaml. Values in it may
come from the environment: ${VAR} or ${VAR:-default}.
Signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads the configuration.
)";

constexpr const char* kDefaultConfig = "/etc/sluice/sluice.yaml";

}  // namespace

int main(int argc, char** argv) {
  using namespace sluice;
  std::string config_path;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (arg == "--version" || arg == "-V") {
      std::cout << "sluice " << version() << "\n";
      return 0;
    }
    if (arg == "--probe" && i + 1 < argc && i + 2 == argc)
      return server::http_probe(argv[i + 1], std::chrono::seconds(3), std::cout, std::cerr);
    if (arg == "--check-config") {
      check_only = true;
      if (i + 1 < argc && argv[i + 1][0] != '-') config_path = argv[++i];
      continue;
    }
    if ((arg == "--config" || arg == "-c") && i + 1 < argc) {
      config_path = argv[++i];
      continue;
    }
    std::cerr << "sluice: unknown or incomplete argument '" << arg << "'\n" << kUsage;
    return 2;
  }
  if (config_path.empty()) {
    const char* env = std::getenv("SLUICE_CONFIG");
    config_path = env != nullptr && *env != '\0' ? env : kDefaultConfig;
  }
  std::shared_ptr<const config::Config> cfg;
  try {
    cfg = config::load_file(config_path);
  } catch (const config::ConfigError& e) {
    std::cerr << "sluice: configuration error: " << e.what() << "\n";
    return 1;
  }
  if (check_only) {
    std::cout << "sluice: configuration OK: " << config_path << " (" << cfg->databases.size()
              << " database(s), " << cfg->users.size() << " user(s))\n";
    return 0;
  }
  try {
    server::setup_logging(cfg->log);
    server::App app(config_path, cfg);
    return app.run();
  } catch (const std::exception& e) {
    spdlog::critical("sluice could not start: {}", e.what());
    return 1;
  }
}
