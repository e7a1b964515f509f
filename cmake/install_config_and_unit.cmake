# Runs at `cmake --install` time (CMAKE_INSTALL_PREFIX is the install-time prefix, DESTDIR honoured):
#   PREFIX/lib/systemd/system/sluice.service   from deploy/systemd/sluice.service.in
#   SYSCONF/sluice/sluice.yaml                  the packaged config, only when none is there yet
# SYSCONF is /etc for the prefix /usr (as GNUInstallDirs has it), else PREFIX/etc.
set(prefix "${CMAKE_INSTALL_PREFIX}")
if(prefix STREQUAL "/usr")
  set(sysconf "/etc")
else()
  set(sysconf "${prefix}/etc")
endif()
set(SLUICE_BIN_DIR "${prefix}/${SLUICE_BINDIR}")
set(SLUICE_CONF_DIR "${sysconf}/sluice")
set(SLUICE_DOC_DIR "${prefix}/${SLUICE_DOCDIR}")

set(unit_dir "$ENV{DESTDIR}${prefix}/lib/systemd/system")
configure_file("${SLUICE_SOURCE_DIR}/deploy/systemd/sluice.service.in" "${unit_dir}/sluice.service"
               @ONLY)
message(STATUS "Installing: ${unit_dir}/sluice.service")

set(conf "$ENV{DESTDIR}${SLUICE_CONF_DIR}/sluice.yaml")
if(EXISTS "${conf}")
  message(STATUS "Kept: ${conf} (the packaged one is in ${prefix}/${SLUICE_DATADIR}/sluice)")
else()
  # file(INSTALL) prepends DESTDIR itself.
  file(INSTALL "${SLUICE_SOURCE_DIR}/deploy/sluice.yaml" DESTINATION "${SLUICE_CONF_DIR}"
       FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endif()
