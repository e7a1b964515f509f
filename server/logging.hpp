// Process-wide logging setup on spdlog: text or JSON lines on stderr, level from the config.
#pragma once

#include "config/config.hpp"

namespace sluice::server {

void setup_logging(const config::Log& log);

}  // namespace sluice::server
