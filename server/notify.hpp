// systemd's readiness protocol (sd_notify) without libsystemd: one datagram per state change to
// the socket named by $NOTIFY_SOCKET (a path, or @name for the abstract namespace). Nothing happens
// when the variable is unset, i.e. everywhere but under a Type=notify unit.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace sluice::server {

// Sends e.g. "READY=1\nSTATUS=accepting clients". Returns false when $NOTIFY_SOCKET is set but the
// message could not be sent (logged by the caller if it matters); true otherwise.
bool notify_service_manager(std::string_view state);

// The service manager's watchdog (WatchdogSec= in the unit): the interval from $WATCHDOG_USEC when
// it is meant for this process ($WATCHDOG_PID unset or ours); nullopt otherwise.
std::optional<std::chrono::microseconds> watchdog_interval();

}  // namespace sluice::server
