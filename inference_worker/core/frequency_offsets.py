"""Receivers that hear one signal at slightly different frequencies: pure numpy and scipy.

Each pair is correlated coherently over windows of ``T`` seconds, and a receiver whose signal
arrives ``Δf`` off another's keeps ``|sinc(Δf T)|`` of their correlation: at 0.25 s, 64 % at
2 Hz and nothing at 4 Hz, where that receiver seems to hear nothing in common with the others.
A KiwiSDR whose GPS solution lapsed drifts in frequency as in time (0.1 ppm is 1 Hz at
10 MHz), and skywave paths add Doppler shifts of their own. Two readings, each where the other
is blind: :func:`frequency_offsets` searches each receiver's offset against another's within
:data:`MAX_OFFSET_HZ`, coarsely (bins of about 4 Hz, cheap enough to run on every set), and
:func:`receiver_drifts` reads the offsets below 2 Hz finely from how each pair's correlation
turns from one window to the next (0.25 s apart: it cannot tell 1 Hz from 5). Where either
finds one, the windows are correlated again with each receiver turned back by its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft

MAX_OFFSET_HZ = 10.0
"""The largest offset searched (1 ppm at 10 MHz)."""
COARSE_HZ = 1.0
"""Offsets the search finds from this on are turned back before the fine reading (which reads
an offset of 4 Hz as none)."""
DRIFT_HZ = 0.3
"""Receivers whose windows turn against the others' faster than this (Hz) are turned back: at
that offset 0.25 s windows keep 99 % of their correlation."""
FINE_HZ = 0.05
"""Where the search turned receivers back, what is left of their offsets is turned back too
from this on (the search finds them to a few tenths of a hertz)."""
SEARCH_WINDOWS = 2
"""Windows, spread over the common span, whose correlation power the search adds up."""
STANDS_OUT = 10.0
"""A receiver's offset is taken only where the correlation power at it is this many times the
median over the offsets searched; otherwise it hears nothing in common with the reference."""


def drift_hz(values: np.ndarray, spacing_s: float) -> np.ndarray:
    """Each pair's frequency offset (Hz), from ``values`` ``(pairs, windows)``: the complex
    correlation at its peak in consecutive windows ``spacing_s`` apart. Their phase turns by
    ``2π Δf spacing_s`` from one to the next (the pulse-pair estimate, weighted by the peaks'
    strength); an offset beyond ``±1 / (2 spacing_s)`` reads as a smaller one."""
    turn = np.sum(values[:, 1:] * np.conj(values[:, :-1]), axis=1)
    return np.angle(turn) / (2.0 * np.pi * spacing_s)


def receiver_drifts(
    values: np.ndarray, design: np.ndarray, heard: np.ndarray, spacing_s: float
) -> np.ndarray:
    """Each receiver's frequency offset (Hz, relative: they sum to zero over the receivers
    heard), fitted by least squares to the drifts (:func:`drift_hz`) of the pairs ``heard``;
    ``design``: the pairs' design (``pairs × receivers``, as
    :func:`~inference_worker.core.time_differences.pair_design`: a pair's drift is its first
    receiver's offset less its second's). 0 where none is heard."""
    rows = np.flatnonzero(heard)
    if not len(rows):
        return np.zeros(design.shape[1])
    drifts = drift_hz(values[rows], spacing_s)
    return np.linalg.lstsq(design[rows], drifts, rcond=None)[0]


def frequency_offsets(
    windows: Sequence[Sequence[np.ndarray]],
    margin: int,
    limits: np.ndarray,
    rate_hz: float,
) -> np.ndarray:
    """Each receiver's frequency offset (Hz) from a reference receiver's signal.

    ``windows``: for a few windows, every receiver's stretch (the window and ``margin`` samples
    either side, as :func:`~inference_worker.core.correlation_peaks.peak_delays` takes them);
    ``limits``: ``(receivers, receivers)``, the most lag (samples) searched between two. For each
    receiver the window is turned by every offset within :data:`MAX_OFFSET_HZ` (whole bins of
    the correlation's transform, about 4 Hz at 0.25 s) and correlated with the reference's
    stretch; the correlation's peak power, added up over the windows, peaks at the receiver's
    offset, refined by a parabola (to a few tenths of a hertz). The reference is the first
    receiver against which another stands out (:data:`STANDS_OUT`); it and any receiver that
    does not stand out get 0.
    """
    receivers, length = len(windows[0]), len(windows[0][0])
    n = scipy.fft.next_fast_len(length)
    bin_hz = rate_hz / n
    reach = int(np.ceil(MAX_OFFSET_HZ / bin_hz)) + 1
    shifts = np.arange(-reach, reach + 1)
    lags = np.abs(np.fft.fftfreq(n, d=1.0 / n))
    transforms = []
    for stretches in windows:
        whole = np.asarray(stretches)
        middles = np.zeros((receivers, n), dtype=complex)
        middles[:, margin : length - margin] = whole[:, margin : length - margin]
        transforms.append((scipy.fft.fft(middles), np.conj(scipy.fft.fft(whole, n))))
    for reference in range(receivers):
        offsets, found = np.zeros(receivers), False
        for k in range(receivers):
            if k == reference:
                continue
            allowed = lags <= limits[k, reference]
            power = np.zeros(len(shifts))
            for spectra, others in transforms:
                # Rolling a spectrum by s bins turns the window by s bins' frequency.
                turned = np.stack([np.roll(spectra[k], int(s)) for s in shifts])
                correlation = scipy.fft.ifft(turned * others[reference], axis=1)[:, allowed]
                power += np.max(np.abs(correlation) ** 2, axis=1)
            best = int(np.argmax(power))
            if power[best] < STANDS_OUT * float(np.median(power)) or best in (0, len(power) - 1):
                continue
            left, centre, right = np.sqrt(power[best - 1 : best + 2])
            bend = left - 2.0 * centre + right
            fraction = 0.5 * (left - right) / bend if bend != 0 else 0.0
            offsets[k], found = -(shifts[best] + fraction) * bin_hz, True
        if found:
            return offsets
    return np.zeros(receivers)
