"""Pickles read as data: the object members of the field's `.npz` files decoded without running anything.

A pickle is a program for a small stack machine, and its instructions may call any function the stream names with
arguments the stream chooses. `decode` runs no such call: it interprets the stream itself, opcode by opcode, and
builds only

    None, bool, int, float, str            as they are
    list, tuple, dict                      dict keys: str, int, float, bool or None
    numeric numpy arrays                   a dtype of NUMERIC_DTYPES (bool, integers, float16/32/64; no fields, no
                                           subarrays, no objects), copied from exactly prod(shape) * itemsize bytes
                                           of the stream

What numpy writes when it pickles an object array (`np.save` / `np.savez` of dicts and lists of arrays, pickle
protocols 2 to 5) reads as `np.load(allow_pickle=True)` reads it, with three differences: an object array becomes
its item (0-d) or nested lists (n-d), a numpy scalar becomes the Python number of its value, and arrays are never
views of one another. The few names those pickles call (numpy's `_reconstruct`, `scalar`, `_frombuffer`, `dtype`,
`ndarray`, and protocol 2's `_codecs.encode` and `bytes` for bytes) are interpreted here by their meaning, with
their arguments checked; a dtype or an array is never handed state from the stream (numpy does not validate that
state: a forged dtype makes numpy read bytes of the file as object pointers). Any other name, and any opcode that
builds something else (instances, sets, extensions, out-of-band buffers, persistent ids), is refused.

Bounds (`PickleLimits`), checked while the stream is read and while its result is built, so the work is linear in
the stream's length whatever it holds: the nodes of the result, counting every reference to a shared (memoised)
object again (a list of two references to a list of two references ... is a tree of 2 ** depth nodes in a few
bytes); the nesting depth; and the bytes of the arrays, also counted at every reference.
"""
from __future__ import annotations

import math
import pickletools
import struct
from dataclasses import dataclass

import numpy as np

#: The array dtypes a pickle may hold (each in either byte order): bool, integers, float16/32/64.
NUMERIC_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})

#: numpy's name for the object dtype in a pickle ('O8' on 64-bit platforms, 'O4' on 32-bit ones).
_OBJECT_DTYPES = frozenset({"O8", "O4"})

_MAX_NDIM = 32                 # numpy's own limit before numpy 2 (numpy 2: 64)
_MAX_INT_BYTES = 64            # LONG1 / LONG4 integers: far beyond any count or index in these files
_MAX_GLOBAL_NAME = 256         # one line of GLOBAL

_OPCODE_NAMES = {op.code.encode("latin1"): op.name for op in pickletools.opcodes}


class PickleRefused(ValueError):
    """The stream is not data this decoder builds, is malformed, or breaks a bound; the message says which (the
    caller names the file)."""


@dataclass(frozen=True)
class PickleLimits:
    """Bounds of one decode."""
    nodes: int = 1_000_000           # values in the result, each reference to a shared object counted again
    depth: int = 32                  # nesting of containers and arrays (the field's files nest 5 deep)
    array_bytes: int = 1 << 31       # bytes of the result's arrays, each reference counted again


class _Name:
    """A function or class a pickle named that this decoder interprets (never the real one)."""
    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what


RECONSTRUCT, SCALAR, FROMBUFFER, NDARRAY, DTYPE, ENCODE, BYTES = (_Name(w) for w in (
    "numpy's _reconstruct", "numpy's scalar", "numpy's _frombuffer", "numpy.ndarray", "numpy.dtype",
    "_codecs.encode", "bytes"))

#: (module, name) -> what it stands for. numpy 1.x pickles name `numpy.core.*`, numpy 2 `numpy._core.*`.
_NAMES = {("numpy", "ndarray"): NDARRAY, ("numpy", "dtype"): DTYPE, ("_codecs", "encode"): ENCODE,
          ("builtins", "bytes"): BYTES, ("__builtin__", "bytes"): BYTES}
for _core in ("numpy.core", "numpy._core"):
    _NAMES[(f"{_core}.multiarray", "_reconstruct")] = RECONSTRUCT
    _NAMES[(f"{_core}.multiarray", "scalar")] = SCALAR
    _NAMES[(f"{_core}.numeric", "_frombuffer")] = FROMBUFFER


class _Dtype:
    """A dtype being read: its name from `dtype(name, align, copy)`, its byte order from the BUILD that follows."""
    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name, self.dtype = name, None


class _Array:
    """An array being read: `_reconstruct` gives an empty one, the BUILD that follows its state. `value`: the
    numeric array, or (shape, items, fortran) of an object array."""
    __slots__ = ("value",)

    def __init__(self):
        self.value = None


def decode(data, limits: PickleLimits = PickleLimits()):
    """The value a pickle stream (bytes-like, protocol 2 to 5) holds, built as the module docstring says. Raises
    PickleRefused saying what is refused or malformed."""
    try:
        top = _Machine(memoryview(data).cast("B"), limits).run()
        return _Builder(limits).build(top, 0)
    except PickleRefused:
        raise
    except (ValueError, TypeError, OverflowError, struct.error) as e:     # numpy's or struct's word on a bad value
        raise PickleRefused(f"malformed ({type(e).__name__}: {str(e)[:200]})") from None


def numeric_dtype(name: str, order: str = "|") -> np.dtype:
    """The numpy dtype of a NUMERIC_DTYPES name ('f4') in byte order `order` ('<', '>', '=' or '|'); PickleRefused
    for any other."""
    if name not in NUMERIC_DTYPES:
        raise PickleRefused(f"dtype {name[:40]!r}: only bool, integer and float16/32/64 arrays are read")
    if order not in ("<", ">", "=", "|") or (order == "|" and name[1:] != "1"):
        raise PickleRefused(f"dtype {name!r} with byte order {order[:8]!r}")
    return np.dtype(("|" if name[1:] == "1" else order) + name)


def _bytes_of(x, what: str):
    """A bytes-like value of the stream (a Python 2 str: its latin-1 bytes, as numpy reads them)."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return x
    if isinstance(x, str):
        try:
            return x.encode("latin1")
        except UnicodeEncodeError:
            raise PickleRefused(f"{what}: text that is not bytes") from None
    raise PickleRefused(f"{what}: a {type(x).__name__} instead of bytes")


def _shape_of(x, what: str) -> tuple[int, ...]:
    if (not isinstance(x, tuple) or len(x) > _MAX_NDIM
            or not all(type(d) is int and 0 <= d < 1 << 40 for d in x)):
        raise PickleRefused(f"{what}: shape {str(x)[:60]} is not a tuple of sizes")
    return x


def _numeric_array(data, dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    """An array of `shape` copied from exactly prod(shape) * itemsize bytes."""
    data = _bytes_of(data, "array data")
    count = math.prod(shape)
    need = count * dtype.itemsize
    if len(data) != need:
        raise PickleRefused(f"an array of shape {shape} and dtype {dtype.str} with {len(data)} bytes of data "
                            f"(it needs {need})")
    flat = np.frombuffer(data, dtype, count) if count else np.zeros(0, dtype)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


class _Machine:
    """The pickle stack machine, restricted to building data (see the module docstring)."""

    def __init__(self, buf: memoryview, limits: PickleLimits):
        self.buf, self.limits = buf, limits
        self.pos = 0
        self.built = 0

    # ----- reading the stream
    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise PickleRefused(f"truncated: an opcode at byte {self.pos} needs {n} bytes, "
                                f"{len(self.buf) - self.pos} are left")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def line(self) -> str:
        end = bytes(self.buf[self.pos:self.pos + _MAX_GLOBAL_NAME + 1]).find(b"\n")
        if end < 0:
            raise PickleRefused(f"a GLOBAL name at byte {self.pos} longer than {_MAX_GLOBAL_NAME} bytes or truncated")
        raw = self.take(end + 1)[:-1]
        return self.text(raw)

    def text(self, raw) -> str:
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise PickleRefused(f"text at byte {self.pos} that is not valid UTF-8") from None

    def new(self, x):
        self.built += 1
        if self.built > self.limits.nodes:
            raise PickleRefused(f"more than {self.limits.nodes} values")
        return x

    # ----- the machine
    def run(self):
        stack: list = []
        marks: list[int] = []
        memo: dict = {}
        push = stack.append

        def pop():
            if not stack or (marks and marks[-1] == len(stack)):
                raise PickleRefused(f"malformed: an opcode at byte {self.pos} takes a value that is not there")
            return stack.pop()

        def to_mark() -> list:
            if not marks:
                raise PickleRefused(f"malformed: no MARK before byte {self.pos}")
            m = marks.pop()
            items = stack[m:]
            del stack[m:]
            return items

        def top(kind, what):
            if not stack or (marks and marks[-1] == len(stack)) or type(stack[-1]) is not kind:
                raise PickleRefused(f"malformed: {what} at byte {self.pos} on something else than a "
                                    f"{kind.__name__}")
            return stack[-1]

        if self.take(1) != b"\x80":
            raise PickleRefused("a pickle of protocol 0 or 1 (numpy writes protocols 2 to 5)")
        proto = self.take(1)[0]
        if not 2 <= proto <= 5:
            raise PickleRefused(f"pickle protocol {proto} (numpy writes protocols 2 to 5)")
        while True:
            at = self.pos
            op = bytes(self.take(1))
            if op == b".":                                                      # STOP
                break
            elif op == b"\x95":                                                 # FRAME
                self.take(8)
            elif op == b"(":                                                    # MARK
                marks.append(len(stack))
            elif op == b"0":                                                    # POP
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    pop()
            elif op == b"1":                                                    # POP_MARK
                to_mark()
            elif op == b"2":                                                    # DUP
                v = pop()
                push(v)
                push(v)
            elif op == b"N":
                push(None)
            elif op == b"\x88":
                push(True)
            elif op == b"\x89":
                push(False)
            elif op == b"J":                                                    # BININT
                push(self.new(self.unpack("<i")))
            elif op == b"K":                                                    # BININT1
                push(self.new(self.unpack("<B")))
            elif op == b"M":                                                    # BININT2
                push(self.new(self.unpack("<H")))
            elif op in (b"\x8a", b"\x8b"):                                      # LONG1, LONG4
                n = self.unpack("<B" if op == b"\x8a" else "<i")
                if not 0 <= n <= _MAX_INT_BYTES:
                    raise PickleRefused(f"an integer of {n} bytes at byte {at}")
                push(self.new(int.from_bytes(self.take(n), "little", signed=True)))
            elif op == b"G":                                                    # BINFLOAT
                push(self.new(self.unpack(">d")))
            elif op in (b"T", b"U"):                                            # BINSTRING, SHORT_BINSTRING (py2)
                n = self.unpack("<i" if op == b"T" else "<B")
                push(self.new(str(self.take(n), "latin1")))
            elif op in (b"X", b"\x8c", b"\x8d"):                                # BINUNICODE, SHORT_, 8
                n = self.unpack({b"X": "<I", b"\x8c": "<B", b"\x8d": "<Q"}[op])
                push(self.new(self.text(self.take(n))))
            elif op in (b"B", b"C", b"\x8e", b"\x96"):                          # BINBYTES, SHORT_, 8, BYTEARRAY8
                n = self.unpack({b"B": "<I", b"C": "<B", b"\x8e": "<Q", b"\x96": "<Q"}[op])
                push(self.new(self.take(n)))
            elif op == b"]":
                push(self.new([]))
            elif op == b")":
                push(self.new(()))
            elif op == b"}":
                push(self.new({}))
            elif op == b"a":                                                    # APPEND
                v = pop()
                top(list, "APPEND").append(v)
            elif op == b"e":                                                    # APPENDS
                items = to_mark()
                top(list, "APPENDS").extend(items)
            elif op == b"l":                                                    # LIST
                push(self.new(to_mark()))
            elif op == b"t":                                                    # TUPLE
                push(self.new(tuple(to_mark())))
            elif op in (b"\x85", b"\x86", b"\x87"):                             # TUPLE1, 2, 3
                n = op[0] - 0x84
                items = [pop() for _ in range(n)][::-1]
                push(self.new(tuple(items)))
            elif op == b"d":                                                    # DICT
                items = to_mark()
                push(self.new(_set_items({}, items, at)))
            elif op == b"s":                                                    # SETITEM
                v = pop()
                k = pop()
                _set_items(top(dict, "SETITEM"), [k, v], at)
            elif op == b"u":                                                    # SETITEMS
                items = to_mark()
                _set_items(top(dict, "SETITEMS"), items, at)
            elif op in (b"h", b"j"):                                            # BINGET, LONG_BINGET
                i = self.unpack("<B" if op == b"h" else "<I")
                if i not in memo:
                    raise PickleRefused(f"malformed: byte {at} refers to memo entry {i}, never stored")
                push(memo[i])
            elif op in (b"q", b"r"):                                            # BINPUT, LONG_BINPUT
                i = self.unpack("<B" if op == b"q" else "<I")
                v = pop()
                push(v)
                memo[i] = v
            elif op == b"\x94":                                                 # MEMOIZE
                v = pop()
                push(v)
                memo[len(memo)] = v
            elif op == b"c":                                                    # GLOBAL
                module = self.line()
                push(_name(module, self.line()))
            elif op == b"\x93":                                                 # STACK_GLOBAL
                name, module = pop(), pop()
                if type(name) is not str or type(module) is not str:
                    raise PickleRefused(f"malformed: STACK_GLOBAL at byte {at} on something else than text")
                push(_name(module, name))
            elif op == b"R":                                                    # REDUCE
                args = pop()
                f = pop()
                if type(f) is not _Name or type(args) is not tuple:
                    raise PickleRefused(f"malformed: REDUCE at byte {at} calls a {type(f).__name__}")
                push(self.new(_call(f, args)))
            elif op == b"b":                                                    # BUILD
                state = pop()
                _build(_top_any(stack, marks, at), state)
            else:
                name = _OPCODE_NAMES.get(op)
                if name is None:
                    raise PickleRefused(f"byte {at} (0x{op[0]:02x}) is no pickle opcode: not a pickle, or damaged")
                raise PickleRefused(f"opcode {name} at byte {at}: it builds something other than data")
        if len(stack) != 1 or marks:
            raise PickleRefused(f"malformed: {len(stack)} values and {len(marks)} open marks at STOP")
        return stack[0]


def _top_any(stack: list, marks: list, at: int):
    if not stack or (marks and marks[-1] == len(stack)):
        raise PickleRefused(f"malformed: BUILD at byte {at} on nothing")
    return stack[-1]


def _set_items(d: dict, items: list, at: int) -> dict:
    if len(items) % 2:
        raise PickleRefused(f"malformed: a dict at byte {at} with a key without a value")
    for k, v in zip(items[::2], items[1::2]):
        if type(k) not in (str, int, float, bool, type(None)):
            raise PickleRefused(f"a dict key that is a {type(k).__name__} (keys are text or numbers)")
        d[k] = v
    return d


def _name(module: str, name: str) -> _Name:
    found = _NAMES.get((module, name))
    if found is None:
        raise PickleRefused(f"names {module[:80]}.{name[:80]}: refused (only dicts, lists, tuples, text, numbers "
                            f"and numeric arrays are read)")
    return found


def _call(f: _Name, args: tuple):
    """What numpy's (or pickle's) function `f` would return for `args`, for the arguments numpy writes."""
    if f is RECONSTRUCT:                        # _reconstruct(ndarray, (0,), b'b'): an empty array awaiting BUILD
        if len(args) != 3 or args[0] is not NDARRAY:
            raise PickleRefused(f"_reconstruct of a {type(args[0]).__name__ if args else 'nothing'} "
                                f"(only numpy.ndarray is read)")
        return _Array()
    if f is DTYPE:                              # dtype('f4', False, True): byte order from the BUILD that follows
        if len(args) != 3 or type(args[0]) is not str:
            raise PickleRefused("numpy.dtype called with other arguments than a dtype name")
        if args[0] not in NUMERIC_DTYPES | _OBJECT_DTYPES:
            raise PickleRefused(f"dtype {args[0][:40]!r}: only bool, integer and float16/32/64 arrays are read")
        return _Dtype(args[0])
    if f is SCALAR:                             # scalar(dtype, bytes): a number (or, object dtype, the object)
        if len(args) != 2 or type(args[0]) is not _Dtype or args[0].dtype is None:
            raise PickleRefused("a numpy scalar without its dtype")
        dtype = args[0].dtype
        if dtype == object:
            return args[1]
        return _numeric_array(args[1], dtype, (), False).item()
    if f is FROMBUFFER:                         # _frombuffer(buffer, dtype, shape, order): protocol 5's arrays
        if (len(args) != 4 or type(args[1]) is not _Dtype or args[1].dtype is None or args[1].dtype == object
                or args[3] not in ("C", "F")):
            raise PickleRefused("_frombuffer with other arguments than a buffer, a numeric dtype, a shape, an order")
        return _numeric_array(args[0], args[1].dtype, _shape_of(args[2], "_frombuffer"), args[3] == "F")
    if f is ENCODE:                             # protocol 2's bytes: _codecs.encode(text, 'latin1')
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise PickleRefused("_codecs.encode with other arguments than text and 'latin1'")
        return _bytes_of(args[0], "_codecs.encode")
    if f is BYTES and not args:                 # protocol 2's b''
        return b""
    raise PickleRefused(f"{f.what} called as a function")


def _build(obj, state) -> None:
    """BUILD: set the state of a dtype or an array being read (numpy's layouts of that state), checked."""
    if type(obj) is _Dtype and obj.dtype is None:
        # (version, byte order, subarray, names, fields, itemsize, alignment, flags[, metadata])
        if (type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4)
                or type(state[1]) is not str or any(s is not None for s in state[2:5] + state[8:])
                or state[5:7] != (-1, -1)):
            raise PickleRefused(f"the state of dtype {obj.name!r} is not a plain dtype's (fields, subarrays, "
                                f"sizes or metadata): refused")
        obj.dtype = np.dtype(object) if obj.name in _OBJECT_DTYPES else numeric_dtype(obj.name, state[1])
        return
    if type(obj) is _Array and obj.value is None:
        # ([version,] shape, dtype, fortran, data)
        if type(state) is not tuple or len(state) not in (4, 5) or (len(state) == 5 and state[0] != 1):
            raise PickleRefused("the state of an array is not numpy's (version 1)")
        shape, dtype, fortran, data = state[-4:]
        shape = _shape_of(shape, "array")
        if type(dtype) is not _Dtype or dtype.dtype is None or type(fortran) not in (bool, int):
            raise PickleRefused("the state of an array without a dtype or order")
        if dtype.dtype == object:
            if type(data) is not list or len(data) != math.prod(shape):
                raise PickleRefused(f"an object array of shape {shape} with "
                                    f"{len(data) if type(data) is list else 'no list of'} items")
            obj.value = (shape, data, bool(fortran))
        else:                                   # (numpy's setstate gives the native byte order; so does this)
            a = _numeric_array(data, dtype.dtype, shape, bool(fortran))
            obj.value = a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
        return
    raise PickleRefused(f"BUILD of a {type(obj).__name__.lstrip('_')}: only a dtype's or an array's state is read")


class _Builder:
    """The stream's value as plain data, counting nodes and array bytes at every reference (shared objects are
    copied, so the result is a tree) and the depth."""

    def __init__(self, limits: PickleLimits):
        self.limits = limits
        self.nodes = 0
        self.array_bytes = 0
        self.path: set[int] = set()        # the containers being built (a container inside itself is refused)

    def build(self, x, depth: int):
        self.nodes += 1
        if self.nodes > self.limits.nodes:
            raise PickleRefused(f"more than {self.limits.nodes} values, counting each reference to a shared value "
                                f"(a memo bomb?)")
        if depth > self.limits.depth:
            raise PickleRefused(f"nested deeper than {self.limits.depth} levels")
        t = type(x)
        if x is None or t in (bool, int, float, str):
            return x
        if t is np.ndarray:
            return self.array(x)
        if t not in (list, tuple, dict, _Array):
            what = "bytes" if t in (bytes, bytearray, memoryview) else t.__name__.lstrip("_")
            raise PickleRefused(f"{what} outside an array: not data this reader builds")
        if id(x) in self.path:
            raise PickleRefused("a container that holds itself")
        self.path.add(id(x))
        try:
            if t is list:
                return [self.build(v, depth + 1) for v in x]
            if t is tuple:
                return tuple(self.build(v, depth + 1) for v in x)
            if t is dict:
                return {k: self.build(v, depth + 1) for k, v in x.items()}
            if x.value is None:
                raise PickleRefused("an array without its state")
            if type(x.value) is np.ndarray:
                return self.array(x.value)
            shape, items, fortran = x.value
            if not shape:
                return self.build(items[0], depth + 1)
            order = np.arange(len(items)).reshape(shape, order="F" if fortran else "C")
            return self.nest(order, items, depth + 1)
        finally:
            self.path.discard(id(x))

    def nest(self, order: np.ndarray, items: list, depth: int) -> list:
        """An n-d object array's items as nested lists (row-major, as `tolist`)."""
        if order.ndim == 1:
            return [self.build(items[i], depth + 1) for i in order.tolist()]
        return [self.nest(sub, items, depth + 1) for sub in order]

    def array(self, a: np.ndarray) -> np.ndarray:
        self.array_bytes += a.nbytes
        if self.array_bytes > self.limits.array_bytes:
            raise PickleRefused(f"arrays of more than {self.limits.array_bytes} bytes, counting each reference to a "
                                f"shared array")
        return a


__all__ = ["decode", "numeric_dtype", "PickleLimits", "PickleRefused", "NUMERIC_DTYPES"]
