#pragma once

// Last-resort exception guards for thread entry points. The project's errors are values; an
// exception reaching a thread's top is a bug or std::bad_alloc, and letting it out of the thread
// would std::terminate the whole daemon, stopping every other resource with it. So each thread
// entry point (job, engine, server, writer loops) runs its body through one of these: a job's
// body becomes an InternalError of that job's resource; a loop logs and carries on or ends
// cleanly, as its caller decides.

#include <exception>
#include <string>
#include <string_view>
#include <type_traits>

#include <spdlog/spdlog.h>

#include "common/result.h"

namespace modelcache {

// The message of the exception being handled; call only inside a catch block.
inline std::string CurrentExceptionMessage() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception of unknown type";
  }
}

// Runs `f`, which returns a Result; an exception becomes Error(Internal, "<what>: <message>"),
// logged at error level.
template <typename F>
auto ResultOrInternalError(std::string_view what, F&& f) -> std::invoke_result_t<F&> {
  try {
    return f();
  } catch (...) {
    std::string message = std::string(what) + ": unexpected exception: " + CurrentExceptionMessage();
    spdlog::error("{}", message);
    return Error(Reason::Internal, std::move(message));
  }
}

// Runs `f` (returning void); an exception is logged at error level and swallowed. Returns false
// when one was caught.
template <typename F>
bool LogExceptions(std::string_view what, F&& f) {
  try {
    f();
    return true;
  } catch (...) {
    spdlog::error("{}: unexpected exception: {}", what, CurrentExceptionMessage());
    return false;
  }
}

}  // namespace modelcache
