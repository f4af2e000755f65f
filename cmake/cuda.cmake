# The CUDA build: libcaffe2_ort_cuda.so (the CPU kernels and the CUDA/cuDNN kernels in one ai.caffe2
# domain) and the test-only libcaffe2_ort_cuda_testing.so. Included at the end of CMakeLists.txt.
#
#   CAFFE2_ORT_CUDA        ON/OFF; default ON when nvcc and cuDNN (headers + libcudnn.so.9) are found
#   CAFFE2_ORT_CUDA_ARCHS  real architectures to build SASS for (default 75;80;86;89;90;100), plus PTX
#                          for the newest one so later GPUs can JIT-compile it
#   CUDNN_ROOT             a cuDNN install (include/, lib/); default: the nvidia-cudnn-cu13 wheel of
#                          the Python interpreter (Python3_EXECUTABLE, else python3 on PATH)
#
# cudart is linked statically; cuDNN dynamically, found at run time through RUNPATH: the wheel's
# folder relative to an installed library ($ORIGIN/../../nvidia/cudnn/lib from
# site-packages/caffe2_ort/lib) and, outside pip builds, the absolute folder used at build time. cuRAND is not used: the
# default engine's random numbers come from our own Philox (common/philox.h).

include(CheckLanguage)

set(CUDNN_ROOT "$ENV{CUDNN_ROOT}" CACHE PATH "cuDNN install with include/ and lib/ (default: the nvidia-cudnn-cu13 wheel)")

function(_caffe2_ort_find_cudnn out_include out_library why)
  set(roots "")
  if(CUDNN_ROOT)
    list(APPEND roots "${CUDNN_ROOT}")
  else()
    set(py "${Python3_EXECUTABLE}")
    if(NOT py)
      find_program(py NAMES python3 python)
    endif()
    if(py)
      # nvidia.cudnn is a namespace package (no __file__): take its first path entry.
      execute_process(
        COMMAND "${py}" -c "import nvidia.cudnn as m; print(list(m.__path__)[0])"
        OUTPUT_VARIABLE wheel_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
      if(rc EQUAL 0 AND wheel_dir)
        list(APPEND roots "${wheel_dir}")
      endif()
    endif()
  endif()
  foreach(root IN LISTS roots)
    if(EXISTS "${root}/include/cudnn.h")
      find_library(_c2ort_cudnn_lib NAMES libcudnn.so.9 cudnn PATHS "${root}/lib" "${root}/lib64"
                   NO_DEFAULT_PATH NO_CACHE)
      if(_c2ort_cudnn_lib)
        set(${out_include} "${root}/include" PARENT_SCOPE)
        set(${out_library} "${_c2ort_cudnn_lib}" PARENT_SCOPE)
        return()
      endif()
    endif()
  endforeach()
  if(roots)
    set(${why} "no cudnn.h + libcudnn.so.9 under ${roots}" PARENT_SCOPE)
  else()
    set(${why} "cuDNN not found: set CUDNN_ROOT or install the nvidia-cudnn-cu13 wheel into the Python that CMake runs (Python3_EXECUTABLE)" PARENT_SCOPE)
  endif()
endfunction()

check_language(CUDA)
set(_c2ort_cuda_default OFF)
set(_c2ort_cuda_why "")
if(NOT CMAKE_CUDA_COMPILER)
  set(_c2ort_cuda_why "nvcc not found (set CMAKE_CUDA_COMPILER or put nvcc on PATH)")
else()
  _caffe2_ort_find_cudnn(CAFFE2_ORT_CUDNN_INCLUDE_DIR CAFFE2_ORT_CUDNN_LIBRARY _c2ort_cuda_why)
  if(CAFFE2_ORT_CUDNN_LIBRARY)
    set(_c2ort_cuda_default ON)
  endif()
endif()

option(CAFFE2_ORT_CUDA "Build libcaffe2_ort_cuda.so (CPU + CUDA/cuDNN kernels)" ${_c2ort_cuda_default})
set(CAFFE2_ORT_CUDA_ARCHS "75;80;86;89;90;100" CACHE STRING "CUDA architectures (SASS) to build; PTX is added for the newest")

if(NOT CAFFE2_ORT_CUDA)
  if(_c2ort_cuda_why)
    message(STATUS "caffe2-ort: CUDA build OFF: ${_c2ort_cuda_why}")
  else()
    message(STATUS "caffe2-ort: CUDA build OFF (CAFFE2_ORT_CUDA=OFF)")
  endif()
  return()
endif()
if(NOT CMAKE_CUDA_COMPILER)
  message(FATAL_ERROR "CAFFE2_ORT_CUDA=ON but ${_c2ort_cuda_why}")
endif()
if(NOT CAFFE2_ORT_CUDNN_LIBRARY)
  message(FATAL_ERROR "CAFFE2_ORT_CUDA=ON but ${_c2ort_cuda_why}")
endif()

# SASS for every listed architecture, PTX for the newest.
set(_c2ort_archs "")
list(SORT CAFFE2_ORT_CUDA_ARCHS COMPARE NATURAL)
list(GET CAFFE2_ORT_CUDA_ARCHS -1 _c2ort_newest)
foreach(arch IN LISTS CAFFE2_ORT_CUDA_ARCHS)
  if(arch STREQUAL _c2ort_newest)
    list(APPEND _c2ort_archs "${arch}")  # "90" = SASS + PTX in CMake's notation
  else()
    list(APPEND _c2ort_archs "${arch}-real")
  endif()
endforeach()
set(CMAKE_CUDA_ARCHITECTURES "${_c2ort_archs}")
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_VISIBILITY_PRESET hidden)
set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
get_filename_component(CAFFE2_ORT_CUDNN_LIB_DIR "${CAFFE2_ORT_CUDNN_LIBRARY}" DIRECTORY)
message(STATUS "caffe2-ort: CUDA build ON: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES}, "
               "cuDNN ${CAFFE2_ORT_CUDNN_LIBRARY}")

# Device code and the cuDNN helper, shared by the plugin and the testing library.
add_library(caffe2_ort_cuda_kernels OBJECT
  ort_ops/cuda/dropout_impl.cu
  ort_ops/cuda/dropout_cudnn.cc)
target_include_directories(caffe2_ort_cuda_kernels PUBLIC ort_ops "${ORT_INCLUDE_DIR}" "${CAFFE2_ORT_CUDNN_INCLUDE_DIR}")
target_link_libraries(caffe2_ort_cuda_kernels PUBLIC CUDA::toolkit)
# --Werror default-stream-launch: a kernel launched without a stream fails the build (all work goes
# on ORT's stream). --fmad=false: (x * scale) * m is two roundings, as on the CPU.
target_compile_options(caffe2_ort_cuda_kernels PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--Werror=default-stream-launch,all-warnings --fmad=false -O3 -Xcompiler=-Wall>
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -O2>)

# A wheel's library finds the nvidia-cudnn-cu13 wheel beside it; a build-tree library also the folder
# it was linked against (in a pip build that folder is a temporary build environment: left out).
set(_c2ort_cuda_rpath "$ORIGIN/../../nvidia/cudnn/lib")
if(NOT CAFFE2_ORT_PYTHON_INSTALL)
  list(APPEND _c2ort_cuda_rpath "${CAFFE2_ORT_CUDNN_LIB_DIR}")
endif()

add_library(caffe2_ort_cuda SHARED
  ort_ops/register_custom_ops.cc
  ort_ops/cuda/dnn_handle.cc
  ort_ops/cuda/dropout.cc
  ort_ops/cuda/dropout_grad.cc
  ort_ops/cuda/cuda_ops.cc
  $<TARGET_OBJECTS:caffe2_ort_cpu>
  $<TARGET_OBJECTS:caffe2_ort_cuda_kernels>)
target_compile_definitions(caffe2_ort_cuda PRIVATE CAFFE2_ORT_WITH_CUDA)
target_include_directories(caffe2_ort_cuda PRIVATE "${CAFFE2_ORT_CUDNN_INCLUDE_DIR}")
target_compile_options(caffe2_ort_cuda PRIVATE -Wall -Wextra -Werror -O2)
target_link_libraries(caffe2_ort_cuda PRIVATE CUDA::cudart_static "${CAFFE2_ORT_CUDNN_LIBRARY}")
target_link_options(caffe2_ort_cuda PRIVATE -Wl,--enable-new-dtags)
set_target_properties(caffe2_ort_cuda PROPERTIES
  LINKER_LANGUAGE CXX
  SKIP_BUILD_RPATH OFF
  BUILD_WITH_INSTALL_RPATH ON
  INSTALL_RPATH "${_c2ort_cuda_rpath}")
caffe2_ort_plugin(caffe2_ort_cuda -l:librt.so.1)  # cudart_static also uses librt

# Test-only C entry points (tests/gpu); not installed, not exported by the plugin.
add_library(caffe2_ort_cuda_testing SHARED
  ort_ops/cuda/testing/launchers.cu
  $<TARGET_OBJECTS:caffe2_ort_cuda_kernels>)
target_include_directories(caffe2_ort_cuda_testing PRIVATE ort_ops "${ORT_INCLUDE_DIR}" "${CAFFE2_ORT_CUDNN_INCLUDE_DIR}")
target_compile_options(caffe2_ort_cuda_testing PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--Werror=default-stream-launch,all-warnings -O3>)
target_link_libraries(caffe2_ort_cuda_testing PRIVATE CUDA::cudart_static "${CAFFE2_ORT_CUDNN_LIBRARY}")
target_link_options(caffe2_ort_cuda_testing PRIVATE -Wl,--enable-new-dtags -Wl,--no-undefined -static-libstdc++ -static-libgcc
  "-Wl,--version-script=${PROJECT_SOURCE_DIR}/ort_ops/cuda/testing/exports.lds")
set_target_properties(caffe2_ort_cuda_testing PROPERTIES
  LINKER_LANGUAGE CXX
  BUILD_WITH_INSTALL_RPATH ON
  INSTALL_RPATH "${CAFFE2_ORT_CUDNN_LIB_DIR}")
