"""Optional compiled CPU kernels (``radvar/_ckernels.c``, built at install when a C compiler is found),
called through ctypes. Each gives bitwise the result of the numpy path it replaces, except
:func:`k_subsets`, which draws other subsets from the same distribution, and :func:`importance_scales`,
equal up to rounding; :func:`available` says whether they are built. ``RADVAR_NO_KERNELS=1`` turns them off.
The callers check dtype, device and layout (:func:`radvar._bits.kernel_ok`)."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os

import torch

_U64, _I64, _PTR = ctypes.c_uint64, ctypes.c_int64, ctypes.c_void_p
_MASK = (1 << 64) - 1


def _load() -> ctypes.CDLL | None:
    if os.environ.get("RADVAR_NO_KERNELS", "") not in ("", "0"):
        return None
    try:
        spec = importlib.util.find_spec("radvar._ckernels")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
        _declare(lib)
    except (OSError, AttributeError):  # not loadable, or built from an older source that lacks a kernel
        return None
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of every kernel (an AttributeError if the library lacks one)."""
    lib.stochastic_round_f32.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR, ctypes.c_int,
                                         _U64, _U64, _U64, _U64, _PTR]
    lib.stochastic_round_f32.restype = None
    lib.k_subsets.argtypes = [_I64, _I64, _I64, _U64, _U64, _U64, _U64, _PTR, _PTR]
    lib.k_subsets.restype = None
    lib.poisson_keep_f32.argtypes = [_PTR, _I64, _I64, _PTR, _U64, _U64, _U64, _U64, _PTR, _PTR, _PTR, _PTR]
    lib.poisson_keep_f32.restype = _I64
    lib.scatter_mask_f32.argtypes = [_PTR, _I64, _PTR, _I64, _PTR]
    lib.scatter_mask_f32.restype = _I64
    lib.scatter_rows_f32.argtypes = [_PTR, _I64, _PTR, _PTR, _I64, _I64, _PTR]
    lib.scatter_rows_f32.restype = _I64
    lib.mask_scale_f32.argtypes = [_PTR, _PTR, _I64, ctypes.c_float, ctypes.c_float, _PTR]
    lib.mask_scale_f32.restype = None
    lib.relu_mask_f32.argtypes = [_PTR, _I64, _PTR, _PTR]
    lib.relu_mask_f32.restype = None
    lib.importance_scales_f32.argtypes = [_PTR, _I64, _I64, ctypes.c_double, _PTR, _PTR]
    lib.importance_scales_f32.restype = None
    lib.scatter_columns_strided_f32.argtypes = [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, ctypes.c_float, _PTR]
    lib.scatter_columns_strided_f32.restype = ctypes.c_int


def _build_id(lib: ctypes.CDLL | None) -> str:
    if lib is None:
        return "none"
    with open(lib._name, "rb") as built:
        return hashlib.sha256(built.read()).hexdigest()[:12]


_LIB = _load()
_BUILD = _build_id(_LIB)


def available() -> bool:
    """Whether the compiled kernels were built and loaded."""
    return _LIB is not None


def build_id() -> str:
    """A short hash of the loaded kernels' shared library ("none" when they are not loaded): a timing
    cache keyed by it is not read back after the kernels change (:func:`radvar.bench.cost.machine_id`)."""
    return _BUILD


def _require() -> ctypes.CDLL:
    if _LIB is None:
        raise RuntimeError("radvar's compiled kernels are not available (radvar._native.available() is False)")
    return _LIB


def stochastic_round(x: torch.Tensor, lo: torch.Tensor, delta: torch.Tensor, bits: int, group: int,
                     state: int, increment: int) -> torch.Tensor:
    """:class:`radvar.sketch.Quantize`'s packed levels of the contiguous float32 CPU (rows, n) tensor ``x`` with
    per-group ``lo`` and ``delta`` (float32, one per ``group`` consecutive entries of a row), the uniforms
    drawn from numpy's PCG64 at 128-bit ``state`` and ``increment``. Only when :func:`available`."""
    lib = _require()
    rows, n = x.shape
    lo, delta = lo.contiguous(), delta.contiguous()
    out = torch.empty((x.numel() * bits + 7) // 8, dtype=torch.uint8)
    lib.stochastic_round_f32(x.data_ptr(), rows, n, group, lo.data_ptr(), delta.data_ptr(), bits,
                             state >> 64, state & _MASK, increment >> 64, increment & _MASK, out.data_ptr())
    return out


def k_subsets(rows: int, n: int, k: int, state: int, increment: int) -> torch.Tensor:
    """(rows, k) int64: per row a uniformly random k-subset of range(n) (1 <= k <= n < 2³²), by Floyd's
    algorithm on numpy's PCG64 stream at ``state`` and ``increment``. Only when :func:`available`."""
    lib = _require()
    if not (1 <= k <= n < 1 << 32):
        raise ValueError(f"k_subsets: need 1 <= k <= n < 2**32, got k={k}, n={n}")
    out = torch.empty(rows, k, dtype=torch.int64)
    seen = torch.empty(n, dtype=torch.uint8)
    lib.k_subsets(rows, n, k, state >> 64, state & _MASK, increment >> 64, increment & _MASK, out.data_ptr(),
                  seen.data_ptr())
    return out


def poisson_keep(x: torch.Tensor, scale: torch.Tensor, state: int, increment: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:class:`radvar.sketch.Importance`'s draw of the contiguous float32 CPU (rows, n) tensor ``x`` with
    per-row scale ``scale`` (rows, 1) float32: entry (r, j) kept when U < c_r·|x_rj|, U from numpy's PCG64
    stream at ``state`` and ``increment``. Returns (values x/min(1, c·|x|) of the kept entries in C order,
    their int32 columns, int32 count per row, the packed uint8 mask). Only when :func:`available`."""
    lib = _require()
    rows, n = x.shape
    values, cols = torch.empty(rows * n, dtype=torch.float32), torch.empty(rows * n, dtype=torch.int32)
    counts, mask = torch.empty(rows, dtype=torch.int32), torch.empty((rows * n + 7) // 8, dtype=torch.uint8)
    kept = lib.poisson_keep_f32(x.data_ptr(), rows, n, scale.contiguous().data_ptr(), state >> 64, state & _MASK,
                                increment >> 64, increment & _MASK, values.data_ptr(), cols.data_ptr(),
                                counts.data_ptr(), mask.data_ptr())
    return values[:kept].clone(), cols[:kept], counts, mask


def importance_scales(x: torch.Tensor, keep: float) -> torch.Tensor:
    """(rows, 1) float32: per row of the contiguous float32 CPU (rows, n) tensor ``x``, the c of
    :func:`radvar.sketch.inclusion_probabilities` (π = min(1, c·|x|) summing to keep · n; ∞ for a row with at
    most keep · n nonzeros), computed in double without sorting. Only when :func:`available`."""
    lib = _require()
    rows, n = x.shape
    scale, scratch = torch.empty(rows, 1, dtype=torch.float32), torch.empty(2 * n, dtype=torch.float64)
    lib.importance_scales_f32(x.data_ptr(), rows, n, keep * n, scale.data_ptr(), scratch.data_ptr())
    return scale


def scatter_kept(values: torch.Tensor, index: tuple[torch.Tensor, ...], shape: tuple[int, int]) -> torch.Tensor:
    """The float32 (rows, n) tensor that is zero except at the kept entries, which take ``values`` (float32,
    C order): ``index`` is (the packed mask,) or (int16 columns, int32 counts per row), as
    :func:`poisson_keep`'s result is stored. Only when :func:`available`."""
    lib = _require()
    rows, n = shape
    out = torch.empty(rows, n, dtype=torch.float32)
    values = values.contiguous()
    if len(index) == 1:
        mask = index[0].contiguous()
        if mask.dtype != torch.uint8 or mask.numel() != (rows * n + 7) // 8:
            raise ValueError(f"scatter_kept: the mask must be {(rows * n + 7) // 8} uint8 bytes, got {mask.numel()} "
                             f"{mask.dtype}")
        found = lib.scatter_mask_f32(values.data_ptr(), values.numel(), mask.data_ptr(), rows * n, out.data_ptr())
    else:
        cols, counts = index[0].contiguous(), index[1].contiguous()
        if cols.dtype != torch.int16 or counts.dtype != torch.int32 or counts.numel() != rows:
            raise ValueError(f"scatter_kept: need int16 columns and {rows} int32 counts, got {cols.dtype} and "
                             f"{counts.numel()} {counts.dtype}")
        found = lib.scatter_rows_f32(values.data_ptr(), values.numel(), cols.data_ptr(), counts.data_ptr(), rows, n,
                                     out.data_ptr())
    if found != values.numel():
        raise ValueError(f"scatter_kept: the index names {found} kept entries (-1: a column outside [0, {n}) or "
                         f"more than the values), for {values.numel()} values")
    return out


def relu_mask(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(torch.relu(x), its packed 1-bit mask of nonzeros)`` (the mask as :func:`radvar._bits.pack` packs
    ``y.bool()``) in one pass, for contiguous float32 CPU ``x``. Only when :func:`available`."""
    lib = _require()
    y = torch.empty_like(x)
    mask = torch.empty((x.numel() + 7) // 8, dtype=torch.uint8)
    lib.relu_mask_f32(x.data_ptr(), x.numel(), y.data_ptr(), mask.data_ptr())
    return y, mask


def mask_scale(g: torch.Tensor, packed: torch.Tensor, on: float, off: float, out: torch.Tensor) -> torch.Tensor:
    """``out = g ⊙ where(mask, on, off)`` for contiguous float32 CPU ``g`` and ``out`` (``out`` may be ``g``),
    the mask packed as :func:`radvar._bits.pack` packs it. Only when :func:`available`."""
    lib = _require()
    lib.mask_scale_f32(g.data_ptr(), packed.data_ptr(), g.numel(), on, off, out.data_ptr())
    return out


def scatter_columns(cols: torch.Tensor, idx: torch.Tensor, n: int, scale: float) -> torch.Tensor:
    """The (m, n) float32 tensor that is zero except columns ``idx`` (distinct int64), which take
    ``cols * scale`` (``cols``: float32 CPU (m, k), any strides, e.g. the transpose of a contiguous product):
    a shared column sketch's weight gradient in one pass. Only when :func:`available`."""
    lib = _require()
    m, k = cols.shape
    idx = idx.contiguous()
    if idx.dtype != torch.int64 or idx.numel() != k:
        raise ValueError(f"scatter_columns: need {k} int64 column indices, got {idx.numel()} {idx.dtype}")
    out = torch.empty(m, n, dtype=torch.float32)
    row_stride, col_stride = cols.stride()
    if lib.scatter_columns_strided_f32(cols.data_ptr(), m, k, row_stride, col_stride, idx.data_ptr(), n, scale,
                                       out.data_ptr()):
        raise ValueError(f"scatter_columns: a column index outside [0, {n})")
    return out
