"""Angular-spectrum free-space propagation of a probe (unitary operator).

``propagate(P, z)`` multiplies the spectrum of ``P`` (numpy.fft sign
convention) by ``exp(2j*pi*z*sqrt(1/lambda^2 - fx^2 - fy^2))`` with evanescent
components removed; its adjoint is ``propagate(., -z)`` on the propagating band.
The probe is centred in its frame (DC of the spectrum handled by fftshift-free
frequency grids, so centring is preserved).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .backend import array_module_of


def angular_spectrum_kernel(
    xp: ModuleType,
    shape: tuple[int, int],
    pixel_m: tuple[float, float],
    wavelength_m: float,
    distance_m: float,
    dtype: str = "complex64",
) -> Any:
    """Transfer function of free space for ``distance_m`` on an fft2 frequency grid."""
    fy = xp.fft.fftfreq(shape[0], d=pixel_m[0])[:, None]
    fx = xp.fft.fftfreq(shape[1], d=pixel_m[1])[None, :]
    kz2 = 1.0 / wavelength_m**2 - fx**2 - fy**2
    propagating = kz2 > 0
    # Subtract the on-axis phase 2*pi*z/lambda: a constant that only changes the global phase.
    phase = 2 * xp.pi * distance_m * (xp.sqrt(xp.where(propagating, kz2, 0.0)) - 1.0 / wavelength_m)
    return (xp.exp(1j * phase) * propagating).astype(dtype)


def propagate(
    probe: Any, distance_m: float, pixel_m: tuple[float, float], wavelength_m: float
) -> Any:
    """Propagate a (..., rows, cols) complex field by ``distance_m`` (angular spectrum)."""
    xp = array_module_of(probe)
    if distance_m == 0:
        return probe.copy()
    kernel = angular_spectrum_kernel(
        xp, probe.shape[-2:], pixel_m, wavelength_m, distance_m, str(probe.dtype)
    )
    return xp.fft.ifft2(xp.fft.fft2(probe) * kernel).astype(probe.dtype)
