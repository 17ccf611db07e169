"""Stand-in for `timm` in the reference benchmark's environment: only `timm.layers.DropPath`.

timm itself imports torchvision, which does not work here; the reference needs nothing else from it.
"""
