// A pooled client's identity as login established it (user, database, startup settings) and what
// that binds to in the configuration in force. Shared by every client with the same startup
// packet: a parked client holds one pointer to it, not copies.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "config/config.hpp"
#include "routing/pooling.hpp"
#include "routing/replicas.hpp"
#include "server/observability.hpp"
#include "server/pool.hpp"

namespace sluice::server {
class Runtime;
struct ClientNames;
}  // namespace sluice::server

namespace sluice::server::pgsession {

struct Login {
  Login() = default;
  Login(const Login&) = delete;  // `user` may point into `trust_user`
  Login& operator=(const Login&) = delete;

  std::string user_name;
  std::string db_name;
  routing::Settings startup;  // from the startup packet, applied on every server
  bool trusted = false;       // auth_type trust let in a user the configuration does not list

  // Bound to the configuration of `generation`.
  std::uint64_t generation = 0;
  std::shared_ptr<const config::Config> cfg;
  std::optional<config::User> trust_user;  // when trusted
  const config::User* user = nullptr;
  const config::Database* db = nullptr;
  config::PoolMode mode = config::PoolMode::kSession;
  std::shared_ptr<Pool> pool;
  std::optional<PoolLimits> limits;
  std::shared_ptr<const PoolCounters> counters;
  std::shared_ptr<routing::ReplicaSet> replicas;  // pooled modes; null: no read routing
  std::string sample_identity;                    // routing::sample_identity(db, server user)
  std::shared_ptr<const ClientNames> names;       // what SHOW CLIENTS shows
};

// The live Logins, by everything they were built from.
class Logins {
 public:
  // The live Login equal to `fresh` if there is one, else `fresh`.
  std::shared_ptr<const Login> intern(std::shared_ptr<Login> fresh);
  std::size_t size() const {
    std::lock_guard lock(mu_);
    return by_key_.size();
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::weak_ptr<const Login>> by_key_;
  std::size_t sweep_at_ = 64;  // forget expired entries when the map grows past this
};

// Binds a client's identity to the configuration now in force: null when its database or user
// is no longer configured.
std::shared_ptr<const Login> bind_login(Runtime& rt, const std::string& user_name,
                                        const std::string& db_name, routing::Settings startup,
                                        bool trusted);

}  // namespace sluice::server::pgsession
