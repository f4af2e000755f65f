# Locates ONNX Runtime's C/C++ API headers: ORT_INCLUDE_DIR when given (CMake or environment), else
# scripts/fetch_ort_headers.py fetches a pinned, checksummed archive with Python's standard library
# into the user cache (CAFFE2_ORT_CACHE_DIR, else ~/.cache/caffe2-ort) and reuses it offline.
# The headers are never committed and never written into the source tree.
set(ORT_INCLUDE_DIR "$ENV{ORT_INCLUDE_DIR}" CACHE PATH "Folder holding onnxruntime_c_api.h")

if(NOT ORT_INCLUDE_DIR)
  find_package(Python3 COMPONENTS Interpreter REQUIRED)
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" "${PROJECT_SOURCE_DIR}/scripts/fetch_ort_headers.py"
    OUTPUT_VARIABLE fetched_dir
    ERROR_VARIABLE fetch_log
    RESULT_VARIABLE fetch_result
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT fetch_result EQUAL 0)
    message(FATAL_ERROR "${fetch_log}")
  endif()
  set(ORT_INCLUDE_DIR "${fetched_dir}" CACHE PATH "Folder holding onnxruntime_c_api.h" FORCE)
endif()

if(NOT EXISTS "${ORT_INCLUDE_DIR}/onnxruntime_c_api.h")
  message(FATAL_ERROR
    "ORT_INCLUDE_DIR=${ORT_INCLUDE_DIR} holds no onnxruntime_c_api.h. Point it at the include/ "
    "folder of an ONNX Runtime release (1.21 or newer), e.g. onnxruntime-linux-x64-1.21.0/include.")
endif()
file(STRINGS "${ORT_INCLUDE_DIR}/onnxruntime_c_api.h" ort_api_line REGEX "^#define ORT_API_VERSION [0-9]+")
string(REGEX REPLACE "^#define ORT_API_VERSION ([0-9]+).*" "\\1" ORT_HEADER_API_VERSION "${ort_api_line}")
if(ORT_HEADER_API_VERSION LESS 21)
  message(FATAL_ERROR "ORT headers in ${ORT_INCLUDE_DIR} are API ${ORT_HEADER_API_VERSION}; 21 (ORT 1.21) or newer needed")
endif()
message(STATUS "ONNX Runtime headers: ${ORT_INCLUDE_DIR} (API ${ORT_HEADER_API_VERSION})")
