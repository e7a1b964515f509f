// sluice's command line: run the proxy, check a config file, or print the version.
#include <spdlog/spdlog.h>

#include <cstring>
#include <iostream>

#include "server/app.hpp"
#include "server/logging.hpp"

namespace {

constexpr const char* kUsage =
    R"(usage: sluice --config FILE       run the proxy with this configuration
       sluice --check-config FILE validate a configuration file and exit
       sluice --version           print the version
       sluice --help              print this help

Signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads the configuration.
)";

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
      std::cout << "sluice " << SLUICE_VERSION << "\n";
      return 0;
    }
    if ((arg == "--config" || arg == "-c" || arg == "--check-config") && i + 1 < argc) {
      check_only = check_only || arg == "--check-config";
      config_path = argv[++i];
      continue;
    }
    std::cerr << "sluice: unknown or incomplete argument '" << arg << "'\n" << kUsage;
    return 2;
  }
  if (config_path.empty()) {
    std::cerr << "sluice: --config FILE is required\n" << kUsage;
    return 2;
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
