// Roles learned from the servers, turned into the running configuration (failover.hpp).
#include "server/failover.hpp"

#include <algorithm>

namespace sluice::server {

std::string address_of(const config::Backend& b) {
  return config::Endpoint{b.host, b.port}.to_string();
}

namespace {

std::vector<std::string> host_addresses(const config::Database& db) {
  std::vector<std::string> out;
  for (const auto& h : db.hosts) out.push_back(address_of(h));
  return out;
}

// What sessions see of a topology: who takes writes, who takes reads, who takes nothing.
struct TopologyShape {
  std::optional<std::size_t> primary;
  std::vector<std::size_t> replicas, fenced;
  bool operator==(const TopologyShape&) const = default;
};
TopologyShape topology_shape(const routing::Topology& t) {
  return {t.primary(), t.replicas(), t.fenced()};
}

}  // namespace

void Failover::set_file(std::shared_ptr<const config::Config> file, const Install& install) {
  std::lock_guard lock(mu_);
  std::map<std::string, routing::Topology> next;
  for (const auto& [name, db] : file->databases) {
    if (!db.auto_roles()) continue;
    routing::Topology t(host_addresses(db));
    if (auto it = dbs_.find(name); it != dbs_.end()) t.adopt(it->second);
    next.emplace(name, std::move(t));
  }
  dbs_ = std::move(next);
  file_ = std::move(file);
  install(derive());
}

Failover::Change Failover::update(const std::string& db,
                                  const std::vector<routing::HostCheck>& checks,
                                  const Install& install) {
  std::lock_guard lock(mu_);
  Change change;
  auto it = dbs_.find(db);
  if (it == dbs_.end()) return change;
  auto& t = it->second;
  ++rounds_[db];
  const auto before = topology_shape(t);
  change.log = t.update(checks);
  const auto after = topology_shape(t);
  if (before == after) return change;
  if (before.primary && before.primary != after.primary)
    change.old_primary = t.hosts()[*before.primary].address;
  if (after.primary) last_primary_[db] = t.hosts()[*after.primary].address;
  install(derive());
  return change;
}

std::uint64_t Failover::rounds(const std::string& db) const {
  std::lock_guard lock(mu_);
  auto it = rounds_.find(db);
  return it == rounds_.end() ? 0 : it->second;
}

bool Failover::any_without_primary() const {
  std::lock_guard lock(mu_);
  return std::any_of(dbs_.begin(), dbs_.end(),
                     [](const auto& d) { return !d.second.primary().has_value(); });
}

bool Failover::elected(const std::string& db, const std::string& address) const {
  std::lock_guard lock(mu_);
  auto it = dbs_.find(db);
  if (it == dbs_.end()) return false;
  auto p = it->second.primary();
  return p && it->second.hosts()[*p].address == address;
}

std::map<std::string, routing::Topology> Failover::snapshot() const {
  std::lock_guard lock(mu_);
  return dbs_;
}

std::shared_ptr<const config::Config> Failover::derive() const {
  if (dbs_.empty()) return file_;
  auto cfg = std::make_shared<config::Config>(*file_);
  for (auto& [name, db] : cfg->databases) {
    auto it = dbs_.find(name);
    if (it == dbs_.end()) continue;
    const auto& t = it->second;
    db.primary_known = t.primary().has_value();
    // While none is known, sessions bind the last primary's pool (or the first host's) and wait
    // at checkout; they bind again when one is elected.
    db.primary = db.hosts.front();
    auto last = last_primary_.find(name);
    for (const auto& h : db.hosts) {
      if (last != last_primary_.end() && address_of(h) == last->second) db.primary = h;
    }
    if (auto p = t.primary()) db.primary = db.hosts[*p];
    db.replicas.clear();
    for (auto i : t.replicas()) db.replicas.push_back(db.hosts[i]);
  }
  return cfg;
}

}  // namespace sluice::server
