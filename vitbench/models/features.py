"""timm's ``forward_intermediates`` conventions, framework-neutral (the torch and Keras families share them)."""
from __future__ import annotations


def feature_take_indices(num: int, indices: int | list[int] | tuple[int, ...] | None = None) -> tuple[list[int], int]:
    """timm's rule for ``forward_intermediates(indices=...)``: None -> all, an int n -> the last n, a sequence ->
    those (negative from the end). Returns the absolute indices and the largest one."""
    if indices is None:
        indices = num
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f"forward_intermediates: last-n {indices} is out of range (1 to {num})")
        take = list(range(num - indices, num))
    else:
        take = [num + i if i < 0 else i for i in indices]
        bad = [i for i in take if not 0 <= i < num]
        if bad:
            raise ValueError(f"forward_intermediates: index {bad[0]} is out of range (0 to {num - 1})")
    return take, max(take)


def check_output_fmt(output_fmt: str, allowed: tuple[str, ...]) -> None:
    if output_fmt not in allowed:
        raise ValueError(f"forward_intermediates: output_fmt must be one of {', '.join(allowed)}, not {output_fmt!r}")
