"""The synthetic world's classes (train id = position); `config/labels/synthetic.yaml` has their colours."""

CLASS_NAMES = (
    "road",
    "sidewalk",
    "terrain",
    "building",
    "fence",
    "vegetation",
    "trunk",
    "pole",
    "traffic-sign",
    "car",
    "truck",
    "person",
    "bicyclist",
)
(ROAD, SIDEWALK, TERRAIN, BUILDING, FENCE, VEGETATION, TRUNK, POLE, SIGN, CAR, TRUCK, PERSON, BICYCLIST) = range(
    len(CLASS_NAMES)
)
THINGS = (CAR, TRUCK, PERSON, BICYCLIST)  # classes with instance ids
