// The version of this build: the git version at build time (cmake/version.cmake).
#pragma once

#include <string_view>

namespace sluice {

std::string_view version() noexcept;

}  // namespace sluice
