// Which server of a database is its primary, learned from the servers (databases.*.hosts): each
// health round says, per host, whether it answered, whether it is in recovery and, when it is
// writable, its timeline. Pure: the monitor's results in, the roles out; unit-tested alone.
//
// The rules (docs/ARCHITECTURE.md, "Failover"):
// - the primary is a writable host; a failed check revokes primary status at once (an unknown
//   primary holds writes, a stale one would send them to a dead or demoted server);
// - several writable hosts: the one on the newest timeline any writable host reported is the
//   primary, the others are fenced (no writes, no reads); on a tie the incumbent keeps the role,
//   and without one nobody gets it;
// - a fenced host stays fenced until it is seen in recovery (rebuilt as a standby): a writable
//   server on an older timeline may hold writes the newer one lacks;
// - a host in recovery is a replica; a replica whose check fails stays one (read routing bans it
//   until it answers again).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::routing {

struct HostCheck {
  std::string address;  // host:port, as the monitor names it
  bool ok = false;      // logged in and answered the check query
  bool in_recovery = false;
  std::optional<std::uint32_t> timeline;  // writable hosts: the timeline WAL is written on
  std::string error;                      // why the check failed
};

enum class HostRole : std::uint8_t { kUnknown, kPrimary, kReplica, kFenced };
std::string_view to_string(HostRole r);

struct HostView {
  std::string address;
  HostRole role = HostRole::kUnknown;
  bool checked = false;      // at least one check finished
  bool ok = false;           // the last check answered
  bool in_recovery = false;  // as of the last check that answered
  std::optional<std::uint32_t> timeline;
  std::string error;
  std::string why;  // what the role rests on (fenced: the newer timeline)
};

class Topology {
 public:
  explicit Topology(std::vector<std::string> addresses);

  // One round's checks (matched by address; hosts without a check keep their state). Returns a
  // line per role that changed ("host a:1: replica -> primary (why)"), or was found ("host
  // a:1: found replica (why)": a host's first role, not counted as a change), for the log.
  std::vector<std::string> update(const std::vector<HostCheck>& checks);
  // Keeps what is known of hosts still listed (a reload).
  void adopt(const Topology& old);

  std::optional<std::size_t> primary() const { return primary_; }
  std::vector<std::size_t> replicas() const;
  std::vector<std::size_t> fenced() const;
  const std::vector<HostView>& hosts() const { return hosts_; }
  std::uint64_t role_changes() const { return changes_; }  // found roles not counted
  std::uint32_t newest_timeline() const { return newest_; }

 private:
  void set_role(HostView& h, HostRole role, std::string why, std::vector<std::string>& log);

  std::vector<HostView> hosts_;
  std::optional<std::size_t> primary_;
  std::uint32_t newest_ = 0;  // the newest timeline a writable host reported
  std::uint64_t changes_ = 0;
};

}  // namespace sluice::routing
