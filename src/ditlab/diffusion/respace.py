"""Timestep respacing: which of a trained chain's T steps a shorter sampling chain keeps.

The string forms and the index arithmetic follow the official ADM/DiT ``space_timesteps`` exactly, so that
"250" keeps the same 250 steps (and hence gives the same samples) as the official code.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["space_timesteps"]

_FORMAT_HELP = (
    'use "N" (N evenly spread steps), "ddimN" (N steps at an integer stride), "n1,n2,..." '
    "(n_i steps spread over the i-th equal section), or an iterable of step indices"
)


def _section_steps(start: int, size: int, count: int) -> list[int]:
    # The stride is accumulated by repeated float addition, not computed as k·stride: at rounding ties the two
    # differ (e.g. T=1000 with 21 steps), and the official indices are the accumulated ones.
    stride = (size - 1) / (count - 1) if count > 1 else 1.0
    position, steps = 0.0, []
    for _ in range(count):
        steps.append(start + round(position))
        position += stride
    return steps


def space_timesteps(num_timesteps: int, section_counts: str | int | Iterable[int]) -> list[int]:
    """Sorted indices (into 0..num_timesteps-1) of the steps kept by a respacing spec.

    ``"250"`` → 250 steps spread over the whole chain (0 and T-1 included); ``"ddim50"`` → exactly 50 steps at
    an integer stride starting at 0; ``"25,25,50"`` → the chain is cut into 3 near-equal sections holding 25,
    25 and 50 steps. An int N means ``"N"``; ``""`` means every step. An iterable of ints is taken as the
    indices.
    """
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if isinstance(section_counts, bool):
        raise TypeError(f"invalid respacing {section_counts!r}; {_FORMAT_HELP}")
    if isinstance(section_counts, int):
        section_counts = str(section_counts)
    if not isinstance(section_counts, str):
        steps = sorted({int(s) for s in section_counts})
        if not steps or steps[0] < 0 or steps[-1] >= num_timesteps:
            raise ValueError(f"respacing indices must be a non-empty subset of 0..{num_timesteps - 1}")
        return steps

    spec = section_counts.strip()
    if spec == "":
        return list(range(num_timesteps))
    if spec.startswith("ddim"):
        try:
            desired = int(spec[len("ddim") :])
        except ValueError:
            raise ValueError(f"invalid respacing {spec!r}; {_FORMAT_HELP}") from None
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(
            f"respacing {spec!r}: {num_timesteps} steps cannot be cut into exactly {desired} steps at an "
            f'integer stride; pick another count or use "{desired}" (non-integer stride)'
        )
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(f"invalid respacing {spec!r}; {_FORMAT_HELP}") from None
    if any(c < 1 for c in counts):
        raise ValueError(f"respacing {spec!r}: every section needs at least 1 step")
    if len(counts) > num_timesteps:
        raise ValueError(f"respacing {spec!r}: {len(counts)} sections do not fit in {num_timesteps} steps")

    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"respacing {spec!r}: section {i} spans {size} of the {num_timesteps} steps and cannot hold "
                f"{count} steps; use at most {size} there"
            )
        kept += _section_steps(start, size, count)
        start += size
    return sorted(set(kept))
