# mc_module(NAME <module> [LIBS <libs…>]): the library of one folder (DESIGN.md: a folder is a
# module), built from every .cpp directly in that folder except main.cpp. Sources are globbed so
# that adding a file to a module needs no edit here.
function(mc_module)
  cmake_parse_arguments(ARG "" "NAME" "PUBLIC_LIBS;PRIVATE_LIBS" ${ARGN})
  file(GLOB sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  list(FILTER sources EXCLUDE REGEX "/main\\.cpp$")
  if(sources)
    add_library(mc_${ARG_NAME} ${sources})
    target_include_directories(mc_${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
    target_link_libraries(mc_${ARG_NAME} PUBLIC ${ARG_PUBLIC_LIBS} PRIVATE ${ARG_PRIVATE_LIBS} mc_warnings)
  else()
    add_library(mc_${ARG_NAME} INTERFACE)
    target_include_directories(mc_${ARG_NAME} INTERFACE ${PROJECT_SOURCE_DIR})
    target_link_libraries(mc_${ARG_NAME} INTERFACE ${ARG_PUBLIC_LIBS})
  endif()
  add_library(modelcache::${ARG_NAME} ALIAS mc_${ARG_NAME})
endfunction()

# mc_unit_tests(<module> [LIBS <libs…>]): one gtest binary unit_<module> from every *_test.cpp in
# the current folder, labelled "unit".
function(mc_unit_tests module)
  cmake_parse_arguments(ARG "" "" "LIBS" ${ARGN})
  file(GLOB sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*_test.cpp)
  if(NOT sources)
    return()
  endif()
  add_executable(unit_${module} ${sources})
  target_link_libraries(unit_${module} PRIVATE modelcache::${module} ${ARG_LIBS}
                        GTest::gtest_main GTest::gmock mc_warnings)
  gtest_discover_tests(unit_${module} DISCOVERY_MODE PRE_TEST NO_PRETTY_VALUES PROPERTIES LABELS unit)
endfunction()
