// What the MongoDB proxy's files share: wire aliases, the error codes mongod sends, BSON helpers.
#pragma once

#include <bson/bson.h>

#include <cstdint>
#include <string_view>

#include "protocol/mongo/wire.hpp"
#include "routing/mongo.hpp"

namespace sluice::server {

namespace wire = sluice::mongo;
namespace rm = routing::mongo;
using wire::Buffer;
using wire::Span;

// Error codes as mongod / mongos send them.
namespace code {
constexpr std::int32_t kBadValue = 2;
constexpr std::int32_t kHostUnreachable = 6;
constexpr std::int32_t kFailedToParse = 9;
constexpr std::int32_t kUnauthorized = 13;
constexpr std::int32_t kAuthenticationFailed = 18;
constexpr std::int32_t kCursorNotFound = 43;
constexpr std::int32_t kFailedToSatisfyReadPreference = 133;
constexpr std::int32_t kNetworkInterfaceExceededTimeLimit = 202;
constexpr std::int32_t kUnsupportedOpQueryCommand = 352;
constexpr std::int32_t kBSONObjectTooLarge = 10334;
constexpr std::int32_t kNoDb = 40571;
}  // namespace code

// The codeName mongod gives `c`.
std::string_view code_name(std::int32_t c);

inline Span span_of(const bson_t* b) {
  return {bson_get_data(b), b->len};
}

// The bytes of `b`, which is destroyed.
Buffer to_buffer(bson_t* b);
// {ok: 0, errmsg, code, codeName}.
Buffer error_body(std::int32_t c, std::string_view errmsg);
// {ok: 1}.
Buffer ok_body();
// Whether the top-level field `key` of `body` is present and true.
bool field_true(Span body, const char* key);
// The bytes of the document `it` points at (empty when it is not one).
Span sub_document(const bson_iter_t& it);

}  // namespace sluice::server
