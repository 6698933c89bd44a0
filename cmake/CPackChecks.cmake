# Run by cpack (CPACK_PROJECT_CONFIG_FILE): a Debian package installs into /usr and /etc, so the
# build must have been configured for them.
if(CPACK_GENERATOR STREQUAL "DEB" AND NOT CPACK_PACKAGING_INSTALL_PREFIX STREQUAL "/usr")
  message(FATAL_ERROR "modelcache: a .deb needs a build configured with "
          "-DCMAKE_INSTALL_PREFIX=/usr (this one has ${CPACK_PACKAGING_INSTALL_PREFIX})")
endif()
