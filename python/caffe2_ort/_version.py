# The project's one version number: read by CMake (project VERSION), by pyproject.toml (scikit-build-core's
# regex metadata provider) and exported as caffe2_ort.__version__.
__version__ = "0.1.0"
