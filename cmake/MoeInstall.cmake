# Install rules and the CMake package `moe_ep` (MOE_INSTALL, on when moe-ep is the top-level
# project). From an install prefix P (`cmake --install build --prefix P`), a project with P in
# CMAKE_PREFIX_PATH writes
#   find_package(moe_ep CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE moe::runtime)
# Headers go to include/moe_ep/ with their repository paths (include/moe_ep/runtime/moe_layer.hpp),
# so `#include "runtime/moe_layer.hpp"` reads the same inside and outside the repository.
# tests/package/check_package.sh builds and runs a consumer against an installed tree.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(MOE_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/moe_ep"
    CACHE STRING "Where the moe_ep package configuration is installed, relative to the prefix")
mark_as_advanced(MOE_INSTALL_CMAKEDIR)

install(TARGETS moe_config moe_comm moe_experts moe_runtime
  EXPORT moe_ep_targets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  FILE_SET HEADERS DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/moe_ep
  # <moe_ep/moe_ep.hpp> and its public set (runtime/moe_ep/).
  FILE_SET public_api DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/moe_ep
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/moe_ep)
install(EXPORT moe_ep_targets
  NAMESPACE moe::
  FILE moe_epTargets.cmake
  DESTINATION ${MOE_INSTALL_CMAKEDIR})

# The configuration finds what the libraries link (static libraries carry their private
# dependencies too: zlib); MOE_HAS_CUDA tells it whether the CUDA runtime and NCCL are among them.
configure_package_config_file(cmake/moe_epConfig.cmake.in
  "${PROJECT_BINARY_DIR}/moe_epConfig.cmake"
  INSTALL_DESTINATION ${MOE_INSTALL_CMAKEDIR})
# 0.x: a minor version may change the API.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/moe_epConfigVersion.cmake"
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/moe_epConfig.cmake"
  "${PROJECT_BINARY_DIR}/moe_epConfigVersion.cmake"
  DESTINATION ${MOE_INSTALL_CMAKEDIR})
if(MOE_HAS_CUDA)
  install(FILES cmake/FindNCCL.cmake DESTINATION ${MOE_INSTALL_CMAKEDIR})
endif()

# The programs, when built (not part of the package's targets).
if(MOE_BUILD_APPS)
  install(TARGETS moe-train moe-bench moe-replay RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
