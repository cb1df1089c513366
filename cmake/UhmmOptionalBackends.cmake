# Detects the optional GPU toolchains. Nothing here links libcuda: the CUDA backend loads the driver
# (and CUPTI) at run time, so the library starts on machines without the NVIDIA driver. nvcc is only
# needed for the CUDA samples.
set(UHMM_HAVE_CUDA OFF)
if(UHMM_ENABLE_CUDA)
  find_package(CUDAToolkit QUIET)
  find_path(UHMM_CUPTI_INCLUDE_DIR cupti.h
    HINTS ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}/extras/CUPTI/include)
  if(CUDAToolkit_FOUND AND UHMM_CUPTI_INCLUDE_DIR)
    set(UHMM_HAVE_CUDA ON)
    # Where the CUDA backend looks for libcupti at run time, after the loader's own search path.
    # Colon-separated, like LD_LIBRARY_PATH.
    set(UHMM_CUPTI_LIBRARY_DIRS "${CUDAToolkit_LIBRARY_DIR}")
    if(CUDAToolkit_LIBRARY_ROOT)
      string(APPEND UHMM_CUPTI_LIBRARY_DIRS ":${CUDAToolkit_LIBRARY_ROOT}/extras/CUPTI/lib64")
    endif()
    message(STATUS "uhmm: CUDA toolkit ${CUDAToolkit_VERSION} found at ${CUDAToolkit_BIN_DIR}")
  elseif(CUDAToolkit_FOUND)
    message(STATUS "uhmm: CUDA toolkit found but not cupti.h; CUDA backend not built")
  else()
    message(STATUS "uhmm: CUDA toolkit not found; CUDA backend not built")
  endif()
endif()

# nvcc for the CUDA samples. CUDA 13 builds for Turing and newer; default to Ampere and Hopper
# (A100, H100/H200) to keep CI builds short. Override with -DCMAKE_CUDA_ARCHITECTURES=...
set(UHMM_HAVE_NVCC OFF)
if(UHMM_HAVE_CUDA AND UHMM_BUILD_SAMPLES)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(UHMM_HAVE_NVCC ON)
  else()
    message(STATUS "uhmm: nvcc not found; CUDA samples not built")
  endif()
endif()

# Level Zero: only the headers are needed to build; the backend loads libze_loader.so.1 at run time
# and is "unavailable" (tests skip with the reason) where the loader or a GPU driver is missing.
set(UHMM_HAVE_LEVEL_ZERO OFF)
if(UHMM_ENABLE_LEVEL_ZERO)
  pkg_check_modules(LEVEL_ZERO QUIET IMPORTED_TARGET level-zero)
  find_path(UHMM_LEVEL_ZERO_INCLUDE_DIR level_zero/ze_api.h
    HINTS ${LEVEL_ZERO_INCLUDE_DIRS} ${LEVEL_ZERO_INCLUDEDIR})
  if(UHMM_LEVEL_ZERO_INCLUDE_DIR AND EXISTS "${UHMM_LEVEL_ZERO_INCLUDE_DIR}/level_zero/layers/zel_tracing_api.h")
    set(UHMM_HAVE_LEVEL_ZERO ON)
    message(STATUS "uhmm: Level Zero headers found in ${UHMM_LEVEL_ZERO_INCLUDE_DIR} (loader ${LEVEL_ZERO_VERSION})")
  else()
    message(STATUS "uhmm: Level Zero headers (libze-dev) not found; Level Zero backend not built")
  endif()
endif()
