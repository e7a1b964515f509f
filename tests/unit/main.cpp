// Catch2 test runner entry point for sluice's unit tests.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
