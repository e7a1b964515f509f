// A PostgreSQL client session's states and the transitions between them, and how a relay step
// ends: pure (no I/O), unit-tested; ClientSession::enter() is the one place a session changes
// state.
#pragma once

#include <cstdint>
#include <string_view>

namespace sluice::server {

// How SHOW CLIENTS, /status and the metrics show a client (PostgreSQL or MongoDB).
enum class ClientState : std::uint8_t { kLogin, kActive, kWaiting };

}  // namespace sluice::server

namespace sluice::server::pgsession {

// Where a client session is. The transitions are listed in may_enter() below.
enum class Phase : std::uint8_t {
  kStartup,         // reading the startup packet (and the TLS handshake)
  kAuthenticating,  // SCRAM / md5 / trust exchange with the client
  kIdle,            // between requests without a server (pooled), or answering locally
  kParked,          // idle with no coroutine frame: a wait on the client's socket only
  kWaiting,         // waiting for a server connection (the pool is busy, or PAUSE)
  kRelaying,        // a server connection is attached; bytes flow both ways
  kCopy,            // COPY in progress: FROM STDIN or CopyBoth; TO STDOUT too in session
                    // pooling (transaction pooling never inspects CopyOutResponse: the
                    // pooled session must not see it)
  kDraining,        // the transaction ended: settings and the write LSN are read back, then the
                    // server connection goes back to the pool
  kClosing,         // the session ends (error sent, the log line written)
};

inline constexpr std::string_view to_string(Phase p) {
  switch (p) {
    case Phase::kStartup:
      return "startup";
    case Phase::kAuthenticating:
      return "authenticating";
    case Phase::kIdle:
      return "idle";
    case Phase::kParked:
      return "parked";
    case Phase::kWaiting:
      return "waiting";
    case Phase::kRelaying:
      return "relaying";
    case Phase::kCopy:
      return "copy";
    case Phase::kDraining:
      return "draining";
    case Phase::kClosing:
      return "closing";
  }
  return "?";
}

// The transition table. Every state may close; nothing leaves kClosing. Entering the state a
// session is already in is a no-op and always allowed.
inline constexpr bool may_enter(Phase from, Phase to) {
  if (from == to) return true;
  if (from == Phase::kClosing) return false;
  if (to == Phase::kClosing) return true;
  switch (from) {
    case Phase::kStartup:  // every login authenticates (trust included)
      return to == Phase::kAuthenticating;
    case Phase::kAuthenticating:  // session pooling attaches at login; pooled clients idle
      return to == Phase::kIdle || to == Phase::kWaiting || to == Phase::kRelaying;
    case Phase::kIdle:  // a request: checkout, or (local answers, refusals) stay idle
      return to == Phase::kParked || to == Phase::kWaiting || to == Phase::kRelaying;
    case Phase::kParked:  // the socket became readable
      return to == Phase::kIdle;
    case Phase::kWaiting:  // a server, or the request refused (pooled: the session goes on)
      return to == Phase::kRelaying || to == Phase::kIdle;
    case Phase::kRelaying:  // release, a read retried on another node, COPY
      return to == Phase::kDraining || to == Phase::kIdle || to == Phase::kWaiting ||
             to == Phase::kCopy;
    case Phase::kCopy:
      return to == Phase::kRelaying || to == Phase::kDraining;
    case Phase::kDraining:
      return to == Phase::kIdle;
    case Phase::kClosing:
      return false;
  }
  return false;
}

// What SHOW CLIENTS and the metrics call a phase: login, active or waiting (PgBouncer's words).
inline constexpr ClientState shown_as(Phase p) {
  switch (p) {
    case Phase::kStartup:
    case Phase::kAuthenticating:
      return ClientState::kLogin;
    case Phase::kWaiting:
      return ClientState::kWaiting;
    default:
      return ClientState::kActive;
  }
}

// What the next step of a session is, as the relay's pieces decide it.
enum class Next : std::uint8_t {
  kGoOn,        // nothing decided: the caller carries on
  kEnd,         // the session ends (Outcome::why says why)
  kParked,      // idle without a server: the session waits on the client's socket alone
  kReleased,    // the server connection went back to the pool between transactions
  kConcurrent,  // the sequential relay needs both directions at once
  kRetry,       // a read's replica connection broke before the client got a byte
  kGone,        // the server went away with nothing in flight: the next request goes elsewhere
  kAnswered,    // sluice answered the request itself (cache, local answer, SHOW, refusal)
};

// A relay step's result: trivially copyable (no string to free in a coroutine frame). A string
// literal converts to kEnd with that reason, so `co_return "client disconnected";` ends the
// session.
struct Outcome {
  Next next = Next::kGoOn;
  const char* why = "";  // kEnd: for the log line (a literal: never freed)

  constexpr Outcome() = default;
  constexpr Outcome(Next n) : next(n) {}  // NOLINT: implicit by design
  constexpr Outcome(const char* reason) : next(Next::kEnd), why(reason) {}  // NOLINT
  // Something was decided: `if (auto o = co_await step()) co_return o;`
  constexpr explicit operator bool() const { return next != Next::kGoOn; }
  constexpr bool is(Next n) const { return next == n; }
};

}  // namespace sluice::server::pgsession
