# `cmake --install` (honours CMAKE_INSTALL_PREFIX and DESTDIR) and the Debian package (CPack DEB,
# `cpack -G DEB` in a build configured with -DCMAKE_INSTALL_PREFIX=/usr; docs/install.md).
#
#   <prefix>/bin/modelcache
#   <prefix>/lib/systemd/system/modelcache.service   (MODELCACHE_SYSTEMD_UNIT_DIR)
#   <sysconfdir>/modelcache/{config.yaml,modelcache.env,models/}   (/etc for the prefix /usr)
#   <prefix>/share/modelcache/{crds,manifests}/      CRDs, Kubernetes and systemd manifests
#   <prefix>/share/doc/modelcache/                   README and docs/
include(GNUInstallDirs)
set(MODELCACHE_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE STRING
    "Where the systemd unit is installed, relative to CMAKE_INSTALL_PREFIX")
set(mc_etc ${CMAKE_INSTALL_FULL_SYSCONFDIR}/modelcache)

install(TARGETS modelcache RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# The unit names /usr/bin/modelcache and /etc/modelcache; it is installed with this prefix's paths.
set(mc_unit_source ${PROJECT_SOURCE_DIR}/manifests/systemd/modelcache.service)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${mc_unit_source})
file(READ ${mc_unit_source} mc_unit)
string(REPLACE "/usr/bin/modelcache" "${CMAKE_INSTALL_FULL_BINDIR}/modelcache" mc_unit "${mc_unit}")
string(REPLACE "/etc/modelcache" "${mc_etc}" mc_unit "${mc_unit}")
string(REPLACE "/usr/share/doc/modelcache" "${CMAKE_INSTALL_FULL_DOCDIR}" mc_unit "${mc_unit}")
file(CONFIGURE OUTPUT ${CMAKE_BINARY_DIR}/install/modelcache.service CONTENT "${mc_unit}" @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/install/modelcache.service
        DESTINATION ${MODELCACHE_SYSTEMD_UNIT_DIR})

install(FILES manifests/systemd/config.yaml manifests/systemd/modelcache.env DESTINATION ${mc_etc})
install(DIRECTORY DESTINATION ${mc_etc}/models)

install(FILES crds/modelcache.yaml crds/modelcachenode.yaml DESTINATION ${CMAKE_INSTALL_DATADIR}/modelcache/crds)
install(DIRECTORY manifests/kubernetes manifests/examples manifests/systemd
        DESTINATION ${CMAKE_INSTALL_DATADIR}/modelcache/manifests)
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR} FILES_MATCHING PATTERN "*.md")

# The Debian package. Depends is computed by dpkg-shlibdeps from the binary's libraries, plus what
# the maintainer scripts and HTTPS need.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME modelcache)
set(CPACK_PACKAGE_VENDOR "modelcache")
set(CPACK_PACKAGE_CONTACT "modelcache maintainers <maintainers@modelcache.dev>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_DESCRIPTION
    "A controller daemon that turns declarative ModelCache resources into verified, versioned,\n"
    "optionally tensor-parallel-sharded model artifacts on local disk or S3. It runs on\n"
    "Kubernetes, on a directory of YAML (GitOps), or as this systemd node daemon.")
string(CONCAT CPACK_PACKAGE_DESCRIPTION ${CPACK_PACKAGE_DESCRIPTION})
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser, ca-certificates, init-system-helpers (>= 1.54~)")
set(mc_debian ${CMAKE_BINARY_DIR}/debian)
foreach(script postinst prerm postrm conffiles)
  set(SYSCONFDIR ${CMAKE_INSTALL_FULL_SYSCONFDIR})
  configure_file(manifests/debian/${script} ${mc_debian}/${script} @ONLY)
  list(APPEND CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${mc_debian}/${script})
endforeach()
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# The package's paths are those of this configuration: a .deb must be built with the prefix /usr.
set(CPACK_PROJECT_CONFIG_FILE ${PROJECT_SOURCE_DIR}/cmake/CPackChecks.cmake)
include(CPack)
