"""The base layer: argument errors, profiles, device/seeding/thread policy, the plotting
style and file helpers. It imports no other layer of gnelib."""

__version__ = "0.2.0"
