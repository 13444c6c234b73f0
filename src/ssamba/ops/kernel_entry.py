"""C entry points of the CPU kernels: one call's arguments in one int64 buffer, its work items
handed out one at a time by an atomic counter to whichever threads enter.

A kernel ``fn(*args, j0, j1)`` (numba, ``nogil``) gets a :class:`NativeKernel` beside it: an
``items`` function that unpacks the buffer with the ``take*`` helpers below and runs the kernel
on each item it takes (:func:`next_item`), and one C entry per float width (``cfunc``, compiled
on first use and cached on disk). :mod:`ssamba.ops.cpu_threads` packs a call with
:meth:`NativeKernel.bind` and has the threads of torch's OpenMP team enter the C function
directly: no thread takes the GIL, so a dispatch costs ~20 microseconds instead of 70-240 (the
threads taking turns at the GIL, and numba checking every argument, in each piece), and a thread
that the host slows down takes fewer items instead of holding the others up at the end (the
pieces used to be fixed in advance). (The items loop is written out in each ``items`` function:
handed a kernel as an argument, numba no longer caches the entry.)

Buffer layout (int64): ``[next item, number of items, failed, float width in bytes, args...]``;
a tensor argument is its address followed by its shape (or its element count where the kernel
sees it flat), a bool or int argument its value. Which thread runs an item never changes a
result: every item writes its own outputs and partials.
"""

from __future__ import annotations

import array
import ctypes

import torch
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic

HEADER = 4
_NEXT, _N_ITEMS, _FAILED, _WIDTH = range(HEADER)
ENTRY_SIGNATURE = types.void(types.voidptr)
_I64 = ir.IntType(64)
_WIDTHS = {torch.float32: 4, torch.float64: 8}


def _slot_address(builder, p, k):
    return builder.gep(builder.bitcast(p, _I64.as_pointer()), [k])


@intrinsic
def _slot(typingctx, p, k):
    """The int64 in slot ``k`` of the buffer at ``p``."""

    def codegen(context, builder, signature, args):
        return builder.load(_slot_address(builder, *args))

    return types.int64(types.voidptr, types.int64), codegen


@intrinsic
def _slot_pointer(typingctx, p, k):
    """Slot ``k`` of the buffer at ``p`` as a pointer (an array's data)."""

    def codegen(context, builder, signature, args):
        value = builder.load(_slot_address(builder, *args))
        return builder.inttoptr(value, ir.IntType(8).as_pointer())

    return types.voidptr(types.voidptr, types.int64), codegen


@intrinsic
def _fetch_next(typingctx, p):
    """Atomically take the next item number from the buffer's counter."""

    def codegen(context, builder, signature, args):
        counter = _slot_address(builder, args[0], ir.Constant(_I64, _NEXT))
        return builder.atomic_rmw("add", counter, ir.Constant(_I64, 1), "monotonic")

    return types.int64(types.voidptr), codegen


@intrinsic
def _set_failed(typingctx, p):
    """Mark the call failed (an item raised: out of memory in the kernel's scratch)."""

    def codegen(context, builder, signature, args):
        flag = _slot_address(builder, args[0], ir.Constant(_I64, _FAILED))
        builder.store(ir.Constant(_I64, 1), flag)
        return context.get_dummy_value()

    return types.void(types.voidptr), codegen


@njit(cache=True)
def next_item(p):
    """The next work item for this thread, or -1 when none is left."""
    j = _fetch_next(p)
    return j if j < _slot(p, _N_ITEMS) else -1


@njit(cache=True)
def failed(p):
    _set_failed(p)


@njit(cache=True)
def take_int(p, k):
    return _slot(p, k), k + 1


@njit(cache=True)
def take_bool(p, k):
    return _slot(p, k) != 0, k + 1


@njit(cache=True)
def take1(p, k, dtype):
    return carray(_slot_pointer(p, k), (_slot(p, k + 1),), dtype), k + 2


@njit(cache=True)
def take2(p, k, dtype):
    shape = (_slot(p, k + 1), _slot(p, k + 2))
    return carray(_slot_pointer(p, k), shape, dtype), k + 3


@njit(cache=True)
def take3(p, k, dtype):
    shape = (_slot(p, k + 1), _slot(p, k + 2), _slot(p, k + 3))
    return carray(_slot_pointer(p, k), shape, dtype), k + 4


@njit(cache=True)
def take4(p, k, dtype):
    shape = (_slot(p, k + 1), _slot(p, k + 2), _slot(p, k + 3), _slot(p, k + 4))
    return carray(_slot_pointer(p, k), shape, dtype), k + 5


def pack(spec: str, args, n_items: int) -> array.array:
    """The int64 buffer of one call (see the module docstring). ``spec`` has one letter per
    argument: the number of dimensions the kernel sees of a tensor (``1`` of any tensor: its
    elements flat), ``b`` a bool, ``i`` an int. Tensors must be contiguous and of one float
    dtype (float32 or float64)."""
    if len(spec) != len(args):
        raise TypeError(f"{len(spec)} arguments expected, got {len(args)}")
    slots = [0, n_items, 0, 0]
    dtype = None
    for i, (kind, a) in enumerate(zip(spec, args)):  # noqa: B905 - lengths checked above
        if kind == "b" or kind == "i":
            slots.append(int(a))
            continue
        if not (isinstance(a, torch.Tensor) and a.is_contiguous() and a.dtype in _WIDTHS
                and (dtype is None or a.dtype == dtype)):  # fmt: skip
            got = type(a).__name__
            if isinstance(a, torch.Tensor):
                got = f"{a.dtype}, {'' if a.is_contiguous() else 'not '}contiguous"
            raise TypeError(f"argument {i}: a contiguous float32/float64 tensor of the call's "
                            f"dtype expected, got {got}")  # fmt: skip
        dtype = a.dtype
        slots.append(a.data_ptr())
        if kind == "1":
            slots.append(a.numel())
        elif a.dim() == int(kind):
            slots.extend(a.shape)
        else:
            raise TypeError(f"argument {i}: {kind} dimensions expected, got {a.dim()}")
    slots[_WIDTH] = _WIDTHS[dtype] if dtype is not None else 0
    return array.array("q", slots)


_CALL = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class NativeKernel:
    """A kernel ``fn(*args, j0, j1)``, the kinds of its arguments (``spec``, see :func:`pack`)
    and its C entries: ``entries[width]`` is a module-level Python function ``entry(p)`` that
    calls the kernel's items function with the float type of that width, compiled with
    ``cfunc`` on first use (and cached on disk: ``cache``)."""

    def __init__(self, fn, spec: str, entries: dict, cache: bool = True):
        self.fn = fn
        self.spec = spec.replace(" ", "")
        self.__name__ = fn.__name__
        self._entries = entries
        self._cache = cache
        self._compiled: dict[int, tuple] = {}

    def bind(self, args, n_items: int) -> BoundCall:
        """The call packed, with the C entry for its float width (compiled on first use)."""
        buffer = pack(self.spec, args, n_items)
        width = int(buffer[_WIDTH])
        if width not in self._compiled:
            c = cfunc(ENTRY_SIGNATURE, cache=self._cache)(self._entries[width])
            self._compiled[width] = (c.address, _CALL(c.address), c)
        address, call, _ = self._compiled[width]
        return BoundCall(self.__name__, buffer, address, call)


class BoundCall:
    """One packed call: ``address`` of its C entry, ``call(pointer)`` from Python (ctypes
    releases the GIL), ``pointer`` to its buffer, :meth:`check` after every thread returned."""

    def __init__(self, name: str, buffer: array.array, address: int, call):
        self.name, self.buffer, self.address, self.call = name, buffer, address, call
        self.pointer = buffer.buffer_info()[0]
        self.n_items = int(buffer[_N_ITEMS])

    def check(self) -> None:
        if self.buffer[_FAILED]:  # the CPU kernels raise only when their scratch memory fails
            raise RuntimeError(f"{self.name}: a work item raised inside the kernel (out of "
                               "memory for its scratch buffers?)")  # fmt: skip
        if self.buffer[_NEXT] < self.n_items:
            raise RuntimeError(f"{self.name}: {self.n_items - self.buffer[_NEXT]} work items "
                               "did not run")  # fmt: skip
