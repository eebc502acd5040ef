"""The ML_grad operators on whole frame stacks, written once for NumPy and CuPy.

``ArrayOperators`` composes the small forward/adjoint pairs of
:mod:`.patches` and :mod:`.shift` with the Poisson terms of :mod:`.poisson`.
It is the reference ("twin") for the fused CUDA kernels of
:mod:`.cuda_operators`, which compute the same functions in fewer passes.

Stacks are (n, M, N), frame-major, DC at the corner. The geometry - integer
window corners and bilinear probe weights of every active frame - is set once
per iteration with :meth:`set_geometry`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from . import patches, poisson, shift


class ArrayOperators:
    """Generic array-module implementation (the reference for the fused kernels)."""

    def __init__(
        self, xp: ModuleType, frame_shape: tuple[int, int], real_dtype: str, interpolation: str
    ) -> None:
        self.xp = xp
        self.frame_shape = frame_shape
        self.real_dtype = real_dtype
        self.interpolation = interpolation
        self.weights: Any = None
        self.object_shape: tuple[int, int] = (0, 0)
        self._indices: Any = None

    def set_geometry(
        self, corners: np.ndarray, fractions: np.ndarray, object_shape: tuple[int, int]
    ) -> None:
        """Window corners (n, 2) int and fractional probe offsets (n, 2) of active frames."""
        xp = self.xp
        self.object_shape = object_shape
        self.weights = shift.interpolation_weights(
            xp.asarray(fractions, dtype=self.real_dtype), self.interpolation
        )
        self._indices = patches.window_flat_indices(
            xp.asarray(corners, dtype=np.int64), self.frame_shape, object_shape[1]
        )

    def exit_waves(self, probe: Any, obj: Any, start: int = 0) -> Any:
        """``P_j O_j`` for frames ``start:``."""
        return shift.shifted_probes(
            probe, self.weights[start:], self.interpolation
        ) * patches.extract(obj, self._indices[start:])

    def nll_and_gradient(self, farfield: Any, counts: Any) -> tuple[float, Any]:
        """Poisson NLL and dL/da* of the stored far fields."""
        return (
            poisson.negative_log_likelihood(farfield, counts),
            poisson.farfield_gradient(farfield, counts),
        )

    def object_gradient(
        self, chi: Any, probe: Any, obj: Any, probe_terms: bool
    ) -> tuple[Any, Any, Any, Any]:
        """Object gradient and illumination; with ``probe_terms`` also
        ``conj(O_j) chi_j`` and ``|O_j|^2`` stacks (else None). May overwrite ``chi``."""
        probes = shift.shifted_probes(probe, self.weights, self.interpolation)
        grad = patches.scatter_add(self.xp.conj(probes) * chi, self._indices, self.object_shape)
        illumination = patches.scatter_add(
            (probes.real**2 + probes.imag**2).astype(self.real_dtype),
            self._indices,
            self.object_shape,
        )
        if not probe_terms:
            return grad, illumination, None, None
        views = patches.extract(obj, self._indices)
        view_power = (views.real**2 + views.imag**2).astype(self.real_dtype)
        return grad, illumination, self.xp.conj(views) * chi, view_power

    def direction_terms(
        self, probe: Any, dprobe: Any | None, obj: Any, dobj: Any
    ) -> tuple[Any, Any | None]:
        """Exit-wave change along (dO, dP): linear ``P dO + dP O`` and quadratic ``dP dO``."""
        probes = shift.shifted_probes(probe, self.weights, self.interpolation)
        dviews = patches.extract(dobj, self._indices)
        linear = probes * dviews
        if dprobe is None:
            return linear, None
        dprobes = shift.shifted_probes(dprobe, self.weights, self.interpolation)
        linear += dprobes * patches.extract(obj, self._indices)
        return linear, dprobes * dviews

    def line_search_terms(
        self, farfield: Any, linear: Any, quadratic: Any | None, counts: Any, tau: float
    ) -> tuple[float, float]:
        """``L'(tau), L''(tau)`` along ``a + t b + t^2 c``."""
        return poisson.line_search_terms(farfield, linear, quadratic, counts, tau)

    def probe_adjoint(self, stack: Any) -> Any:
        """Adjoint of the per-frame probe shifts: sum_j shift_j^T(stack_j), (M, N)."""
        return shift.shifted_probes_adjoint(stack, self.weights, self.interpolation)

    def advance(self, farfield: Any, linear: Any, quadratic: Any | None, tau: float) -> None:
        """``a += tau b + tau^2 c`` in place."""
        farfield += tau * linear
        if quadratic is not None:
            farfield += (tau * tau) * quadratic
