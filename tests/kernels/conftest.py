"""The Triton kernels run on CPU through the interpreter when there is no GPU: tests/conftest.py
sets TRITON_INTERPRET=1 before any test module can import triton (see its docstring)."""

from tests.conftest import TRITON_IMPORTED_EARLY

__all__ = ["TRITON_IMPORTED_EARLY"]
