"""A thin binding over libnftables (`libnftables.so.1`), with the `nft` binary as fallback.

The context opens its netlink socket when created, so create one inside the namespace to read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
from dataclasses import dataclass

# libnftables output flags (nftables/libnftables.h)
OUTPUT_HANDLE = 1 << 3
OUTPUT_JSON = 1 << 4
OUTPUT_STATELESS = 1 << 2
OUTPUT_NUMERIC_PROTO = 1 << 7


class NftError(Exception):
    """nft could not run a command; the message is nft's own first error line."""


@dataclass(frozen=True, slots=True)
class NftResult:
    rc: int
    output: str
    error: str


class Nft:
    """Runs nft commands in the calling thread's namespace, through the library when present."""

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            lib = None
        if lib is not None:
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            self._lib = lib
        elif shutil.which("nft") is None:
            raise NftError("nftables is not installed: neither libnftables.so.1 nor `nft` found")

    @property
    def via(self) -> str:
        return "libnftables" if self._lib is not None else "nft binary"

    def run(self, command: str, flags: int = 0) -> NftResult:
        if self._lib is not None:
            return self._run_lib(command, flags)
        return self._run_binary(command, flags)

    def _run_lib(self, command: str, flags: int) -> NftResult:
        lib = self._lib
        assert lib is not None
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("libnftables: cannot create a context")
        try:
            lib.nft_ctx_output_set_flags(ctx, flags)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = lib.nft_run_cmd_from_buffer(ctx, command.encode())
            out = lib.nft_ctx_get_output_buffer(ctx) or b""
            err = lib.nft_ctx_get_error_buffer(ctx) or b""
            return NftResult(rc, out.decode(errors="replace"), err.decode(errors="replace"))
        finally:
            lib.nft_ctx_free(ctx)

    def _run_binary(self, command: str, flags: int) -> NftResult:
        argv = ["nft"]
        if flags & OUTPUT_JSON:
            argv.append("-j")
        if flags & OUTPUT_HANDLE:
            argv.append("-a")
        if flags & OUTPUT_STATELESS:
            argv.append("-s")
        argv += ["-f", "-"]
        proc = subprocess.run(argv, input=command, capture_output=True, text=True, check=False)
        return NftResult(proc.returncode, proc.stdout, proc.stderr)

    def check(self, command: str, flags: int = 0) -> str:
        res = self.run(command, flags)
        if res.rc != 0:
            first = next((ln for ln in res.error.splitlines() if ln.strip()), "unknown error")
            raise NftError(f"nft {command!r} failed: {first}")
        return res.output


class NftSession:
    """One libnftables context kept open: its netlink socket lives as long as the session, so a
    table created with `flags owner` through it is removed by the kernel when the session is
    closed or the process dies (however it dies). Create it on the thread that is inside the
    target namespace: the socket belongs to the namespace it was opened in."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise NftError("this needs libnftables.so.1 (Debian: apt install libnftables1)") \
                from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._ctx: int | None = lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("libnftables: cannot create a context")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)

    def run(self, command: str) -> None:
        if self._ctx is None:
            raise NftError("the nft session is closed")
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, command.encode())
        if rc != 0:
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            first = next((ln for ln in err.splitlines() if ln.strip()), "unknown error")
            raise NftError(f"nft: {first}")

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> NftSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
