"""Augmentations of self-distillation views (numpy, data-loader side), after the Sonata recipe.

Geometric: centre shift, random scale, rotation about z (and small tilts about x and y), flip, jitter
and elastic distortion; normals turn with the points. Appearance: colour jitter (brightness, contrast,
saturation, hue) with a chromatic translation, and for LiDAR a strength (intensity) jitter. Each
function takes the generator that makes it reproducible.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import uniform_filter


def centre_shift(coord: np.ndarray, with_z: bool = True) -> np.ndarray:
    """x, y to the bounding-box centre, z to the minimum (the reference's CenterShift; z kept without z)."""
    low, high = coord.min(axis=0), coord.max(axis=0)
    z = low[2] if with_z else 0.0
    return coord - np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, z], dtype=coord.dtype)


def normalise_to_unit_sphere(coord: np.ndarray) -> np.ndarray:
    """Centroid to the origin, largest radius to 1 (objects)."""
    centred = coord - coord.mean(axis=0)
    return centred / max(float(np.linalg.norm(centred, axis=1).max()), np.finfo(np.float64).tiny)


def rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def random_rigid(
    rng: np.random.Generator, z_p: float, tilt: float, tilt_p: float, flip_p: float, scale: tuple[float, float]
) -> np.ndarray:
    """3x3 linear map: rotate z U(-pi, pi) w.p. z_p, tilt about x and y U(-tilt, tilt) w.p. tilt_p each,
    mirror x and y w.p. flip_p each (as the reference, with p 0.5), scale U(scale) uniformly."""
    matrix = np.eye(3)
    if rng.random() < z_p:
        matrix = rotation(2, rng.uniform(-np.pi, np.pi)) @ matrix
    for axis in (0, 1):
        if rng.random() < tilt_p:
            matrix = rotation(axis, rng.uniform(-tilt, tilt)) @ matrix
    for axis in (0, 1):
        if rng.random() < flip_p:
            mirror = np.eye(3)
            mirror[axis, axis] = -1
            matrix = mirror @ matrix
    return matrix * rng.uniform(*scale)


def jitter(coord: np.ndarray, rng: np.random.Generator, sigma: float, clip: float) -> np.ndarray:
    return coord + np.clip(rng.normal(0, sigma, coord.shape), -clip, clip).astype(coord.dtype)


def elastic(coord: np.ndarray, rng: np.random.Generator, params: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Smooth random displacement fields: for each (granularity, magnitude) in metres, Gaussian noise on a
    grid of that spacing, box-blurred, interpolated at the points and scaled by the magnitude."""
    coord = coord.astype(np.float64)
    for granularity, magnitude in params:
        low = coord.min(axis=0)
        shape = (np.ceil((coord.max(axis=0) - low) / granularity).astype(int) + 3).tolist()
        noise = rng.standard_normal((*shape, 3))
        for _ in range(2):
            noise = uniform_filter(noise, size=(3, 3, 3, 1), mode="constant")
        axes = [low[d] - granularity + granularity * np.arange(shape[d]) for d in range(3)]
        interpolate = RegularGridInterpolator(axes, noise, bounds_error=False, fill_value=0.0)
        coord = coord + interpolate(coord) * magnitude
    return coord


def colour_jitter(
    color: np.ndarray,
    rng: np.random.Generator,
    p: float = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.02,
    translation_p: float = 0.95,
    translation_ratio: float = 0.05,
) -> np.ndarray:
    """float colours in 0-255 -> jittered float colours in 0-255 (one random draw for the whole cloud)."""
    color = color.astype(np.float64)
    if rng.random() < p:
        color = color * rng.uniform(1 - brightness, 1 + brightness)
        mean = color.mean()
        color = (color - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
        grey = color @ np.array([0.299, 0.587, 0.114])
        color = grey[:, None] + (color - grey[:, None]) * rng.uniform(1 - saturation, 1 + saturation)
        color = _hue_rotate(color, rng.uniform(-hue, hue) * 2 * np.pi)
    if rng.random() < translation_p:
        color = color + rng.uniform(-1, 1, 3) * 255 * 2 * translation_ratio
    return np.clip(color, 0, 255)


def _hue_rotate(color: np.ndarray, angle: float) -> np.ndarray:
    """Rotate the chroma plane in YIQ space by `angle` (a hue shift without HSV round trips)."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = np.cos(angle), np.sin(angle)
    turn = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return color @ (np.linalg.inv(to_yiq) @ turn @ to_yiq).T


def strength_jitter(
    strength: np.ndarray,
    rng: np.random.Generator,
    p: float = 0.8,
    scale: float = 0.2,
    shift: float = 0.05,
    noise: float = 0.02,
) -> np.ndarray:
    """LiDAR intensity analogue of colour jitter: gain, offset and per-point noise, kept in [0, 1]."""
    strength = strength.astype(np.float64)
    if rng.random() < p:
        strength = strength * rng.uniform(1 - scale, 1 + scale) + rng.uniform(-shift, shift)
        strength = strength + rng.normal(0, noise, strength.shape)
    return np.clip(strength, 0, 1)
