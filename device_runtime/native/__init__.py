"""Torch-free native ExecuTorch runner: C++ (``runner.cpp``, C ABI) built against the executorch wheel by
``build.py``, loaded with ctypes by ``binding.py``; ``main.cpp`` is the Python-free driver used under qemu-aarch64."""
