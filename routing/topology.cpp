// Roles of a database's servers from what they say of themselves (topology.hpp).
#include "routing/topology.hpp"

#include <algorithm>

namespace sluice::routing {

std::string_view to_string(HostRole r) {
  switch (r) {
    case HostRole::kPrimary:
      return "primary";
    case HostRole::kReplica:
      return "replica";
    case HostRole::kFenced:
      return "fenced";
    case HostRole::kUnknown:
      break;
  }
  return "unknown";
}

Topology::Topology(std::vector<std::string> addresses) {
  for (auto& a : addresses) {
    HostView h;
    h.address = std::move(a);
    hosts_.push_back(std::move(h));
  }
}

void Topology::adopt(const Topology& old) {
  for (auto& h : hosts_) {
    for (const auto& o : old.hosts_) {
      if (o.address == h.address) h = o;
    }
  }
  newest_ = old.newest_;
  changes_ = old.changes_;
  primary_.reset();
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    if (hosts_[i].role == HostRole::kPrimary) primary_ = i;
  }
}

void Topology::set_role(HostView& h, HostRole role, std::string why,
                        std::vector<std::string>& log) {
  if (h.role != role) {
    // A host's first role is found, not changed (logged as "found", not counted).
    const bool found = h.role == HostRole::kUnknown && h.why.empty();
    if (!found) ++changes_;
    std::string line = "host " + h.address + ": " +
                       (found ? "found " : std::string(to_string(h.role)) + " -> ") +
                       std::string(to_string(role));
    if (!why.empty()) line += " (" + why + ")";
    log.push_back(std::move(line));
  }
  h.role = role;
  h.why = std::move(why);
}

std::vector<std::string> Topology::update(const std::vector<HostCheck>& checks) {
  std::vector<std::string> log;
  for (const auto& c : checks) {
    for (auto& h : hosts_) {
      if (h.address != c.address) continue;
      h.checked = true;
      h.ok = c.ok;
      h.error = c.ok ? std::string() : c.error;
      if (c.ok) {
        h.in_recovery = c.in_recovery;
        h.timeline = c.in_recovery ? std::nullopt : c.timeline;
      }
    }
  }
  std::string newest_host;
  for (const auto& h : hosts_) {
    if (!h.ok || h.in_recovery) continue;
    const auto tl = h.timeline.value_or(0);
    if (tl > newest_ || (tl == newest_ && newest_host.empty())) {
      newest_ = std::max(newest_, tl);
      newest_host = h.address;
    }
  }
  std::vector<std::size_t> top;  // writable, on the newest timeline, not fenced
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    auto& h = hosts_[i];
    if (!h.ok) {
      if (h.role == HostRole::kPrimary)
        set_role(h, HostRole::kUnknown, "its check failed: " + h.error, log);
      continue;  // a replica stays one (banned while it fails), a fenced host stays fenced
    }
    if (h.in_recovery) {
      set_role(h, HostRole::kReplica, "in recovery", log);
      continue;
    }
    if (h.role == HostRole::kFenced) continue;  // until it is seen in recovery
    const auto tl = h.timeline.value_or(0);
    if (tl < newest_) {
      set_role(h, HostRole::kFenced,
               "writable on timeline " + std::to_string(tl) + ", older than timeline " +
                   std::to_string(newest_) +
                   (newest_host.empty() ? std::string() : " of " + newest_host),
               log);
      continue;
    }
    top.push_back(i);
  }
  std::optional<std::size_t> elected;
  if (top.size() == 1) {
    elected = top.front();
  } else if (primary_ && std::find(top.begin(), top.end(), *primary_) != top.end()) {
    elected = primary_;
  }
  for (auto i : top) {
    auto& h = hosts_[i];
    if (elected && i == *elected) {
      set_role(h, HostRole::kPrimary,
               "writable, timeline " + std::to_string(h.timeline.value_or(0)), log);
    } else {
      set_role(h, HostRole::kFenced,
               "writable beside " +
                   (elected ? hosts_[*elected].address : std::string("another writable host")) +
                   " on the same timeline " + std::to_string(h.timeline.value_or(0)),
               log);
    }
  }
  primary_ = elected;
  return log;
}

std::vector<std::size_t> Topology::replicas() const {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    if (hosts_[i].role == HostRole::kReplica) out.push_back(i);
  }
  return out;
}

std::vector<std::size_t> Topology::fenced() const {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    if (hosts_[i].role == HostRole::kFenced) out.push_back(i);
  }
  return out;
}

}  // namespace sluice::routing
