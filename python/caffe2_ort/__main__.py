"""``python -m caffe2_ort <command>``: the same commands as the ``caffe2-ort`` script."""

import sys

from .cli import main

sys.exit(main())
