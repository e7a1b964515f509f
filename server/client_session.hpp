// One client connection: startup, TLS, authentication, a pooled server connection, the relay.
#pragma once

#include <memory>

#include "server/runtime.hpp"

namespace sluice::server {

// Owns `socket` until the client leaves; never throws.
awaitable<void> run_client_session(tcp::socket socket, std::shared_ptr<Runtime> rt);

}  // namespace sluice::server
