// Logins: a client's identity bound to the configuration, shared between equal clients.
#include "server/pg/identity.hpp"

#include "routing/insights.hpp"
#include "server/runtime.hpp"

namespace sluice::server::pgsession {

namespace {

std::string key_of(const Login& l) {
  std::string key = std::to_string(l.generation);
  auto add = [&key](const std::string& s) {
    key += '\0';
    key += s;
  };
  add(l.user_name);
  add(l.db_name);
  add(l.trusted ? "t" : "");
  for (const auto& [name, value] : l.startup) {
    add(name);
    add(value);
  }
  return key;
}

}  // namespace

std::shared_ptr<const Login> Logins::intern(std::shared_ptr<Login> fresh) {
  auto key = key_of(*fresh);
  std::lock_guard lock(mu_);
  auto& slot = by_key_[key];
  if (auto live = slot.lock()) return live;
  slot = fresh;
  if (by_key_.size() > sweep_at_) {
    std::erase_if(by_key_, [](const auto& e) { return e.second.expired(); });
    sweep_at_ = std::max<std::size_t>(64, by_key_.size() * 2);
  }
  return fresh;
}

std::shared_ptr<const Login> bind_login(Runtime& rt, const std::string& user_name,
                                        const std::string& db_name, routing::Settings startup,
                                        bool trusted) {
  auto l = std::make_shared<Login>();
  l->user_name = user_name;
  l->db_name = db_name;
  l->startup = std::move(startup);
  l->trusted = trusted;
  // The generation before the snapshot: a reload in between binds the client again later.
  l->generation = rt.generation.load();
  l->cfg = rt.config();
  if (trusted) {
    l->trust_user.emplace();
    l->trust_user->name = l->trust_user->server_user = user_name;
    l->user = &*l->trust_user;
  } else {
    l->user = l->cfg->user(user_name);
  }
  l->db = l->cfg->database(db_name);
  if (!l->user || !l->db) return nullptr;
  l->mode = l->cfg->pool_mode_for(*l->db, *l->user);
  l->pool = rt.pools.get(*l->cfg, *l->db, *l->user, rt.server_tls());
  l->limits = PoolLimits::from(*l->cfg, *l->db, *l->user);
  l->counters = rt.obs.counters(db_name, user_name);
  if (l->mode != config::PoolMode::kSession) l->replicas = rt.routes.get(db_name);
  l->sample_identity = routing::sample_identity(db_name, l->user->server_user);
  auto app = l->startup.find("application_name");
  l->names = std::make_shared<const ClientNames>(
      ClientNames{user_name, db_name, app == l->startup.end() ? std::string() : app->second});
  return rt.logins.intern(std::move(l));
}

}  // namespace sluice::server::pgsession
