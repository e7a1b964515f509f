// Databases whose servers' roles are learned (databases.*.hosts, role: auto): the configuration
// as the file says it and a routing::Topology per such database. The running configuration
// (Runtime::config()) is derived from both: the elected primary, the hosts in recovery as
// replicas. Every change is installed under this object's lock, so a reload and a monitor round
// never install each other's stale view.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "routing/topology.hpp"

namespace sluice::server {

class Failover {
 public:
  using Install = std::function<void(std::shared_ptr<const config::Config>)>;
  struct Change {
    std::vector<std::string> log;            // one line per role that changed
    std::optional<std::string> old_primary;  // host:port that lost the primary role
  };

  // At start and on reload: keeps what is known of hosts still listed; installs the result.
  void set_file(std::shared_ptr<const config::Config> file, const Install& install);
  // One round's checks of a database's hosts; installs a new configuration when the primary,
  // the replicas or the fenced hosts changed.
  Change update(const std::string& db, const std::vector<routing::HostCheck>& checks,
                const Install& install);
  // Some database with learned roles has no primary elected (writes wait).
  bool any_without_primary() const;
  // Rounds of checks seen for `db` (a session that saw the primary fail waits for the next).
  std::uint64_t rounds(const std::string& db) const;
  bool elected(const std::string& db, const std::string& address) const;
  std::map<std::string, routing::Topology> snapshot() const;

 private:
  std::shared_ptr<const config::Config> derive() const;  // under mu_

  mutable std::mutex mu_;
  std::shared_ptr<const config::Config> file_;
  std::map<std::string, routing::Topology> dbs_;
  std::map<std::string, std::string> last_primary_;  // the last elected host, while none is
  std::map<std::string, std::uint64_t> rounds_;
};

std::string address_of(const config::Backend& b);

}  // namespace sluice::server
