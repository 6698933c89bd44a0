#pragma once

// Helpers shared by the controller tests: a temporary directory and a bounded wait.

#include <string>

#include <gtest/gtest.h>

#include "common/files.h"
#include "tests/common/test_util.h"

namespace modelcache::controller::testing {

using test_util::TempDir;
using test_util::WaitFor;
using test_util::WriteFile;

}  // namespace modelcache::controller::testing
