# The layering test (ctest `layering_test`): every #include "<folder>/…" in a module's sources names a
# folder that DESIGN.md's architecture table lets that module use, and a module's internal/
# headers are included only from inside that module. Run as `cmake -DSOURCE_DIR=… -P` on the
# source tree; it reads the files, so it fails on the commit that breaks a rule.
#
# The table (DESIGN.md, "Architecture"): a folder may always include itself; common/ includes
# nothing else. controller/directory/ and controller/kube/ are part of controller/ (its row), and
# the runtime core (the files directly in controller/) includes neither: the modes plug into it.
# daemon/ also names crds/ types, which reach it through controller/'s and reconcilers/'
# interfaces (the ModelCache the manager hands around); its row in DESIGN.md lists only the
# modules it is wired from.
cmake_minimum_required(VERSION 3.25)
set(allowed_common "")
set(allowed_crds common)
set(allowed_store common)
set(allowed_shard common)
set(allowed_fetch common store)
set(allowed_reconcilers common crds fetch shard store)
set(allowed_controller common crds reconcilers)
set(allowed_daemon common crds controller reconcilers store)
set(allowed_cli common crds store shard fetch reconcilers controller daemon)
set(modules common crds store shard fetch reconcilers controller daemon cli)

if(NOT SOURCE_DIR)
  message(FATAL_ERROR "usage: cmake -DSOURCE_DIR=<modelcache source tree> -P check_layering.cmake")
endif()

set(violations 0)
foreach(module ${modules})
  file(GLOB_RECURSE files "${SOURCE_DIR}/${module}/*.h" "${SOURCE_DIR}/${module}/*.cpp")
  foreach(file ${files})
    file(STRINGS "${file}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*\"[a-z_]+/")
    foreach(line ${includes})
      string(REGEX MATCH "\"([a-z_]+)/" _ "${line}")
      set(target "${CMAKE_MATCH_1}")
      if(NOT target IN_LIST modules OR target STREQUAL module)
        continue()
      endif()
      if(NOT target IN_LIST allowed_${module})
        file(RELATIVE_PATH rel "${SOURCE_DIR}" "${file}")
        message(SEND_ERROR "${rel}: ${module}/ may not include ${target}/ (${line}); "
                           "DESIGN.md's table lets ${module}/ use: ${allowed_${module}}")
        math(EXPR violations "${violations} + 1")
      endif()
    endforeach()
  endforeach()
endforeach()

# The runtime core does not know the modes.
file(GLOB core_files "${SOURCE_DIR}/controller/*.h" "${SOURCE_DIR}/controller/*.cpp")
foreach(file ${core_files})
  file(STRINGS "${file}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*\"controller/(kube|directory)/")
  foreach(line ${includes})
    file(RELATIVE_PATH rel "${SOURCE_DIR}" "${file}")
    message(SEND_ERROR "${rel}: the runtime core may not include a mode's parts (${line})")
    math(EXPR violations "${violations} + 1")
  endforeach()
endforeach()

# internal/ headers are a module's private parts: nobody else includes them, except the module's
# own unit tests (tests/unit/<module>/, which test its parts one by one, as leveldb's *_test.cc
# beside their sources do).
file(GLOB_RECURSE all_files "${SOURCE_DIR}/*.h" "${SOURCE_DIR}/*.cpp")
list(FILTER all_files EXCLUDE REGEX "^${SOURCE_DIR}/build[^/]*/")
foreach(file ${all_files})
  file(STRINGS "${file}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*\"[a-z_]+/internal/")
  foreach(line ${includes})
    string(REGEX MATCH "\"([a-z_]+)/internal/" _ "${line}")
    set(owner "${CMAKE_MATCH_1}")
    if(NOT file MATCHES "^${SOURCE_DIR}/${owner}/" AND
       NOT file MATCHES "^${SOURCE_DIR}/tests/unit/${owner}/")
      file(RELATIVE_PATH rel "${SOURCE_DIR}" "${file}")
      message(SEND_ERROR "${rel}: includes ${owner}/'s internal header (${line}); use ${owner}'s interface")
      math(EXPR violations "${violations} + 1")
    endif()
  endforeach()
endforeach()

if(violations GREATER 0)
  message(FATAL_ERROR "layering: ${violations} include(s) break DESIGN.md's architecture table")
endif()
message(STATUS "layering: every include follows DESIGN.md's architecture table")
