"""Compile a Triton kernel for sm_90 without a GPU (Triton's compiler, not its interpreter).

The interpreter accepts some code the compiler rejects, and says nothing of the order of
the emitted instructions; this helper gives both the cubin check and the PTX to read.
"""

from __future__ import annotations

import pytest


def compile_for_hopper(kernel, types: dict[str, str], constexprs: dict, num_warps: int = 4,
                       launch_pdl: bool = False):  # fmt: skip
    """triton.compile of `kernel` for sm_90: arguments not named in `types` are i32; those
    ending in _ptr and those starting with stride are multiples of 16, as launches with
    such tensors specialize them (the loads' vector width and pipelining depend on it).
    Skips the calling test where this Triton's ASTSource takes other arguments."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = dict.fromkeys(names, "i32") | types | dict.fromkeys(constexprs, "constexpr")
    constants = {(names.index(name),): value for name, value in constexprs.items()}
    aligned = [i for i, name in enumerate(names)
               if name.endswith("_ptr") or name.startswith("stride")]  # fmt: skip
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    try:
        source = ASTSource(kernel, signature, constants, attrs)
    except TypeError as error:  # another Triton version's ASTSource
        pytest.skip(f"ASTSource API: {error}")
    options = {"num_warps": num_warps} | ({"launch_pdl": True} if launch_pdl else {})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert "cubin" in compiled.asm
    return compiled
