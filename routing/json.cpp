// Boost.JSON compiled into sluice (header-only mode): this translation unit holds its sources.
#include <boost/json/src.hpp>
