"""Guest module rewriting for a runtime without store limits or interruption (the wasmer adapter).

`prepare(wasm)` returns an equivalent module in which
- the guest's one memory is imported (`__realm.memory`, with the module's own limits), so the host
  creates it with its maximum lowered to the memory budget (one compiled module serves every budget);
- every table's maximum is at most MAX_TABLE_ELEMENTS (a larger minimum is refused);
- every function entry and loop header counts down a fuel global appended after the module's own;
  at zero it calls the host import `__realm.check` (which traps the call once its deadline has
  passed) and refills it with FUEL_CHECK_EVERY; loops with SIMD instructions count a second,
  exported global instead, which traps at zero (`_Code`).
The input must already be valid (the adapter validates it first: then the module's own code cannot
name the appended global or import). Binary format: https://webassembly.github.io/spec/core/binary/
"""

from __future__ import annotations

from dataclasses import dataclass

from realm.errors import GuestError

REWRITE_VERSION = 2  # part of the compiled-module cache key
RESERVED_MODULE = "__realm"  # import module of the host's memory and check; refused in a guest's own imports
FUEL_CHECK_EVERY = 1 << 16  # loop iterations / function entries between two deadline checks
SIMD_FUEL = 1 << 26  # iterations of SIMD loops between two ordinary check steps, else a trap (see _Code)
SIMD_FUEL_EXPORT = "__realm_simd_fuel"  # the counter, exported so the host can tell that trap apart
MAX_TABLE_ELEMENTS = 1 << 16
MAGIC = b"\0asm\x01\0\0\0"
PAGE = 65536

# section ids and the order they must appear in (data count, 12, sits between element and code)
TYPE, IMPORT, FUNCTION, TABLE, MEMORY, GLOBAL, EXPORT, START, ELEMENT, CODE, DATA, DATACOUNT = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
_ORDER = (TYPE, IMPORT, FUNCTION, TABLE, MEMORY, GLOBAL, EXPORT, START, ELEMENT, DATACOUNT, CODE, DATA)
_VALTYPES = {0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F}  # i32 i64 f32 f64 v128 funcref externref
_REFTYPES = {0x70, 0x6F}


class RewriteError(GuestError):
    """The module uses something the rewriter does not handle (or it is malformed)."""


@dataclass
class Prepared:
    wasm: bytes  # the rewritten module
    memory: tuple[int, int | None] | None  # the guest's memory limits in pages (min, max), None: no memory


# ---- LEB128 -------------------------------------------------------------------------------------------


def _u32(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    for _ in range(5):
        if pos >= len(data):
            raise RewriteError("truncated module (LEB128 past the end)")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise RewriteError("malformed LEB128 integer")


def _skip_sleb(data: bytes, pos: int, max_bytes: int) -> int:
    for _ in range(max_bytes):
        if pos >= len(data):
            raise RewriteError("truncated module (LEB128 past the end)")
        b = data[pos]
        pos += 1
        if not b & 0x80:
            return pos
    raise RewriteError("malformed LEB128 integer")


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _name(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _u32(data, pos)
    raw = data[pos:pos + n]
    if len(raw) != n:
        raise RewriteError("truncated name")
    try:
        return raw.decode("utf-8"), pos + n
    except UnicodeDecodeError:
        raise RewriteError("a name is not UTF-8") from None


def _vec_name(s: str) -> bytes:
    b = s.encode()
    return _leb(len(b)) + b


def _limits(data: bytes, pos: int) -> tuple[int, int | None, int]:
    flag = data[pos]
    pos += 1
    if flag not in (0, 1):
        raise RewriteError(f"shared or 64-bit limits (flag {flag}) are not supported")
    lo, pos = _u32(data, pos)
    hi = None
    if flag == 1:
        hi, pos = _u32(data, pos)
    return lo, hi, pos


def _enc_limits(lo: int, hi: int | None) -> bytes:
    return b"\0" + _leb(lo) if hi is None else b"\1" + _leb(lo) + _leb(hi)


# ---- instructions -----------------------------------------------------------------------------------

_NO_IMM = set(range(0x45, 0xC5)) | {0x00, 0x01, 0x05, 0x0F, 0x1A, 0x1B, 0xD1}
_ONE_U32 = {0x0C, 0x0D, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x3F, 0x40}
_MEMARG = set(range(0x28, 0x3F))
_FC_NONE = set(range(0, 8))
_FC_U32 = {9, 11, 13, 15, 16, 17}  # data.drop, memory.fill, elem.drop, table.grow/size/fill
_FC_TWO = {8, 10, 12, 14}  # memory.init, memory.copy, table.init, table.copy
_FD_MEMARG = set(range(0, 12)) | {92, 93}
_FD_LANE = set(range(21, 35))
_FD_MEMARG_LANE = set(range(84, 92))


class _Code:
    """Copies instructions, remapping function indices and inserting the fuel checks.

    A loop whose body has SIMD instructions gets no call: wasmer-python 1.1's Cranelift
    miscompiles some v128-heavy loops (the guest's f32 dot products return zeros) once a call
    sits in them. It counts down a second counter instead, `simd_fuel`, which every ordinary
    check step refills to SIMD_FUEL and which traps (`unreachable`) at zero: a SIMD loop runs at
    most SIMD_FUEL iterations past the last function entry or ordinary loop iteration.
    """

    def __init__(self, n_imported_funcs: int, check_func: int, fuel_global: int, fuel: bool = True):
        self.n_imp = n_imported_funcs
        g, check, sg = _leb(fuel_global), _leb(check_func), _leb(fuel_global + 1)
        # simd_fuel = SIMD_FUEL; if (fuel == 0) { check(); fuel = FUEL_CHECK_EVERY }; fuel -= 1
        self.check = b"" if not fuel else (
            b"\x41" + _sleb(SIMD_FUEL) + b"\x24" + sg
            + b"\x23" + g + b"\x45\x04\x40" + b"\x10" + check + b"\x41" + _sleb(FUEL_CHECK_EVERY) + b"\x24" + g + b"\x0B"
            + b"\x23" + g + b"\x41\x01\x6B\x24" + g)
        # if (simd_fuel == 0) unreachable; simd_fuel -= 1
        self.simd_check = b"" if not fuel else (
            b"\x23" + sg + b"\x45\x04\x40\x00\x0B" + b"\x23" + sg + b"\x41\x01\x6B\x24" + sg)
        self.simd_loops: set[int] = set()  # positions of loops with SIMD in their body (from `scan`)

    def func(self, f: int) -> int:
        return f + 1 if f >= self.n_imp else f

    def body(self, data: bytes, pos: int, out: bytearray) -> int:
        """A function body's expression with the checks inserted (entry and every loop header)."""
        self.simd_loops = set()
        self.expr(data, pos, bytearray(), inject=False, scan=True)
        out += self.check  # function entry: bounds call trees without loops too
        return self.expr(data, pos, out, inject=True)

    def expr(self, data: bytes, pos: int, out: bytearray, inject: bool, scan: bool = False) -> int:
        """Copy one expression (up to its final `end`) from data[pos:] into out; return the position
        after it. `scan`: only record in `simd_loops` the loops whose body has a SIMD instruction."""
        depth = 0
        n = len(data)
        open_loops: list[int | None] = []  # per open block: its loop's position, or None
        while True:
            if pos >= n:
                raise RewriteError("truncated code (expression without end)")
            op = data[pos]
            start = pos
            pos += 1
            if op in _NO_IMM:
                pass
            elif op == 0x0B:  # end
                out += data[start:pos]
                if depth == 0:
                    return pos
                depth -= 1
                open_loops.pop()
                continue
            elif op in (0x02, 0x03, 0x04):  # block, loop, if: a block type
                b = data[pos]
                pos = pos + 1 if b == 0x40 or b in _VALTYPES else _skip_sleb(data, pos, 5)
                depth += 1
                open_loops.append(start if op == 0x03 else None)
                if op == 0x03 and inject:
                    out += data[start:pos]
                    out += self.simd_check if start in self.simd_loops else self.check
                    continue
            elif op in _ONE_U32:
                _, pos = _u32(data, pos)
            elif op in _MEMARG:
                _, pos = _u32(data, pos)
                _, pos = _u32(data, pos)
            elif op in (0x10, 0x12, 0xD2):  # call, return_call, ref.func: a function index
                f, pos = _u32(data, pos)
                out.append(op)
                out += _leb(self.func(f))
                continue
            elif op in (0x11, 0x13):  # call_indirect, return_call_indirect: type, table
                _, pos = _u32(data, pos)
                _, pos = _u32(data, pos)
            elif op == 0x0E:  # br_table
                count, pos = _u32(data, pos)
                for _ in range(count + 1):
                    _, pos = _u32(data, pos)
            elif op == 0x1C:  # select t*
                count, pos = _u32(data, pos)
                pos += count
            elif op == 0x41:
                pos = _skip_sleb(data, pos, 5)
            elif op == 0x42:
                pos = _skip_sleb(data, pos, 10)
            elif op == 0x43:
                pos += 4
            elif op == 0x44:
                pos += 8
            elif op == 0xD0:  # ref.null t
                if data[pos] not in _REFTYPES:
                    raise RewriteError("unsupported heap type in ref.null")
                pos += 1
            elif op == 0xFC:
                sub, pos = _u32(data, pos)
                if sub in _FC_NONE:
                    pass
                elif sub in _FC_U32:
                    _, pos = _u32(data, pos)
                elif sub in _FC_TWO:
                    _, pos = _u32(data, pos)
                    _, pos = _u32(data, pos)
                else:
                    raise RewriteError(f"unsupported instruction 0xFC {sub}")
            elif op == 0xFD:  # SIMD
                sub, pos = _u32(data, pos)
                if scan:
                    self.simd_loops.update(p for p in open_loops if p is not None)
                if sub in _FD_MEMARG:
                    _, pos = _u32(data, pos)
                    _, pos = _u32(data, pos)
                elif sub in (12, 13):  # v128.const, i8x16.shuffle
                    pos += 16
                elif sub in _FD_LANE:
                    pos += 1
                elif sub in _FD_MEMARG_LANE:
                    _, pos = _u32(data, pos)
                    _, pos = _u32(data, pos)
                    pos += 1
            elif op == 0xFE:  # atomics
                sub, pos = _u32(data, pos)
                if sub == 3:
                    pos += 1
                else:
                    _, pos = _u32(data, pos)
                    _, pos = _u32(data, pos)
            else:
                raise RewriteError(f"unsupported instruction 0x{op:02x}")
            out += data[start:pos]


# ---- the module -------------------------------------------------------------------------------------


def sections(data: bytes) -> list[tuple[int, bytes]]:
    """(id, payload) of every section, in file order."""
    if data[:8] != MAGIC:
        raise RewriteError("not a WebAssembly module (bad magic or version)")
    out, pos = [], 8
    while pos < len(data):
        sid = data[pos]
        size, pos = _u32(data, pos + 1)
        if pos + size > len(data):
            raise RewriteError("truncated section")
        out.append((sid, data[pos:pos + size]))
        pos += size
    return out


def prepare(wasm: bytes, *, fuel: bool = True) -> Prepared:
    """The rewritten module (see the module docstring) and the guest memory's limits; `fuel`
    False leaves out the deadline checks (the check import stays)."""
    secs = {}
    for sid, payload in sections(bytes(wasm)):
        if sid == 0:
            continue  # custom sections (names, producers): dropped, they would name old indices
        if sid in secs:
            raise RewriteError(f"duplicate section {sid}")
        secs[sid] = payload

    # types: append () -> () for the check import
    n_types, types_body = _vec_header(secs.get(TYPE))
    check_type = n_types
    secs[TYPE] = _leb(n_types + 1) + types_body + b"\x60\x00\x00"

    # imports: count functions, refuse an imported memory or the reserved module, add ours at the end
    n_imports, body = _vec_header(secs.get(IMPORT))
    pos, n_imp_funcs, n_imp_globals = 0, 0, 0
    for _ in range(n_imports):
        module, pos = _name(body, pos)
        _, pos = _name(body, pos)
        if module == RESERVED_MODULE:
            raise RewriteError(f"the guest imports from the reserved module {RESERVED_MODULE!r}")
        kind = body[pos]
        pos += 1
        if kind == 0:
            _, pos = _u32(body, pos)
            n_imp_funcs += 1
        elif kind == 1:
            pos += 1
            _, _, pos = _limits(body, pos)
        elif kind == 2:
            raise RewriteError("the guest imports a memory (the guest must own its memory)")
        elif kind == 3:
            pos += 2
            n_imp_globals += 1
        else:
            raise RewriteError(f"unsupported import kind {kind}")

    memory = None
    if MEMORY in secs:
        count, mbody = _vec_header(secs.pop(MEMORY))
        if count > 1:
            raise RewriteError("the guest defines more than one memory")
        if count == 1:
            lo, hi, _ = _limits(mbody, 0)
            memory = (lo, hi)
    ours = _vec_name(RESERVED_MODULE) + _vec_name("check") + b"\x00" + _leb(check_type)
    extra = 1
    if memory is not None:
        ours += _vec_name(RESERVED_MODULE) + _vec_name("memory") + b"\x02" + _enc_limits(*memory)
        extra += 1
    secs[IMPORT] = _leb(n_imports + extra) + body + ours
    check_func = n_imp_funcs
    code = None

    # tables: cap the maximum
    if TABLE in secs:
        count, tbody = _vec_header(secs[TABLE])
        pos, new = 0, bytearray()
        for _ in range(count):
            reftype = tbody[pos]
            lo, hi, pos = _limits(tbody, pos + 1)
            if lo > MAX_TABLE_ELEMENTS:
                raise RewriteError(f"a table of {lo} elements exceeds the limit of {MAX_TABLE_ELEMENTS}")
            new.append(reftype)
            new += _enc_limits(lo, MAX_TABLE_ELEMENTS if hi is None else min(hi, MAX_TABLE_ELEMENTS))
        secs[TABLE] = _leb(count) + bytes(new)

    # globals: remap ref.func in initializers, append the fuel counter (mutable i32)
    n_globals, gbody = _vec_header(secs.get(GLOBAL))
    fuel_global = n_imp_globals + n_globals
    code = _Code(n_imp_funcs, check_func, fuel_global, fuel)
    pos, new = 0, bytearray()
    for _ in range(n_globals):
        new += gbody[pos:pos + 2]
        pos = code.expr(gbody, pos + 2, new, inject=False)
    secs[GLOBAL] = (_leb(n_globals + 2) + bytes(new) + b"\x7F\x01\x41" + _sleb(FUEL_CHECK_EVERY) + b"\x0B"
                    + b"\x7F\x01\x41" + _sleb(SIMD_FUEL) + b"\x0B")

    if EXPORT in secs:
        count, ebody = _vec_header(secs[EXPORT])
        pos, new = 0, bytearray()
        for _ in range(count):
            name, pos = _name(ebody, pos)
            kind = ebody[pos]
            idx, pos = _u32(ebody, pos + 1)
            if name.startswith(RESERVED_MODULE):
                raise RewriteError(f"the guest exports a reserved name {name!r}")
            new += _vec_name(name) + bytes([kind]) + _leb(code.func(idx) if kind == 0 else idx)
        secs[EXPORT] = _leb(count) + bytes(new)
    count, ebody = _vec_header(secs.get(EXPORT))
    secs[EXPORT] = _leb(count + 1) + ebody + _vec_name(SIMD_FUEL_EXPORT) + b"\x03" + _leb(fuel_global + 1)
    if START in secs:
        f, _ = _u32(secs[START], 0)
        secs[START] = _leb(code.func(f))
    if ELEMENT in secs:
        secs[ELEMENT] = _elements(secs[ELEMENT], code)
    if CODE in secs:
        count, cbody = _vec_header(secs[CODE])
        pos, new = 0, bytearray()
        for _ in range(count):
            size, pos = _u32(cbody, pos)
            end = pos + size
            fn = bytearray()
            n_locals, p = _u32(cbody, pos)
            for _ in range(n_locals):
                _, p = _u32(cbody, p)
                p += 1
            fn += cbody[pos:p]
            p = code.body(cbody, p, fn)
            if p != end:
                raise RewriteError("a function body's size does not match its code")
            new += _leb(len(fn)) + fn
            pos = end
        secs[CODE] = _leb(count) + bytes(new)

    out = bytearray(MAGIC)
    for sid in _ORDER:
        if sid in secs:
            out.append(sid)
            out += _leb(len(secs[sid])) + secs[sid]
    return Prepared(bytes(out), memory)


def _vec_header(payload: bytes | None) -> tuple[int, bytes]:
    if payload is None:
        return 0, b""
    n, pos = _u32(payload, 0)
    return n, payload[pos:]


def _elements(body_with_count: bytes, code: _Code) -> bytes:
    count, body = _vec_header(body_with_count)
    pos, new = 0, bytearray()
    for _ in range(count):
        flags, pos = _u32(body, pos)
        new += _leb(flags)
        if flags > 7:
            raise RewriteError(f"unsupported element segment kind {flags}")
        if flags & 2 and not flags & 1:  # explicit table index
            t, pos = _u32(body, pos)
            new += _leb(t)
        if not flags & 1:  # active: an offset expression
            pos = code.expr(body, pos, new, inject=False)
        if flags & 3:  # elemkind (0x00) or reftype, for every form but 0 and 4
            new.append(body[pos])
            pos += 1
        n, pos = _u32(body, pos)
        new += _leb(n)
        for _ in range(n):
            if flags & 4:  # expressions
                pos = code.expr(body, pos, new, inject=False)
            else:
                f, pos = _u32(body, pos)
                new += _leb(code.func(f))
    return _leb(count) + bytes(new)


__all__ = ["prepare", "Prepared", "RewriteError", "sections", "FUEL_CHECK_EVERY", "SIMD_FUEL", "MAX_TABLE_ELEMENTS",
           "RESERVED_MODULE", "REWRITE_VERSION"]
