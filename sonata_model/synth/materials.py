"""Surface materials of the synthetic world: diffuse reflectivity at 905 nm, its spread, and a finish.

Reflectivities are sensor-neutral (fraction of light sent back by a diffuse surface); a sensor's
`Response` turns them into the strength its driver reports. The values are set so that KITTI's HDL-64E
(`KITTI_REMISSION`) gives SemanticKITTI's per-class remission medians and the Velodyne calibrated
scale gives nuScenes' intensities (road ~10 of 255): see `benchmarks/realism.py`.
Finishes change how a surface returns light: glossy paint often gives no diffuse signal, glass
mostly lets the beam through, wet asphalt mirrors it away (and bounces some into multipath), and
retro-reflectors (sign faces, number plates) send it straight back.
"""

from __future__ import annotations

from .classes import BICYCLIST, BUILDING, CAR, FENCE, PERSON, POLE, SIGN, TERRAIN, TRUCK, TRUNK, VEGETATION

DIFFUSE, GLOSSY, GLASS, WET, RETRO = range(5)

# Probability that a return from a surface of each finish is lost (on top of the sensor's dropout).
FINISH_DROPOUT = {DIFFUSE: 0.0, GLOSSY: 0.05, GLASS: 0.6, WET: 0.35, RETRO: 0.0}
# Multipath is this many times likelier off each finish than off a diffuse surface.
FINISH_MULTIPATH = {DIFFUSE: 1.0, GLOSSY: 10.0, GLASS: 20.0, WET: 30.0, RETRO: 1.0}

# Reflectivity (mean, spread between instances, spread within an instance) and finish per class.
MATERIALS = {
    BUILDING: (0.20, 0.08, 0.05, DIFFUSE),
    FENCE: (0.22, 0.10, 0.06, DIFFUSE),
    VEGETATION: (0.30, 0.06, 0.14, DIFFUSE),
    TRUNK: (0.33, 0.06, 0.07, DIFFUSE),
    POLE: (0.12, 0.06, 0.05, DIFFUSE),
    SIGN: (0.25, 0.08, 0.04, RETRO),  # a retro-reflective face reads high; the back and edges diffuse
    CAR: (0.25, 0.20, 0.06, GLOSSY),
    TRUCK: (0.30, 0.15, 0.06, DIFFUSE),
    PERSON: (0.33, 0.10, 0.06, DIFFUSE),
    BICYCLIST: (0.33, 0.10, 0.06, DIFFUSE),
    TERRAIN: (0.40, 0.05, 0.10, DIFFUSE),
}
GLASS_REFLECTIVITY = 0.08  # what comes back from behind a car window
ROUGHNESS = {VEGETATION: 0.15, TERRAIN: 0.03}  # extra range noise (m) of rough / porous surfaces
