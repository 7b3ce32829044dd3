"""The test harness's shortcuts through Triton's interpreter (tests/interpreter_speed.py) answer as Triton does."""
import pytest

tl = pytest.importorskip("triton.language")
from triton.runtime import interpreter  # noqa: E402

SCALARS = [tl.int1, tl.int8, tl.uint8, tl.int16, tl.uint16, tl.int32, tl.uint32, tl.int64, tl.uint64, tl.float16,
           tl.bfloat16, tl.float32, tl.float64, tl.float8e5, tl.float8e4nv, tl.float8e4b15]


def test_the_kept_numpy_dtypes_are_tritons_for_scalars_pointers_and_blocks():
    kept = interpreter._get_np_dtype
    real = kept.real          # (conftest put the harness's in Triton's place)
    for scalar in SCALARS:
        for dtype in (scalar, tl.pointer_type(scalar), tl.block_type(scalar, [4]),
                      tl.block_type(tl.pointer_type(scalar), [2, 8])):
            assert kept(dtype) == real(dtype), dtype
            assert kept(dtype) == real(dtype), dtype        # (again: the kept answer)


def test_a_dtype_triton_has_no_numpy_dtype_for_is_refused_as_triton_refuses_it():
    with pytest.raises(KeyError):
        interpreter._get_np_dtype.real(tl.void)
    with pytest.raises(KeyError):
        interpreter._get_np_dtype(tl.void)
