// Catch2's runner for single-process tests, compiled once.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
