// BSON helpers and error documents shared by the MongoDB proxy's files.
#include <bson/bson.h>

#include "server/mongo/internal.hpp"

namespace sluice::server {

std::string_view code_name(std::int32_t c) {
  switch (c) {
    case code::kBadValue:
      return "BadValue";
    case code::kHostUnreachable:
      return "HostUnreachable";
    case code::kFailedToParse:
      return "FailedToParse";
    case code::kUnauthorized:
      return "Unauthorized";
    case code::kAuthenticationFailed:
      return "AuthenticationFailed";
    case code::kCursorNotFound:
      return "CursorNotFound";
    case code::kFailedToSatisfyReadPreference:
      return "FailedToSatisfyReadPreference";
    case code::kNetworkInterfaceExceededTimeLimit:
      return "NetworkInterfaceExceededTimeLimit";
    case code::kUnsupportedOpQueryCommand:
      return "UnsupportedOpQueryCommand";
    case code::kBSONObjectTooLarge:
      return "BSONObjectTooLarge";
    case code::kNoDb:
      return "Location40571";  // what mongod names it
    default:
      return "InternalError";
  }
}

Buffer to_buffer(bson_t* b) {
  Buffer out(bson_get_data(b), bson_get_data(b) + b->len);
  bson_destroy(b);
  return out;
}

Buffer error_body(std::int32_t c, std::string_view errmsg) {
  return wire::error_document(c, code_name(c), errmsg);
}

Buffer ok_body() {
  bson_t b;
  bson_init(&b);
  bson_append_double(&b, "ok", 2, 1.0);
  return to_buffer(&b);
}

bool field_true(Span body, const char* key) {
  bson_t doc;
  bson_iter_t it;
  if (!bson_init_static(&doc, body.data(), body.size())) return false;
  return bson_iter_init_find(&it, &doc, key) && bson_iter_as_bool(&it);
}

Span sub_document(const bson_iter_t& it) {
  std::uint32_t len = 0;
  const std::uint8_t* data = nullptr;
  bson_iter_document(&it, &len, &data);
  return data ? Span(data, len) : Span();
}

}  // namespace sluice::server
